"""Leases: one authority per group at a time, through Redis, with a fencing epoch that only grows.

A worker that would act for group G runs :data:`ACQUIRE`: if nobody holds ``{prefix}:lease:G``,
it takes the next epoch (``INCR {prefix}:epoch:G``, but above the epoch the database holds) and
sets the lease to ``worker|epoch`` for ``ttl`` seconds, in one script, which Redis runs atomically. While it acts it renews the lease;
:data:`RENEW` and :data:`RELEASE` touch it only while it is still its own.

The epoch is what makes the lease safe: the new authority raises ``groups.epoch`` in PostgreSQL
to it before loading the group (never lowering it), and every write of the group checks, in its
own transaction, that the epoch it was computed under is still the group's (see
``server.storage.batch``). An authority that lost its lease — paused past the ttl, cut off from
Redis — can therefore neither store nor, since frames go out only after the commit, send or
acknowledge anything afterwards.

Locally a lease is trusted until ``ttl - margin`` seconds after the moment its acquisition or
last renewal was sent (the monotonic clock): Redis counts its ttl from a later moment, so the
worker stops acting before anybody else may start.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

ACQUIRE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local epoch = redis.call('INCR', KEYS[2])
if epoch <= tonumber(ARGV[3]) then
  epoch = tonumber(ARGV[3]) + 1
  redis.call('SET', KEYS[2], epoch)
end
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. epoch, 'PX', ARGV[2])
return epoch
"""
RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(slots=True)
class Lease:
    """A group's lease held by this worker."""

    group_id: int
    epoch: int
    #: the lease's value in Redis: ``worker|epoch``
    value: str
    #: until when (monotonic seconds) this worker may act on it
    valid_until: float


@dataclass(frozen=True, slots=True)
class Owner:
    """Who holds a group's lease, read from Redis."""

    worker: str
    epoch: int


class Leases:
    """The leases of one worker (``worker``) in one cluster (``prefix``), on a Redis client."""

    def __init__(
        self,
        client: Any,
        worker: str,
        *,
        prefix: str = "synclab",
        ttl: float = 3.0,
        margin: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < margin < ttl:
            raise ValueError(f"expected 0 < margin < ttl, got margin {margin} and ttl {ttl}")
        self.worker = worker
        self.prefix = prefix
        self.ttl = ttl
        self.margin = margin
        self._client = client
        self._clock = clock
        self._acquire = client.register_script(ACQUIRE)
        self._renew = client.register_script(RENEW)
        self._release = client.register_script(RELEASE)

    def key(self, group_id: int) -> str:
        return f"{self.prefix}:lease:{group_id}"

    def _epoch_key(self, group_id: int) -> str:
        return f"{self.prefix}:epoch:{group_id}"

    async def acquire(self, group_id: int, floor: int = 0) -> Lease | None:
        """The group's lease with a new epoch above ``floor``, or ``None`` when somebody holds it.

        ``floor`` is the epoch the database holds for the group: a Redis that lost its keys (a
        restart without persistence) would count epochs from 1 again, below the ones already
        used, and the database would refuse them all.
        """
        sent = self._clock()
        epoch = int(await self._acquire(
            keys=[self.key(group_id), self._epoch_key(group_id)], args=[self.worker, round(self.ttl * 1000), floor]
        ))
        if epoch == 0:
            return None
        return Lease(group_id, epoch, f"{self.worker}|{epoch}", sent + self.ttl - self.margin)

    async def renew(self, leases: Iterable[Lease]) -> list[Lease]:
        """Renew these leases in one round trip; returns the ones that are no longer ours."""
        held = list(leases)
        if not held:
            return []
        sent = self._clock()
        ttl_ms = round(self.ttl * 1000)
        async with self._client.pipeline(transaction=False) as pipe:
            for lease in held:
                await self._renew(keys=[self.key(lease.group_id)], args=[lease.value, ttl_ms], client=pipe)
            answers = await pipe.execute()
        lost = []
        for lease, answer in zip(held, answers, strict=True):
            if int(answer) == 1:
                lease.valid_until = sent + self.ttl - self.margin
            else:
                lost.append(lease)
        return lost

    async def release(self, lease: Lease) -> bool:
        """Give the lease up at once (if it is still ours), so another worker may take the group."""
        lease.valid_until = 0.0
        return int(await self._release(keys=[self.key(lease.group_id)], args=[lease.value])) == 1

    def valid(self, lease: Lease) -> bool:
        """Whether this worker may still act on ``lease`` (by its own clock)."""
        return self._clock() < lease.valid_until

    async def owners(self, group_ids: list[int]) -> dict[int, Owner | None]:
        """Who holds each group's lease now (one round trip)."""
        if not group_ids:
            return {}
        values = await self._client.mget([self.key(g) for g in group_ids])
        return {g: _owner(v) for g, v in zip(group_ids, values, strict=True)}


def _owner(value: Any) -> Owner | None:
    if value is None:
        return None
    text = value.decode() if isinstance(value, bytes) else str(value)
    worker, _, epoch = text.rpartition("|")
    return Owner(worker, int(epoch))
