"""Tasks stopped at a shutdown end even when a cancel is swallowed (server/tasks.py).

A cluster's worker was seen, in full test runs, not to end after SIGTERM: its log (the shutdown's
own account past 10 s, server/runtime.py) showed the node's close awaiting its heartbeat loop,
cancelled once and still sleeping between beats. The cancel had come inside redis-py's pipeline
``execute``, which let it go; the loop beat on, and the close awaited it for ever.
"""

from __future__ import annotations

import asyncio
import logging
import random

import pytest
import redis.asyncio as aioredis

from server.tasks import ended
from tests.server.harness import timeout


async def _swallowing_once(began: asyncio.Event) -> None:
    """A loop whose first cancel is lost, as one inside such a library call is."""
    began.set()
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        asyncio.current_task().uncancel()  # type: ignore[union-attr]
    await asyncio.sleep(3600)  # goes on, as the heartbeat loop did, until cancelled again


async def test_a_task_that_swallows_a_cancel_is_cancelled_again_until_it_ends() -> None:
    began = asyncio.Event()
    task = asyncio.create_task(_swallowing_once(began))
    await began.wait()
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=0.3)
    assert not done, "the loop went on after its cancel was swallowed"
    assert await asyncio.wait_for(ended([task]), timeout(5)) is True
    assert task.cancelled()


async def test_a_task_that_never_ends_is_left_behind_named_in_the_log(caplog: pytest.LogCaptureFixture) -> None:
    stubborn = True

    async def swallowing() -> None:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if not stubborn:
                    raise
                asyncio.current_task().uncancel()  # type: ignore[union-attr]

    task = asyncio.create_task(swallowing(), name="stubborn")
    await asyncio.sleep(0)
    assert await ended([task, None], rounds=3, wait=0.05) is False
    assert "the task stubborn did not end after 3 cancels; left behind" in caplog.text
    assert not task.done()
    stubborn = False
    assert await ended([task]) is True and task.cancelled()


async def _beating(client: aioredis.Redis, prefix: str) -> None:
    """The cluster's heartbeat loop's shape: a pipeline, then a sleep."""
    while True:
        try:
            async with client.pipeline(transaction=False) as pipe:
                pipe.set(f"{prefix}:beat", "1", px=2000)
                pipe.sadd(f"{prefix}:workers", "w")
                await pipe.execute()
        except (aioredis.RedisError, OSError):
            pass
        await asyncio.sleep(0.2)


async def test_heartbeat_loops_cancelled_at_any_moment_all_end(
    redis_url: str, redis_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """200 loops on this machine's Redis, each cancelled within 3 ms of its start (most inside a
    pipeline's execute): every one ends. Cancelled once and awaited, as the node's close did,
    about one in thirty went on beating (redis-py 8.2), and the await never returned."""
    caplog.set_level(logging.ERROR)
    client = aioredis.Redis.from_url(redis_url)
    random.seed(21)
    try:
        for _ in range(200):
            task = asyncio.create_task(_beating(client, redis_prefix))
            await asyncio.sleep(random.random() * 0.003)
            assert await asyncio.wait_for(ended([task]), timeout(10)), caplog.text
            assert task.done()
    finally:
        await client.aclose()
