"""A worker's drain (SIGTERM) leaves the cluster for good, even when a loop swallowed its cancel
(server/tasks.py says how redis-py lets one go): no heartbeat of it is heard after it left.

On this machine's Redis, under a prefix of the test's own; the node is not started (no database,
no hub's listener), its heartbeat loop run as :meth:`server.cluster.node.Node.start` runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import SimpleNamespace

import redis.asyncio as aioredis

from server.cluster.node import Node
from server.settings import Settings
from tests.server.harness import timeout

#: the heartbeat's TTL (SYNCLAB_HEARTBEAT_SECONDS): a beat every 0.1 s
BEAT = 0.5


async def test_a_heartbeat_that_swallowed_the_drain_s_cancel_beats_no_more_once_the_worker_left(
    redis_url: str, redis_prefix: str,
) -> None:
    """The heartbeat's Redis call swallows the drain's cancel, once (as redis-py's pipeline lets
    about one in thirty go): its loop went on, and beat again after the drain had taken the
    worker's key out of Redis, so the cluster heard of a worker that had left (for the key's
    TTL, and in the set of workers until a sweep). The drain now ends its loops before it
    leaves."""
    settings = Settings.from_env({
        "DATABASE_URL": "postgresql://127.0.0.1/x", "REDIS_URL": redis_url,
        "SYNCLAB_CLUSTER": redis_prefix, "SYNCLAB_HEARTBEAT_SECONDS": str(BEAT),
    })
    node = Node(settings, None, worker="w")  # type: ignore[arg-type]  # the heartbeat reads no database
    writer = SimpleNamespace(batches=0, writes=0, committed=0)
    node.router = SimpleNamespace(writer=writer, connections={})  # type: ignore[assignment]
    beating = node._heartbeat
    inside = asyncio.Event()
    swallowed: list[bool] = []

    async def heartbeat_that_swallows_a_cancel_once() -> None:
        await beating()
        if swallowed:
            return
        inside.set()
        try:
            await asyncio.sleep(timeout(10))
        except asyncio.CancelledError:
            swallowed.append(True)  # gone on from, as redis-py's pipeline sometimes does

    node._heartbeat = heartbeat_that_swallows_a_cancel_once  # type: ignore[method-assign]
    look = aioredis.Redis.from_url(redis_url)
    key, workers = f"{redis_prefix}:worker:w", f"{redis_prefix}:workers"
    loop_task = asyncio.create_task(node._heartbeat_loop())
    node._tasks = [loop_task]
    try:
        async with asyncio.timeout(timeout(10)):
            await inside.wait()
        assert await look.exists(key) and await look.sismember(workers, "w")
        async with asyncio.timeout(timeout(10)):
            await node.drain()
        assert swallowed == [True], "the drain's cancel was to come inside the heartbeat's call"
        await asyncio.sleep(6 * node.beat_times.every)  # beats enough for a loop that went on
        assert not await look.exists(key), "a heartbeat was stored after the worker had left the cluster"
        assert not await look.sismember(workers, "w")
        assert loop_task.done()
    finally:
        loop_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop_task
        with contextlib.suppress(Exception):
            await node.hub.client.aclose()
        await look.aclose()
