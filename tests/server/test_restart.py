"""Kill -9 the server mid-period and start it again on the same database (a real process)."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select
from websockets.asyncio.client import connect

from server.frames import WS_MAX_SIZE
from server.storage import connections, experiments, list_ticks, make_engine, to_epoch
from tests.server.harness import Client, timeout
from tests.server.test_cli import free_port, started, wait_until_healthy

TOKEN = "restart-token"
#: ticks at 4, 8, 12, 16 and 20 s: the server is killed before the second and must answer again
#: before the last (at 10 s long, a loaded machine's restart could take past the end)
LENGTH, N = 20.0, 5
#: seconds from the period's start to its second tick, the one missed while the server is down
SECOND_TICK = 2 * LENGTH / N


async def participant(base: str, code: str) -> Client:
    ws = await connect(
        f"{base.replace('http', 'ws')}/ws/p/{code}", max_size=WS_MAX_SIZE, max_queue=None, open_timeout=timeout(5)
    )
    return Client(ws)


async def until(client: Client, channel: str, value: Any = None, wait: float = 15.0) -> dict[str, Any]:
    async with asyncio.timeout(timeout(wait)):
        while True:
            frame = await client.expect(channel, wait)
            if value is None or frame["payload"] == value:
                return frame


async def test_a_killed_server_resumes_its_periods_on_restart(tmp_path: Path, database_url: str) -> None:
    """SIGKILL after the first tick, down over the second: on restart every acked decision is stored,
    the missed tick is applied at once and recorded late at its own schedule, the later ticks and
    the end come at their original times, a reconnect gets the right hello, and the scores add up."""
    env = {"DATABASE_URL": database_url, "SYNCLAB_ADMIN_TOKEN": TOKEN}
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    acked: dict[str, tuple[int, float]] = {}

    http = httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=timeout(5))
    (tmp_path / "again").mkdir()
    cue = tmp_path / "again" / "cue"
    # the restart's process, started now and cued once the first is down: its imports, most of a
    # start on a loaded machine, would otherwise make it answer after the period's end
    with started(tmp_path / "again", "serve", "--port", str(port), cue=cue, **env) as again:
        with started(tmp_path, "serve", "--port", str(port), **env) as first:
            wait_until_healthy(base, server=first)
            created = await http.post(
                "/api/experiments",
                json={"game": "bimatrix", "participants": 2, "group_size": 2, "period_length": LENGTH,
                      "num_subperiods": N},
            )
            assert created.status_code == 201, created.text
            exp = created.json()
            codes = [p["code"] for p in exp["participants"]]
            row, col = [await participant(base, c) for c in codes]
            start = await until(row, "state", "period_start")
            t0 = start["ts"] / 1000
            for i, value in enumerate((0.1, 0.9, 1.0)):
                await row.send("decisions", value, f"r{i}")
                acked[f"r{i}"] = ((await until(row, "ack"))["payload"]["seq"], value)
            first_tick = await until(row, "subperiod")
            assert first_tick["payload"]["index"] == 0
            await col.send("decisions", 0.0, "c0")
            acked["c0"] = ((await until(col, "ack"))["payload"]["seq"], 0.0)
            first.process.send_signal(signal.SIGKILL)
            first.process.wait(timeout(5))
            assert time.time() < t0 + SECOND_TICK, "the test machine is too slow to kill before the second tick"

        killed_at = time.time()
        # the second tick passes while the server is down
        await asyncio.sleep(max(0.0, t0 + SECOND_TICK + 0.3 - time.time()))
        cue.touch()
        wait_until_healthy(base, server=again)
        ready_at = time.time()
        # the killed run stored no close: its connections are closed at the start, code 1006,
        # and nobody shows as connected until they come back
        left = await _connections(database_url, exp["code"])
        assert len(left) == 2 and all(code == 1006 and closed >= killed_at for closed, code in left), left
        progress = (await http.get(f"/api/experiments/{exp['code']}/participants")).json()
        assert [p["connected"] for p in progress["results"]] == [False, False], progress
        row, col = [await participant(base, c) for c in codes]
        hello = (await until(row, "hello"))["payload"]
        assert hello["phase"] == "running"
        assert hello["period"]["started_at"] == start["ts"]
        assert hello["period"]["ends_at"] == start["ts"] + int(LENGTH * 1000)
        assert hello["period"]["subperiod"] >= 2  # the missed tick was applied before anyone came back
        assert (await until(row, "group_decisions"))["payload"] == {codes[0]: 1.0, codes[1]: 0.0}
        # a retry of a decision acknowledged before the crash is stored once
        await row.send("decisions", 0.1, "r0")
        assert (await until(row, "ack"))["payload"] == {"id": "r0", "seq": acked["r0"][0]}
        end = await until(row, "state", "period_end", wait=LENGTH + 5)
        assert abs(end["ts"] - (start["ts"] + LENGTH * 1000)) <= 100

        events = []
        page = 1
        while True:
            body = (
                await http.get(f"/api/experiments/{exp['code']}/events", params={"page": page, "page_size": 1000})
            ).json()
            events += body["results"]
            if body["next"] is None:
                break
            page += 1
        by_seq = {e["seq"]: e for e in events}
        for seq, value in acked.values():
            assert by_seq[seq]["channel"] == "decisions" and by_seq[seq]["value"] == value
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
        assert [e["payload"]["index"] for e in row.frames if e["channel"] == "subperiod"][-1] == N - 1

        engine = make_engine(database_url)
        try:
            ticks = list_ticks(engine, hello["group"])
        finally:
            engine.dispose()
        assert [(t["kind"], t["index"]) for t in ticks] == [("subperiod", k) for k in range(N)] + [("period_end", 0)]
        for t, k in zip(ticks, [*range(1, N + 1), N], strict=True):
            assert abs(t["scheduled_at"] - (t0 + LENGTH * k / N)) <= 0.002
        assert not ticks[0]["late"]
        assert ticks[1]["late"] and ticks[1]["actual_at"] - ticks[1]["scheduled_at"] >= 0.3
        # the ticks due once the restarted server answers come at their times: on a loaded machine
        # its start may take past the third tick (12 s), which is then late too; the end never is
        on_time = [t for t in ticks[2:] if t["scheduled_at"] > ready_at + 0.2]
        assert len(on_time) >= 2, f"the restart took {ready_at - killed_at:.1f} s: nothing left to check"
        for t in on_time:
            assert not t["late"], t

        results = (await http.get(f"/api/experiments/{exp['code']}/results")).json()["results"]
        sessions = (await http.get(f"/api/experiments/{exp['code']}/sessions")).json()["results"]
        assert len(results) == 2 * N
        for s in sessions:
            mine = [r["score"] for r in results if r["participant"] == s["participant"]]
            assert s["finished_at"] and abs(s["final_score"] - sum(mine)) < 1e-9
        status = (await http.get(f"/api/experiments/{exp['code']}")).json()
        assert status["status"] == "done"
        for client in (row, col):
            await client.close()
    await http.aclose()
    assert len(acked) == 4


async def _connections(database_url: str, experiment_code: str) -> list[tuple[float, int | None]]:
    """Each stored connection of the experiment: its close (epoch seconds, or 0.0 while open) and code."""
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            found = conn.execute(
                select(connections.c.disconnected_at, connections.c.close_code)
                .join(experiments, experiments.c.id == connections.c.experiment_id)
                .where(experiments.c.code == experiment_code)
            ).all()
    finally:
        engine.dispose()
    return [(to_epoch(closed) or 0.0, code) for closed, code in found]

