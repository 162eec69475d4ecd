"""Group leases on the machine's Redis: one holder at a time, epochs that only grow."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from server.cluster import Leases


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    made = aioredis.from_url(redis_url)
    yield made
    await made.aclose()


async def test_one_worker_holds_a_group_and_the_next_holder_gets_a_higher_epoch(
    client: aioredis.Redis, redis_prefix: str
) -> None:
    """The first acquire wins with epoch 1; another worker gets nothing while it is held and sees
    who holds it; after the release the other worker takes it with epoch 2."""
    a = Leases(client, "host:1:a", prefix=redis_prefix)
    b = Leases(client, "host:2:b", prefix=redis_prefix)
    first = await a.acquire(7)
    assert first is not None and first.epoch == 1 and a.valid(first)
    assert await b.acquire(7) is None
    owners = await b.owners([7, 8])
    assert owners[7] is not None and (owners[7].worker, owners[7].epoch) == ("host:1:a", 1)
    assert owners[8] is None
    assert await b.release(first) is True  # the lease's own value releases it, whoever asks
    second = await b.acquire(7)
    assert second is not None and second.epoch == 2
    assert await a.release(first) is False  # no longer the holder's: left alone
    assert (await a.owners([7]))[7] is not None


async def test_a_lease_not_renewed_lapses_and_its_old_holder_learns_it_lost_it(
    client: aioredis.Redis, redis_prefix: str
) -> None:
    """With a 1 s ttl: renewed, it lasts; not renewed, another worker takes the group with a
    higher epoch, and the old holder's renewal says it is lost and its local validity is over.
    (Renewed every 0.3 s: a stall of this process under 0.7 s, which a busy CI machine can make,
    does not let it lapse; at a 0.3 s ttl renewed every 0.15 s, one of 0.15 s would have.)"""
    a = Leases(client, "a", prefix=redis_prefix, ttl=1.0, margin=0.2)
    b = Leases(client, "b", prefix=redis_prefix, ttl=1.0, margin=0.2)
    lease = await a.acquire(1)
    assert lease is not None
    for _ in range(3):
        await asyncio.sleep(0.3)
        assert await a.renew([lease]) == []
    assert await b.acquire(1) is None
    await asyncio.sleep(1.2)
    assert not a.valid(lease)
    taken = await b.acquire(1)
    assert taken is not None and taken.epoch > lease.epoch
    assert await a.renew([lease]) == [lease]


def test_a_margin_as_long_as_the_lease_is_refused() -> None:
    """The local validity must end before Redis's expiry: margin < ttl."""
    with pytest.raises(ValueError, match="margin"):
        Leases(object(), "a", ttl=1.0, margin=1.0)


async def test_an_epoch_stays_above_the_databases_after_redis_lost_its_keys(
    client: aioredis.Redis, redis_prefix: str
) -> None:
    """A Redis restarted without its data counts epochs from 1 again: the floor (the database's
    epoch) keeps a new lease's epoch above every epoch used before, and later ones above it."""
    a = Leases(client, "a", prefix=redis_prefix)
    first = await a.acquire(9)
    assert first is not None and first.epoch == 1
    await a.release(first)
    await client.delete(f"{redis_prefix}:epoch:9")  # what a restart without persistence does
    again = await a.acquire(9, floor=5)
    assert again is not None and again.epoch == 6
    await a.release(again)
    later = await a.acquire(9, floor=5)
    assert later is not None and later.epoch == 7
