"""A game that fails at the group's worker, asked from another: answered and logged as in one process."""

from __future__ import annotations

import asyncio
from typing import Any

from websockets.asyncio.client import connect

from tests.cluster.harness import Cluster
from tests.cluster.test_cluster import create, owner_of, until
from tests.server.harness import Client, timeout, until_state

GAME = "tests.cluster.games:FailsOnSeven"


async def answer(client: Client, frame_id: str) -> dict[str, Any]:
    """The ``ack`` or ``error`` that answers the frame ``frame_id``."""
    while True:
        frame = await client.next()
        if frame["channel"] in ("ack", "error") and frame["payload"].get("id") == frame_id:
            return frame


async def test_a_game_failing_at_the_groups_worker_is_answered_and_logged_there_as_in_one_process(
    pair: Cluster,
) -> None:
    """b on the worker that does not serve the group (a joined first, on w1). b's frame that the game fails on gets
    ``game_error`` with one process's message, and the experimenter's pause asked of b's worker,
    which the game fails on, answers 500 naming the group and is stored as a ``game_fault`` event
    once; each failure is logged once, with its traceback, where the game ran, as one process logs it. b got ``internal``, the group's
    worker logged "cluster: a request failed" for both, and b's worker logged the pause's failure
    again with a traceback of its own."""
    cluster = pair  # (its workers import the game: tests/cluster/harness.py's ROOT)
    exp = await create(cluster, "w1", game=GAME, participants=2, group_size=2, period_length=60)
    codes = [p["code"] for p in exp["participants"]]
    a = Client(await connect(f"{cluster.workers['w1'].ws}/ws/p/{codes[0]}", open_timeout=timeout(5)))
    group = (await a.expect("hello"))["payload"]["group"]
    serves = owner_of(cluster, group)  # (w1 unless it was busy: w2, which a's frames reach as b's do)
    other = "w2" if serves == "w1" else "w1"
    b = Client(await connect(f"{cluster.workers[other].ws}/ws/p/{codes[1]}", open_timeout=timeout(5)))
    try:
        await until_state(b, "period_start")
        await b.send("decisions", 7, "b-7")
        refused = await answer(b, "b-7")
        assert refused["payload"] == {"code": "game_error", "message": "the game failed on this frame: RuntimeError",
                                      "id": "b-7"}, refused
        await b.send("decisions", 3, "b-3")
        assert (await answer(b, "b-3"))["channel"] == "ack"
        async with cluster.http(other) as http:
            paused = await http.post(f"/api/experiments/{exp['code']}/pause", params={"group": group})
        assert paused.status_code == 500, paused.text  # the game failed on it: left as it was, as in one process
        assert paused.json()["groups"] == [] and paused.json()["failed"] == [group], paused.text
        assert owner_of(cluster, group) == serves
        # the failure is stored once, by the group's worker, as one process stores it
        async with cluster.http(other) as http:
            for _ in range(int(timeout(5) / 0.05)):
                recorded = (await http.get(f"/api/experiments/{exp['code']}/events",
                                           params={"channel": "game_fault"})).json()["results"]
                if recorded:
                    break
                await asyncio.sleep(0.05)
        assert [(e["group"], e["value"]["during"], e["value"]["error"]) for e in recorded] == [
            (group, "pause", "ZeroDivisionError")], recorded
    finally:
        for client in (a, b):
            await client.close()
    frame_line = f"group {group}: the game {GAME} failed on a frame of {codes[1]}"
    pause_line = (f"group {group}: the game FailsOnSeven ({GAME}) failed in the experimenter's pause: "
                  "ZeroDivisionError: three on purpose; the group is left as it was")
    await until(lambda: pause_line in cluster.logs(serves), 5, "the pause's failure logged where the game ran")
    there, here = (cluster.log_text(name) for name in (serves, other))
    assert there.count(frame_line) == 1 and there.count("RuntimeError: seven on purpose") == 1, there
    assert there.count(pause_line) == 1 and there.count("ZeroDivisionError: three on purpose") == 2, there  # (its traceback)
    assert "a request failed" not in there + here, there + here
    assert "the game" not in here, here
    # b's 3 would fail the period's end 60 s on, on the shared workers, in another test's part of
    # their logs: ended now, without the game (logged with no traceback)
    async with cluster.http(other) as http:
        ended = await http.post(f"/api/experiments/{exp['code']}/end")
    assert ended.status_code == 200, ended.text
    await until(lambda: "the period is ended without it" in cluster.logs(serves), 5, "the end without the game logged")
    cluster.tracebacks[serves] = 2  # the fixture checks: these two, and none elsewhere
