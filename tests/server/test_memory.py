"""Memory that stays flat: finished groups leave the server's maps and come back from the database.

A real server (short ``group_grace``), real WebSocket clients, short periods: after the
experiments are over and their members gone, the router holds none of their groups, views,
connections or lobby timers and the hub none of their topics; a participant who connects again
gets the group's final state, a monitor opened later shows it, and a member who reconnects in
the middle of a period finds the same live group.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import AsyncIterator
from typing import Any

import pytest

from server.hub.memory import MemoryHub
from server.routing import LiveGroups
from tests.server.harness import Harness, running_server, timeout, until_state
from tests.server.test_blocks import decide
from tests.server.test_monitor import monitor

GRACE = 0.2


@pytest.fixture
async def server(sqlite_url: str) -> AsyncIterator[Harness]:
    async with running_server(sqlite_url, group_grace=GRACE) as harness:
        yield harness


def held(groups: LiveGroups) -> dict[str, Any]:
    """What the router (and its hub and lobbies) hold, by map."""
    hub = groups.hub
    assert isinstance(hub, MemoryHub)
    return {
        "groups": sorted(groups.groups),
        "views": sorted(groups.views),
        "connections": sorted(groups.connections),
        "lobby timers": sorted(groups.lobbies._timers),
        "moves": sorted(groups._moves),
        "quiet": sorted(groups._quiet) + sorted(groups._quiet_views),
        "topics": sorted(t for t in hub._topics if not t.startswith(("monitor", "presence"))),
    }


EMPTY = {"groups": [], "views": [], "connections": [], "lobby timers": [], "moves": [], "quiet": [], "topics": []}


async def until_empty(groups: LiveGroups, wait: float = 5.0) -> None:
    for _ in range(int(timeout(wait) / 0.05)):
        if held(groups) == EMPTY:
            return
        await asyncio.sleep(0.05)
    assert held(groups) == EMPTY


async def play(server: Harness, blocks: int = 1) -> tuple[dict[str, Any], dict[str, Any]]:
    """One experiment of two played to its end (each decides once a block); returns it and its last hello."""
    exp = await server.create(participants=2, group_size=2, blocks=blocks, period_length=0.4, block_pause=0.05)
    row, col = [await server.connect(p["code"]) for p in exp["participants"]]
    hello: dict[str, Any] = {}
    for block in range(blocks):
        for client in (row, col):
            hello = (await client.expect("hello"))["payload"]
            assert hello["block"] == block
        await until_state(row, "period_start")
        await decide(row, 0.25, f"r{block}")
        await decide(col, 0.75, f"c{block}")
        await until_state(row, "period_end")
        await until_state(col, "period_end")
    for client in (row, col):
        await client.close()
    return exp, hello


async def test_finished_experiments_leave_every_map(server: Harness) -> None:
    groups = server.runtime.groups
    played = await asyncio.gather(*(play(server, blocks=2) for _ in range(3)))
    assert len({h["group"] for _, h in played}) == 3
    await until_empty(groups)
    assert held(groups) == EMPTY


async def test_a_participant_back_after_the_end_gets_the_final_state(server: Harness) -> None:
    groups = server.runtime.groups
    exp, last = await play(server)
    await until_empty(groups)

    again = await server.connect(exp["participants"][0]["code"])
    hello = (await again.expect("hello"))["payload"]
    assert hello["group"] == last["group"] and hello["phase"] == "ended"
    assert hello["group_decisions"] == {p: v for p, v in zip(hello["members"], (0.25, 0.75), strict=True)}
    assert hello["period"]["ended_at"] is not None
    assert (await again.expect("state"))["payload"] == "period_end"
    assert last["group"] in groups.groups  # loaded again while somebody is connected to it
    await asyncio.sleep(GRACE * 3)
    assert last["group"] in groups.groups and groups.views[last["group"]].current

    await again.close()
    await until_empty(groups)
    stored = await server.events(exp["code"])
    assert [e["value"] for e in stored if e["channel"] == "state"].count("period_end") == 1


async def test_a_monitor_opened_later_shows_the_finished_experiment(server: Harness) -> None:
    groups = server.runtime.groups
    exp, last = await play(server)
    await until_empty(groups)
    mon = await monitor(server, exp["code"])
    snapshot = (await mon.expect("snapshot"))["payload"]
    (group,) = snapshot["groups"]
    assert group["id"] == last["group"] and group["phase"] == "ended"
    assert sorted(group["decisions"].values()) == [0.25, 0.75]
    assert not any(p["connected"] for p in snapshot["participants"])
    assert held(groups)["groups"] == []  # a monitor needs no live group


async def test_a_reconnect_in_the_middle_of_a_period_finds_the_same_group(server: Harness) -> None:
    groups = server.runtime.groups
    exp = await server.create(participants=2, group_size=2, period_length=30)
    codes = [p["code"] for p in exp["participants"]]
    row, col = [await server.connect(code) for code in codes]
    group_id = (await row.expect("hello"))["payload"]["group"]
    await col.expect("hello")
    await until_state(row, "period_start")
    await decide(row, 0.5, "r0")
    live = groups.groups[group_id]
    await col.close()
    await asyncio.sleep(GRACE * 4)  # several sweeps while a member is away
    assert groups.groups[group_id] is live
    back = await server.connect(codes[1])
    hello = (await back.expect("hello"))["payload"]
    assert hello["phase"] == "running" and hello["group_decisions"][hello["members"][0]] == 0.5
    assert groups.groups[group_id] is live
    await decide(back, 0.9, "c0")
    await decide(row, 0.1, "r1")
    assert groups.groups[group_id] is live


async def test_a_finished_group_leaves_memory_by_reference_counting_alone(server: Harness) -> None:
    """No reference cycle keeps a finished group: the cycle collector runs seldom on a busy server
    (its young generation is large, see ``server.cli``), and cyclic garbage waiting for it had
    the RSS of a soak grow by about 2 MB per 1,000 groups."""
    groups = server.runtime.groups
    # long enough for both decisions on a loaded machine (0.6 s was not, once, in CI: the period
    # had ended before the first decision came); the test waits for the end either way
    exp = await server.create(participants=2, group_size=2, period_length=2.5)
    row, col = [await server.connect(p["code"]) for p in exp["participants"]]
    group_id = (await row.expect("hello"))["payload"]["group"]
    await col.expect("hello")
    await until_state(row, "period_start")
    live = groups.groups[group_id]
    parts = {"group": live, "stand-ins": live.standins, "game": live.core, "view": groups.views[group_id]}
    refs = {name: weakref.ref(obj) for name, obj in parts.items()}
    del live, parts
    gc.collect()
    gc.disable()
    try:
        await decide(row, 0.25, "r0")
        await decide(col, 0.75, "c0")
        await until_state(row, "period_end")
        await until_state(col, "period_end")
        await row.close()
        await col.close()
        await until_empty(groups)
        await asyncio.sleep(0.05)  # the last callbacks of the sweep
        alive = {name: ref() for name, ref in refs.items() if ref() is not None}
        held_by = {name: sorted({type(r).__name__ for r in gc.get_referrers(obj)}) for name, obj in alive.items()}
        assert held_by == {}
    finally:
        gc.enable()
