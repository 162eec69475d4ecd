"""Memory that stays flat in a cluster: two workers (in this process, on PostgreSQL and Redis) drop
a finished group's authority, its views on both workers and the owner each remembered; a
participant who comes back later gets the final state from whichever worker takes it again."""

from __future__ import annotations

import asyncio
import contextlib

from server.routing import LiveGroups
from tests.server.harness import Harness, running_server, timeout, until_state
from tests.server.test_blocks import decide

GRACE = 0.2


def holds(groups: LiveGroups, group_id: int) -> list[str]:
    node = groups.node
    assert node is not None
    where = {"groups": groups.groups, "views": groups.views, "held": node.held, "owners": node._owners}
    return [name for name, found in where.items() if group_id in found]


async def until_gone(workers: list[Harness], group_id: int, wait: float = 10.0) -> None:
    for _ in range(int(timeout(wait) / 0.05)):
        if not any(holds(w.runtime.groups, group_id) for w in workers):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"group {group_id} is still held: {[holds(w.runtime.groups, group_id) for w in workers]}")


async def test_a_finished_group_leaves_both_workers_and_comes_back(
    postgres_url: str, redis_url: str, redis_prefix: str
) -> None:
    settings = {"redis_url": redis_url, "cluster_name": redis_prefix, "lease_seconds": 1.0, "group_grace": GRACE}
    async with contextlib.AsyncExitStack() as stack:
        a = await stack.enter_async_context(running_server(postgres_url, **settings))
        b = await stack.enter_async_context(running_server(postgres_url, **settings))
        exp = await a.create(participants=2, group_size=2, period_length=0.5)
        row = await a.connect(exp["participants"][0]["code"])
        group_id = (await row.expect("hello"))["payload"]["group"]
        col = await b.connect(exp["participants"][1]["code"])
        await col.expect("hello")
        await until_state(row, "period_start")
        await decide(row, 0.25, "r0")
        await decide(col, 0.75, "c0")
        await until_state(row, "period_end")
        await until_state(col, "period_end")
        assert holds(a.runtime.groups, group_id) and holds(b.runtime.groups, group_id)
        await row.close()
        await col.close()
        await until_gone([a, b], group_id)

        again = await b.connect(exp["participants"][0]["code"])
        hello = (await again.expect("hello"))["payload"]
        assert hello["group"] == group_id and hello["phase"] == "ended"
        assert sorted(hello["group_decisions"].values()) == [0.25, 0.75]
        await again.close()
        await until_gone([a, b], group_id)
