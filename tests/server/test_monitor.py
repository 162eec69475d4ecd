"""The monitor socket: a snapshot, then every stored event and connection change, batched."""

from __future__ import annotations

import asyncio
import gc
from types import SimpleNamespace
from typing import Any, cast

import httpx
import orjson
import pytest
from starlette.websockets import WebSocket
from websockets.exceptions import ConnectionClosed

from server.hub import MemoryHub
from server.meter import Meter
from server.monitor import Monitor
from tests.server.harness import TOKEN, Client, Harness, timeout, until_state
from tests.server.test_blocks import decide


async def monitor(server: Harness, code: str, token: str = TOKEN) -> Client:
    return await server.monitor(code, token)


def payloads(mon: Client, channel: str) -> list[Any]:
    """Every payload the monitor got on ``channel`` so far; ``events`` flattened to rows."""
    found = [f["payload"] for f in mon.frames if f["channel"] == channel]
    if channel == "events":
        assert all(found), "an events frame is never empty"
        return [row for batch in found for row in batch]
    return found


async def until(mon: Client, channel: str, done: Any, wait: float = 5.0) -> list[Any]:
    """Read frames until ``done(payloads(mon, channel))`` holds; returns those payloads."""
    async with asyncio.timeout(timeout(wait)):
        while not done(payloads(mon, channel)):
            await mon.next(wait)
    return payloads(mon, channel)


def rows_until(mon: Client, done: Any, wait: float = 5.0) -> Any:
    return until(mon, "events", done, wait)


async def running_pair(server: Harness) -> tuple[str, Client, Client]:
    """A pair's experiment (30 s) with both members connected and its period started: its code, row, col."""
    exp = await server.create(participants=2, group_size=2, period_length=30)
    row, col = [await server.connect(p["code"]) for p in exp["participants"]]
    await until_state(row, "period_start")
    return exp["code"], row, col


async def closed_with(client: Client) -> tuple[int, str]:
    """The close code and reason the server ended ``client`` with (before any frame)."""
    with pytest.raises(ConnectionClosed) as closed:
        await client.next()
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code, closed.value.rcvd.reason


async def test_a_wrong_missing_or_misplaced_token_is_refused_with_its_close_code(
    server: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wrong token in the first frame: 4403; a first frame that is not ``auth``: 4401; no frame in
    time: 4401; a token in the URL (as the contract's older clients send it) is still taken."""
    exp = await server.create()
    for token in ("wrong", TOKEN + "x"):
        code, reason = await closed_with(await monitor(server, exp["code"], token))
        assert code == 4403 and "not known" in reason, (code, reason)
    mon = await server.connect(exp["code"], f"/ws/monitor/{exp['code']}")
    await mon.send("ping", {"timestamp": 1})
    code, reason = await closed_with(mon)
    assert code == 4401 and '"auth"' in reason, reason
    mon = await server.connect(exp["code"], f"/ws/monitor/{exp['code']}")
    await mon.send("auth", {"token": ""})
    assert (await closed_with(mon))[0] == 4401
    monkeypatch.setattr("server.monitor.AUTH_SECONDS", 0.2)
    mon = await server.connect(exp["code"], f"/ws/monitor/{exp['code']}")
    code, reason = await closed_with(mon)
    assert code == 4401 and "within 0.2 s" in reason, reason
    # the contract's older clients put it in the URL: still taken (the log masks it), never sent so by the page
    mon = await server.connect(exp["code"], f"/ws/monitor/{exp['code']}?token={TOKEN}")
    assert (await mon.next())["channel"] == "snapshot"
    mon = await server.connect(exp["code"], f"/ws/monitor/{exp['code']}?token=wrong")
    assert (await closed_with(mon))[0] == 4403


async def test_an_unknown_experiment_is_closed_with_4404(server: Harness) -> None:
    mon = await monitor(server, "nope")
    with pytest.raises(ConnectionClosed) as closed:
        await mon.next()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4404


async def test_the_monitor_sees_the_snapshot_then_connections_and_events_live(any_server: Harness) -> None:
    server = any_server
    exp = await server.create(participants=2, group_size=2, period_length=30)
    code = exp["code"]
    mon = await monitor(server, code)
    snap = (await mon.expect("snapshot"))["payload"]
    assert snap["experiment"]["code"] == code and snap["experiment"]["participants"] == exp["participants"]
    assert snap["last_seq"] == 0 and isinstance(snap["server_time"], int)
    assert [g["phase"] for g in snap["groups"]] == ["waiting"]
    group = snap["groups"][0]
    assert sorted(group["members"]) == sorted(p["code"] for p in exp["participants"])
    assert group["period_length"] == 30 and group["block"] == 0
    assert [p["connected"] for p in snap["participants"]] == [False, False]
    assert snap["blocks"][0]["status"] == "pending"

    row, col = [await server.connect(p["code"]) for p in exp["participants"]]
    await until_state(row, "period_start")
    seen = await until(mon, "connection", lambda c: len(c) >= 2)
    assert {s["participant"] for s in seen} == set(group["members"]) and all(s["connected"] for s in seen)
    assert all(s["group"] == group["id"] and isinstance(s["at"], int) for s in seen)

    rows = await rows_until(mon, lambda rs: any(r["value"] == "period_start" for r in rs))
    assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1))
    seq = await decide(col, 0.25, "d1")
    mine = await rows_until(mon, lambda rs: any(r["seq"] == seq for r in rs))
    assert [r["seq"] for r in mine] == list(range(1, len(mine) + 1))
    decision = next(r for r in mine if r["seq"] == seq)
    assert decision["channel"] == "decisions" and decision["value"] == 0.25
    assert decision["participant"] == col_code(exp, group, row) and decision["group"] == group["id"]
    assert decision["latency"] >= 0 and isinstance(decision["ts"], int)
    # what the monitor saw is what is stored
    stored = {e["seq"]: e for e in await server.events(code)}
    for r in mine:
        assert stored[r["seq"]]["channel"] == r["channel"] and stored[r["seq"]]["value"] == r["value"]

    # stats come every second: the first may predate the events (a frame sent as the monitor
    # connected); a later one counts them
    stats = (await until(mon, "stats", lambda s: bool(s) and s[-1]["events"] >= len(rows)))[-1]
    assert stats["status"] in ("running", "pending")
    assert set(stats["latency_ms"]) == {"last", "p50", "max"}

    await server.http.post(f"/api/experiments/{code}/pause")
    paused = await rows_until(mon, lambda rs: any(r["channel"] == "period" for r in rs))
    control = next(r for r in paused if r["channel"] == "control")
    assert control["value"] == {"action": "pause", "scope": "experiment", "by": "SYNCLAB_ADMIN_TOKEN"}

    await col.close()
    gone = (await until(mon, "connection", lambda c: len(c) >= 3))[-1]
    assert gone["participant"] == decision["participant"] and gone["connected"] is False

    # a monitor that opens now sees the pause, with when it began
    late = await monitor(server, code)
    again = (await late.expect("snapshot"))["payload"]
    pause_ts = next(r["ts"] for r in paused if r["channel"] == "period")
    assert again["groups"][0]["phase"] == "paused" and again["groups"][0]["paused_by"] == "experimenter"
    assert abs(again["groups"][0]["paused_at"] - pause_ts) <= 1
    assert again["experiment"]["participants"] == exp["participants"]  # http links, not ws


def col_code(exp: dict[str, Any], group: dict[str, Any], row: Client) -> str:
    """The member who is not the first one to have connected (the test's ``col`` client)."""
    first = row.frames[0]["payload"]["participant"]
    return str(next(c for c in group["members"] if c != first))


async def test_the_address_the_server_listens_on_leads_to_the_monitor(server: Harness) -> None:
    """``http://127.0.0.1:8000``, which the README says the server serves on, opened as it is: a
    303 to the monitor's page, with its headers (it was a plain 404 "Not Found")."""
    async with httpx.AsyncClient(base_url=server.base, timeout=timeout(10)) as anonymous:
        answer = await anonymous.get("/")
        assert answer.status_code == 303 and answer.headers["location"] == "/monitor", answer.text
        assert answer.headers["x-frame-options"] == "DENY"
        page = await anonymous.get("/", follow_redirects=True)
        assert page.status_code == 200 and "synclab monitor" in page.text


async def test_a_late_monitor_gets_the_state_in_its_snapshot_and_no_event_twice(server: Harness) -> None:
    code, row, col = await running_pair(server)
    await decide(row, 1, "a")
    mon = await monitor(server, code)
    snap = (await mon.expect("snapshot"))["payload"]
    me = row.frames[0]["payload"]["participant"]
    assert snap["groups"][0]["phase"] == "running" and snap["groups"][0]["decisions"][me] == 1
    assert snap["groups"][0]["started_at"] and snap["groups"][0]["ends_at"]
    assert all(p["connected"] and p["connected_since"] for p in snap["participants"])
    assert snap["last_seq"] == (await server.events(code))[-1]["seq"]
    last = await decide(col, 0, "b")
    rows = await rows_until(mon, lambda rs: any(r["seq"] == last for r in rs))
    assert rows[0]["seq"] == snap["last_seq"] + 1
    assert [r["seq"] for r in rows] == list(range(snap["last_seq"] + 1, snap["last_seq"] + 1 + len(rows)))


async def test_a_burst_of_decisions_reaches_the_monitor_in_few_batches(server: Harness) -> None:
    """200 decisions over two sockets arrive in order and gap-free, many to an ``events`` frame."""
    code, row, col = await running_pair(server)
    mon = await monitor(server, code)
    snap = (await mon.expect("snapshot"))["payload"]
    for i in range(100):
        await row.send("decisions", (i % 10) / 10)
        await col.send("decisions", (i % 7) / 7)
    rows = await rows_until(mon, lambda rs: sum(r["channel"] == "decisions" for r in rs) >= 200, wait=10)
    frames = len([f for f in mon.frames if f["channel"] == "events"])
    assert [r["seq"] for r in rows] == list(range(snap["last_seq"] + 1, snap["last_seq"] + 1 + len(rows)))
    assert frames < len(rows) / 5, (frames, len(rows))


def test_an_experiments_monitors_share_one_meter_that_reads_each_write_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hub hands each monitor the same frame: the rows are parsed once, not once per monitor,
    and a monitor that opens later counts from then."""
    parsed: list[str] = []

    def loads(data: str) -> Any:
        parsed.append(data)
        return orjson.loads(data)

    monkeypatch.setattr("server.meter.orjson", SimpleNamespace(loads=loads))
    hub, clock = MemoryHub(), [100.0]
    meter = Meter(lambda: clock[0])
    first, second, third = (Monitor(cast(WebSocket, None), meter) for _ in range(3))
    for mon in (first, second):
        hub.subscribe("monitor:1", mon)

    def write(seqs: range, latency: float) -> str:
        data = orjson.dumps([{"seq": s, "latency": latency, "value": {"latency": 999}} for s in seqs]).decode()
        hub.publish("monitor:1", data)
        return data

    one = write(range(1, 4), 2.5)
    late = Monitor(cast(WebSocket, None), meter)
    hub.subscribe("monitor:1", late)
    two = write(range(4, 6), 1.0)
    assert parsed == [one, two]  # two writes, three monitors: each write read once
    assert first.rows == second.rows == [one, two] and late.rows == [two] and third.rows == []
    seen = meter.summary(since=first.counted)
    assert seen["events"] == 5 and seen["events_per_second"] == 5.0
    assert seen["latency_ms"] == {"last": 1.0, "p50": 2.5, "max": 2.5}
    assert meter.summary(since=late.counted)["events"] == 2
    # the same text in another frame is another write: a write's frame is one object, whatever its text
    hub.publish("monitor:1", orjson.dumps(orjson.loads(two)).decode())
    assert meter.events == 7 and len(parsed) == 3


async def test_two_monitors_count_what_each_was_sent_and_their_meter_goes_with_them(server: Harness) -> None:
    code, row, col = await running_pair(server)
    early = await monitor(server, code)
    await early.expect("snapshot")
    first = await decide(row, 1, "a")
    await rows_until(early, lambda rs: any(r["seq"] == first for r in rs))
    late = await monitor(server, code)
    await late.expect("snapshot")
    assert len(server.runtime.meters) == 1  # one meter for the experiment's two monitors
    last = await decide(col, 0, "b")
    for mon in (early, late):
        await rows_until(mon, lambda rs: any(r["seq"] == last for r in rs))
    counts = {}
    for name, mon in (("early", early), ("late", late)):
        sent = len(payloads(mon, "events"))
        stats = await until(mon, "stats", lambda s, sent=sent: bool(s) and s[-1]["events"] >= sent)
        counts[name] = stats[-1]["events"]
        assert counts[name] == sent, (name, counts[name], sent)
    assert counts["early"] > counts["late"] > 0
    await early.close()
    await late.close()
    async with asyncio.timeout(timeout(5)):
        while len(server.runtime.meters):
            await asyncio.sleep(0.02)
            gc.collect()


async def test_a_result_event_reaches_the_monitor_naming_its_recipient_as_the_event_log_does(
    server: Harness,
) -> None:
    """The monitor's live rows of ``result`` events name the participant whose result it is in
    ``recipient``, as ``GET …/events`` does, and no ``participant`` (the server sent them); every
    live row equals the stored one but its time."""
    exp = await server.create(participants=2, group_size=2, period_length=0.8, num_subperiods=2)
    code = exp["code"]
    mon = await monitor(server, code)
    await mon.expect("snapshot")
    row, _ = [await server.connect(p["code"]) for p in exp["participants"]]
    await until_state(row, "period_start")
    await until_state(row, "period_end")
    live = await rows_until(mon, lambda rs: sum(r["channel"] == "result" for r in rs) == 4)
    stored = {e["seq"]: e for e in await server.events(code)}
    results = [r for r in live if r["channel"] == "result"]
    assert {r["participant"] for r in results} == {None}  # the server's (CONTRACT §2)
    assert {r["recipient"] for r in results} == {p["code"] for p in exp["participants"]}
    for r in live:
        kept = stored[r["seq"]]
        assert (r["participant"], r["recipient"], r["channel"], r["value"], r["group"], r["bot"]) == (
            kept["participant"], kept["recipient"], kept["channel"], kept["value"], kept["group"], kept["bot"]
        ), r
