"""This worker among the others: its heartbeat, the workers heard from, what a gone worker left.

Every worker writes a heartbeat every :attr:`BeatTimes.every` seconds (``GET /api/server`` lists
them: :meth:`Heartbeats.workers`); one not heard from for :attr:`BeatTimes.ttl` seconds
(``SYNCLAB_HEARTBEAT_SECONDS``, 5) is gone.
Each worker closes the connections that a worker gone for :attr:`BeatTimes.gone_after` seconds
left open (:meth:`Heartbeats._sweep`), has its own sockets reconnect when another closed their
connections while it was unheard of (:meth:`Heartbeats._reconnect_swept`), and on PostgreSQL ends
the database sessions of writers stopped inside a batch (:meth:`Heartbeats._end_stalled`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from redis.exceptions import RedisError

from ..exceptions import WS_1012_SERVICE_RESTART
from ..hub.redis import RedisHub
from ..storage import (
    Database,
    close_connections_of,
    closed_among,
    end_stalled_writers,
    workers_with_open_connections,
)
from .leases import Lease
from .load import LagMeter
from .requests import dumps

if TYPE_CHECKING:
    from ..routing import LiveGroups

log = logging.getLogger("synclab.cluster")
#: the default of ``SYNCLAB_HEARTBEAT_SECONDS``: seconds a worker not heard from is gone after
HEARTBEAT_TTL = 5.0


@dataclass(frozen=True)
class BeatTimes:
    """The heartbeat's times, each in proportion to its TTL (``SYNCLAB_HEARTBEAT_SECONDS``): at
    the default 5 s, a beat every second, a sweep every 2 s (±50 %), gone after 5 s more."""

    #: seconds a heartbeat lasts in Redis: a worker not heard from for as long is gone
    ttl: float = HEARTBEAT_TTL

    @property
    def every(self) -> float:
        """Seconds between two heartbeats: five to a TTL, so a beat or two lost is no death."""
        return self.ttl / 5

    @property
    def sweep_every(self) -> float:
        """Seconds between two looks for connections that a gone worker left open (:meth:`Heartbeats._sweep`)."""
        return self.ttl * 2 / 5

    @property
    def gone_after(self) -> float:
        """Seconds a worker holding open connections must stay unheard of (its heartbeat expired)
        before they are closed: a blip of Redis is not a death."""
        return self.ttl

    @property
    def recheck_for(self) -> float:
        """Seconds after a heartbeat gap during which this worker looks, at each heartbeat, for its
        sockets whose connections another worker closed meanwhile (a sweep that began before the
        gap ended may close them a moment after the first look)."""
        return 3 * self.sweep_every


class Heartbeats:
    """This worker's heartbeat and its sweeps (a part of :class:`server.cluster.node.Node`)."""

    # what it reads and sets of the node's state (see server.cluster.node.Node.__init__)
    worker: str
    started: float
    database: Database
    hub: RedisHub
    router: LiveGroups | None
    held: dict[int, Lease]
    meter: LagMeter
    beat_times: BeatTimes
    _absent: dict[str | None, float]
    _recheck_until: float
    _rechecking: asyncio.Task[None] | None

    if TYPE_CHECKING:  # (server.cluster.node.Node)
        @property
        def busy(self) -> bool: ...

        def _key(self, name: str) -> str: ...

        async def _every(
            self, period: float, look: Callable[[], Awaitable[None]], what: str, *, redis: bool = True
        ) -> None: ...

    async def _heartbeat_loop(self) -> None:
        beaten: float | None = None  # monotonic seconds of the last heartbeat stored
        while True:
            try:
                await self._heartbeat()
            except (RedisError, OSError):
                pass
            else:
                now = time.monotonic()
                if beaten is not None and now - beaten >= self.beat_times.ttl:
                    # unheard of long enough for the others to find this worker gone
                    self._recheck_until = now + self.beat_times.recheck_for
                beaten = now
                if now < self._recheck_until and (self._rechecking is None or self._rechecking.done()):
                    # a task of its own: a slow database must not hold the next heartbeat back
                    self._rechecking = asyncio.get_running_loop().create_task(self._reconnect_swept())
            await asyncio.sleep(self.beat_times.every)

    async def _reconnect_swept(self) -> None:
        """Have the sockets whose connections another worker closed reconnect.

        While this worker was unheard of (Redis away, the process paused), another may have
        found it gone and closed its connections (:meth:`_sweep`): their participants would show
        as gone while still here. Each such socket is closed with 1012, which stores its close
        at the real time over the one assumed, and its page reconnects as a new connection.
        """
        assert self.router is not None
        members = dict(self.router.connections)
        if not members:
            return
        try:
            swept = await self.database.read(closed_among, self.worker, list(members))
        except Exception as exc:  # the database is away: the next heartbeat looks again
            log.warning("cluster: could not look for connections closed by another worker: %s", exc)
            return
        again = [members[c] for c in swept if self.router.connections.get(c) is members[c]]
        for member in again:
            member.close(WS_1012_SERVICE_RESTART, "reconnect: this worker was cut off from its cluster")
        if again:
            log.warning("cluster: %d sockets reconnect: their connections were closed while this worker was unheard of",
                        len(again))

    async def _heartbeat(self) -> None:
        assert self.router is not None
        writer = self.router.writer
        beat = {
            "worker": self.worker, "host": socket.gethostname(), "pid": os.getpid(), "started": self.started,
            "groups": len(self.held), "sockets": len(self.router.connections),
            "lag_ms": round(self.meter.lag * 1000, 1), "busy": self.busy,
            "writer": {"batches": writer.batches, "writes": writer.writes, "events": writer.committed},
            "at": time.time(),
            # its connections' rows name it (see _sweep): builds before that wrote none
            "names_connections": True,
        }
        key = self._key(f"worker:{self.worker}")
        async with self.hub.client.pipeline(transaction=False) as pipe:
            pipe.set(key, dumps(beat), px=max(1, round(self.beat_times.ttl * 1000)))
            pipe.sadd(self._key("workers"), self.worker)
            await pipe.execute()

    async def _sweep_loop(self) -> None:
        await self._every(self.beat_times.sweep_every, self._sweep, "connections a gone worker left open")

    async def _sweep(self) -> None:
        """Close the connections of the workers gone for :attr:`BeatTimes.gone_after` seconds.

        A worker killed with kill -9 (or a host lost) stores no close for its sockets: its
        participants would show as connected for ever. Whoever holds open connections without a
        heartbeat (or holds rows without a worker's name: one process's) for long enough has them
        closed with code 1006, at the time it was found gone (see :mod:`server.storage.leftover`).
        Rows without a name are left alone while a worker of a build that names none is heard from.
        Every worker looks; the first closes them, and the others find nothing left.
        """
        beats = await self.workers()
        live = {str(w["worker"]) for w in beats} | {self.worker}
        holders = await self.database.read(workers_with_open_connections)
        if None in holders and any(not w.get("names_connections") for w in beats):
            # a worker of an earlier build (a rolling upgrade under way) stores its connections
            # without its name: rows without one may be its live sockets', not a gone process's
            holders.discard(None)
        now = time.monotonic()
        self._absent = {w: self._absent.get(w, now) for w in holders if w not in live}
        for worker, since in list(self._absent.items()):
            if now - since < self.beat_times.gone_after:
                continue
            closed = await self.database.write(close_connections_of, worker, time.time())
            self._absent.pop(worker, None)
            if closed:
                log.warning("cluster: closed %d connections that worker %s left open (code 1006)", closed, worker)

    async def _stalled_loop(self) -> None:
        if self.database.stall_timeout is not None and not self.database.sqlite:
            # PostgreSQL's business alone: a stopped writer holds other writers back with Redis away too
            await self._every(
                self.database.stall_timeout / 2, self._end_stalled, "writers stopped inside a batch", redis=False
            )

    async def _end_stalled(self) -> None:
        """End the database sessions of writers (any worker's) stopped inside a batch for over the
        stall timeout: a takeover of their groups, and every other writer of their experiments,
        would wait for their rows and fail (``SYNCLAB_LOCK_TIMEOUT``) as long as they stay
        stopped (:func:`end_stalled_writers`)."""
        assert self.database.stall_timeout is not None
        await self.database.read(end_stalled_writers, self.database.stall_timeout)

    async def workers(self) -> list[dict[str, Any]]:
        """Every worker heard from lately, from the heartbeats (this one included)."""
        client = self.hub.client
        names = sorted(v.decode() if isinstance(v, bytes) else str(v) for v in await client.smembers(self._key("workers")))
        beats = await client.mget([self._key(f"worker:{n}") for n in names]) if names else []
        gone = [n for n, b in zip(names, beats, strict=True) if b is None]
        if gone:
            await client.srem(self._key("workers"), *gone)
        return [orjson.loads(b) for b in beats if b is not None]
