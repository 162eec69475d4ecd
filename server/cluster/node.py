"""This worker in a cluster: its Redis hub, the leases of the groups it serves, requests between workers.

A worker serves a group when it holds the group's lease (:mod:`.leases`): it takes a free one
when a member of the group connects here, when a request for it arrives and nobody serves it,
or — for a running group whose worker died, even without any traffic — when its claim loop finds
the lease gone (every :data:`CLAIM_EVERY` seconds). Taking a group: the lease (a new epoch), the
epoch raised in PostgreSQL, the group loaded from PostgreSQL; a deadline missed meanwhile is
applied at once and recorded late, as after a restart.

Workers talk through the hub: each has an inbox topic (``worker:{name}``) for requests and
answers, which travel in order with the group frames of the same worker. A member's frames go
to the group's worker as requests; its answer (the stored ``seq``s, or why not) comes back to
the member's worker, which acknowledges. Every worker writes a heartbeat (``GET /api/server``
lists them). On SIGTERM a worker hands its leases over at once (:meth:`Node.drain`).

A busy worker (its event loop late past ``SYNCLAB_BUSY_LAG``, :mod:`.load`) takes no group
nobody serves: it asks the least late worker that is not busy to take it, and leaves orphans to
the others; with every worker busy it takes the group itself. Busy for :data:`SHED_AFTER`
seconds, it hands groups it serves over to such a worker, one every :data:`SHED_EVERY` seconds.
Whenever a group gets a new authority, every worker tells it which members are connected there
(:meth:`Node.taken`): the group it loads from the database knows no sockets.

Safety before liveness: a worker that cannot renew its leases (Redis away) stops acting for the
groups when its local validity ends, and requests to other workers fail with ``unavailable``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson
from redis.exceptions import RedisError

from groups import Phase

from ..exceptions import WS_1012_SERVICE_RESTART, NotPersisted, Unavailable
from ..hub import group_of
from ..hub.redis import RedisHub
from ..storage import (
    Database,
    claim_group,
    close_connections_of,
    closed_among,
    end_stalled_writers,
    group_epoch,
    live_group_ids,
    workers_with_open_connections,
)
from .leases import Lease, Leases
from .load import LagMeter
from .requests import Requests, dumps, inbox

if TYPE_CHECKING:
    from ..live import LiveGroup
    from ..routing import LiveGroups
    from ..settings import Settings

log = logging.getLogger("synclab.cluster")
#: seconds between two looks for running groups nobody serves
CLAIM_EVERY = 0.5
#: seconds between two heartbeats; a worker not heard from for :data:`HEARTBEAT_TTL` is gone
HEARTBEAT_EVERY = 1.0
HEARTBEAT_TTL = 5
#: every worker listens to it: a group handed over, to be taken at once
CLUSTER_TOPIC = "cluster"
#: groups whose worker this one remembers, at most (forgotten all at once past it)
MAX_OWNERS_KNOWN = 100_000
#: seconds between two looks for connections that a gone worker left open (see :meth:`Node._sweep`)
SWEEP_EVERY = 2.0
#: seconds a worker holding open connections must stay unheard of (its heartbeat expired) before
#: they are closed: a blip of Redis is not a death
GONE_AFTER = 5.0
#: seconds a worker stays busy before it hands a group it serves to a worker that is not, and
#: then between two such hand-overs while it stays busy (see :meth:`Node._shed`)
SHED_AFTER = 5.0
SHED_EVERY = 2.0
#: seconds after a heartbeat gap during which this worker looks, at each heartbeat, for its sockets
#: whose connections another worker closed meanwhile (a sweep that began before the gap ended
#: may close them a moment after the first look)
RECHECK_FOR = 3 * SWEEP_EVERY


class Node:
    """This worker's part in the cluster named ``settings.cluster_name``."""

    def __init__(self, settings: Settings, database: Database, *, worker: str | None = None) -> None:
        assert settings.redis_url is not None
        self.worker = worker or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        if len(self.worker) > 200:  # the connections' ``worker`` column
            raise ValueError(f"a worker's name is at most 200 characters: {self.worker!r}")
        self.prefix = settings.cluster_name
        self.started = time.time()
        self.database = database
        self.hub = RedisHub(settings.redis_url, origin=self.worker, prefix=self.prefix, resync=self._resync)
        self.leases = Leases(self.hub.client, self.worker, prefix=self.prefix, ttl=settings.lease_seconds)
        #: the leases of the groups this worker serves, by group id
        self.held: dict[int, Lease] = {}
        self.router: LiveGroups | None = None
        self._claims: dict[int, asyncio.Future[str]] = {}
        #: other workers' requests for a group being claimed here, in the order they came: run
        #: once it is loaded (or refused as ``moved`` if the claim failed), not refused meanwhile
        self._waiting: dict[int, list[dict[str, Any]]] = {}
        #: the leases being given up now (a claim of the same group waits for its release)
        self._releasing: dict[int, asyncio.Task[None]] = {}
        #: who serves each group, as last heard (leases, notices); forgotten when a request fails
        self._owners: dict[int, str] = {}
        #: this worker's requests to the others, and its answers to theirs
        self.requests = Requests(self.hub, self.worker)
        self._tasks: list[asyncio.Task[None]] = []
        self._draining = False
        #: the workers holding open connections not heard of, since when (monotonic seconds)
        self._absent: dict[str | None, float] = {}
        #: until when (monotonic seconds) to look for this worker's sockets closed by another
        self._recheck_until = 0.0
        #: how late this worker's loop runs; past ``busy_lag`` it is busy (see :meth:`owner`)
        self.meter = LagMeter()
        self.busy_lag = settings.busy_lag
        #: since when (monotonic seconds) this worker has been busy; ``None``: it is not
        self._busy_since: float | None = None
        self._rechecking: asyncio.Task[None] | None = None
        self._inbox = _Inbox(self)

    # ------------------------------------------------------------------ life

    async def start(self, router: LiveGroups, wait: float = 5.0) -> None:
        """Join the cluster: the hub, this worker's inbox, the loops; waits (bounded) for Redis."""
        self.router = router
        await self.hub.start()
        self.hub.subscribe(inbox(self.worker), self._inbox)
        self.hub.subscribe(CLUSTER_TOPIC, self._inbox)
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(f())
            for f in (
                self._renew_loop, self._claim_loop, self._heartbeat_loop, self._sweep_loop, self._shed_loop,
                self._stalled_loop, self.meter.run,
            )
        ]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.hub.connected.wait(), wait)
        if not self.hub.up:
            log.error("cluster: Redis is unreachable (%s); serving nothing until it answers", self.hub.reason)

    async def drain(self) -> None:
        """Hand every group over at once (SIGTERM): stop claiming, give the leases up, say so."""
        self._draining = True
        for task in self._tasks:
            task.cancel()
        for group_id in list(self.held):
            await self._hand_over(group_id)
        with contextlib.suppress(RedisError, OSError):
            await self.hub.client.srem(self._key("workers"), self.worker)
            await self.hub.client.delete(self._key(f"worker:{self.worker}"))

    async def _hand_over(self, group_id: int) -> None:
        """Stop serving the group and give its lease up at once, saying so: a worker with members
        of it takes it (:meth:`_released`), or any worker's claim loop does."""
        lease = self.held.pop(group_id, None)
        if self.router is not None:
            self.router.retire(group_id)
        if lease is None:
            return
        with contextlib.suppress(RedisError, OSError):
            await self.leases.release(lease)
            self.hub.publish(CLUSTER_TOPIC, dumps({"op": "released", "g": group_id}))

    async def close(self) -> None:
        if self._rechecking is not None:
            self._tasks.append(self._rechecking)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.requests.close()
        await self.hub.close()

    def _key(self, name: str) -> str:
        return f"{self.prefix}:{name}"

    # ------------------------------------------------------------------ groups

    def holds(self, group_id: int) -> bool:
        lease = self.held.get(group_id)
        return lease is not None and self.leases.valid(lease)

    @property
    def busy(self) -> bool:
        """This worker's loop runs late (``SYNCLAB_BUSY_LAG``): it leaves new groups to the others."""
        return self.busy_lag > 0 and self.meter.lag >= self.busy_lag

    async def owner(self, group_id: int, *, here: bool = False) -> str:
        """The worker that serves the group. If nobody does, this one takes it (and has it loaded
        then), unless it is busy and another worker is not: that one is asked to take it
        (:meth:`_place`). ``here``: take it here in any case (another worker's ask)."""
        if self.holds(group_id):
            claiming = self._claims.get(group_id)
            if claiming is not None:
                return await asyncio.shield(claiming)
            return self.worker
        if not self.hub.up or self._draining:
            raise Unavailable(f"the cluster is unavailable here: {self.hub.reason or 'this worker is stopping'}")
        known = self._owners.get(group_id)
        if known is not None and known != self.worker:
            return known  # a frame per request would otherwise cost a round trip to Redis
        try:
            found = (await self.leases.owners([group_id]))[group_id]
        except (RedisError, OSError) as exc:
            raise Unavailable(f"Redis is unreachable: {exc}") from exc
        if found is not None and found.worker != self.worker:
            self._remember(group_id, found.worker)
            return found.worker
        if not here and self.busy:
            placed = await self._place(group_id)
            if placed is not None:
                return placed
        return await self.claim(group_id)

    async def _place(self, group_id: int) -> str | None:
        """Ask the least late worker that is not busy to take the group; who serves it then, or
        ``None`` (nobody else fit, or the ask failed: this worker takes it after all)."""
        other = await self._idlest()
        if other is None:
            return None
        try:
            worker = str(await self.request(other, "take", {"g": group_id}))
        except Exception as exc:  # unavailable, moved, not loaded there, or a worker of an older build
            log.warning("cluster: busy, asked %s to take group %s: %s; taking it here", other, group_id, exc)
            return None
        if worker == self.worker:
            return None
        self._remember(group_id, worker)
        log.warning("cluster: busy (the loop %.0f ms late): group %s went to %s", self.meter.lag * 1000, group_id, worker)
        return worker

    async def _idlest(self) -> str | None:
        """The other worker heard from lately that is not busy, the least late first; ``None``: none.

        Only a worker whose heartbeat says whether it is busy counts: one of an older build (a
        rolling upgrade) does not know the request to take a group."""
        try:
            beats = await self.workers()
        except (RedisError, OSError):
            return None
        now = time.time()
        fit = [
            b for b in beats
            if b.get("worker") != self.worker and b.get("busy") is False and now - float(b.get("at", 0)) < HEARTBEAT_TTL
        ]
        if not fit:
            return None
        return str(min(fit, key=lambda b: (float(b.get("lag_ms", 0)), int(b.get("groups", 0))))["worker"])

    def _remember(self, group_id: int, worker: str) -> None:
        if len(self._owners) >= MAX_OWNERS_KNOWN:
            self._owners.clear()
        self._owners[group_id] = worker

    def unknown(self, group_id: int) -> None:
        """Who serves the group must be asked again (a request to it failed, or it moved)."""
        self._owners.pop(group_id, None)

    def taken(self, group_id: int, worker: str) -> None:
        """``worker`` serves the group now (its notice): remembered, and requests still waiting
        on another worker about it fail as ``moved`` so that their callers ask again."""
        if self.router is None or group_id in self.router.views or group_id in self._owners:
            self._remember(group_id, worker)  # not every group's owner: only those wanted here
        self.requests.moved(group_id, worker)
        self._register_members(group_id)

    def _register_members(self, group_id: int) -> None:
        """The group has a new authority: the members connected here are told to it."""
        view = self.router.views.get(group_id) if self.router is not None else None
        if view is not None and view.current:
            view.register()

    async def claim(self, group_id: int) -> str:
        """Take the group if it is free: lease, epoch in PostgreSQL, loaded here. Returns who serves it."""
        claiming = self._claims.get(group_id)
        if claiming is not None:
            return await asyncio.shield(claiming)
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._claims[group_id] = future
        try:
            future.set_result(await self._take(group_id))
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()
            raise
        finally:
            self._claims.pop(group_id, None)
        return future.result()

    async def _take(self, group_id: int) -> str:
        assert self.router is not None
        releasing = self._releasing.get(group_id)
        if releasing is not None:  # this worker is giving the group up: its lease is gone first
            await asyncio.shield(releasing)
        try:
            floor = await self.database.read(group_epoch, group_id)
        except Exception as exc:  # the database is away: nobody can take the group now
            raise Unavailable(f"the database is unreachable: {exc}") from exc
        try:
            lease = await self.leases.acquire(group_id, floor)
            if lease is None:
                found = (await self.leases.owners([group_id]))[group_id]
                if found is None or found.worker == self.worker:  # released meanwhile, or ours lapsing
                    raise Unavailable(f"group {group_id} is changing hands; try again")
                return found.worker
        except (RedisError, OSError) as exc:
            raise Unavailable(f"Redis is unreachable: {exc}") from exc
        self.held[group_id] = lease
        try:
            if not await self.database.write(claim_group, group_id, lease.epoch):
                raise Unavailable(f"group {group_id}: a newer authority holds it")
            await self.router.group(group_id, epoch=lease.epoch)
        except BaseException as exc:
            self.held.pop(group_id, None)
            with contextlib.suppress(RedisError, OSError):
                await self.leases.release(lease)
            if isinstance(exc, LookupError | NotPersisted):
                raise
            raise Unavailable(f"group {group_id} could not be taken: {exc}") from exc
        log.info("cluster: serving group %s (epoch %s)", group_id, lease.epoch)
        self.hub.publish(CLUSTER_TOPIC, dumps({"op": "taken", "g": group_id, "w": self.worker}))
        self.taken(group_id, self.worker)
        return self.worker

    def forget(self, group_id: int) -> None:
        """This worker no longer serves the group (fenced, retired): its lease is not renewed."""
        if self.held.pop(group_id, None) is not None:
            log.warning("cluster: no longer serving group %s", group_id)

    def _lost(self, group_id: int, why: str) -> None:
        if self.router is not None and group_id in self.router.groups:
            log.warning("cluster: no longer serving group %s: %s", group_id, why)
        self.held.pop(group_id, None)
        if self.router is not None:
            self.router.retire(group_id)

    async def _renew_loop(self) -> None:
        every = self.leases.ttl / 4
        while True:
            await asyncio.sleep(every)
            held = [lease for lease in self.held.values() if lease.group_id not in self._claims]
            try:
                for lease in await self.leases.renew(held):
                    self._lost(lease.group_id, "its lease was taken")
            except (RedisError, OSError) as exc:
                log.warning("cluster: leases not renewed: %s", exc)
            for lease in list(self.held.values()):
                if not self.leases.valid(lease) and lease.group_id not in self._claims:
                    self._lost(lease.group_id, "its lease could not be renewed in time")

    def let_go(self, group_id: int) -> None:
        """Give up a group that has rested its grace (ended, nobody connected): it leaves this
        worker, its lease is released at once, and any worker takes it again on demand."""
        assert self.router is not None
        lease = self.held.pop(group_id, None)
        self.router.retire(group_id)
        if lease is None:
            return
        log.info("cluster: gave ended group %s up", group_id)
        task = asyncio.get_running_loop().create_task(self._release(lease))
        self._releasing[group_id] = task
        task.add_done_callback(lambda _: self._releasing.pop(group_id, None))

    async def _release(self, lease: Lease) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self.leases.release(lease)

    async def _every(
        self, period: float, look: Callable[[], Awaitable[None]], what: str, *, redis: bool = True
    ) -> None:
        """``look()`` every ``period`` seconds (±50 %, so that the workers do not look at once)
        while Redis answers (``redis=False``: whether or not); a failed look is logged and the
        next one tries again."""
        while True:
            await asyncio.sleep(period * (0.5 + random.random()))
            if redis and not self.hub.up:
                continue
            try:
                await look()
            except Exception as exc:  # the database or Redis is away
                log.warning("cluster: could not look for %s: %s", what, exc)

    async def _shed_loop(self) -> None:
        await self._every(SHED_EVERY, self._shed, "a group to hand over")

    async def _shed(self) -> None:
        """Busy for :data:`SHED_AFTER` seconds: hand a group over to the least late worker that is not.

        New groups already go elsewhere (:meth:`owner`); this relieves a worker that took too many
        before (the others were down, a worker was added since). One group a look, of those still
        playing the one with the fewest members connected here, while the worker stays busy; its members play on
        through this worker, a decision under way is refused (``unavailable``) and sent again."""
        if not self.busy:
            self._busy_since = None
            return
        now = time.monotonic()
        if self._busy_since is None:
            self._busy_since = now
        if now - self._busy_since < SHED_AFTER or len(self.held) < 2 or self._draining:
            return
        other = await self._idlest()
        if other is None:
            return
        router = self.router
        assert router is not None
        # the groups still playing: a finished one costs nothing where it is
        served = [g for g in self.held if g not in self._claims and _playing(router.local(g))]
        if len(served) < 2:
            return
        views = router.views
        group_id = min(served, key=lambda g: len(views[g].current) if g in views else 0)
        log.warning("cluster: busy (the loop %.0f ms late) for %.0f s: handing group %s over to %s",
                    self.meter.lag * 1000, now - self._busy_since, group_id, other)
        await self._hand_over(group_id)
        with contextlib.suppress(Exception):  # else whoever has members takes it, or a claim loop
            self._remember(group_id, str(await self.request(other, "take", {"g": group_id})))

    async def _claim_loop(self) -> None:
        await self._every(CLAIM_EVERY, self._claim_orphans, "groups to serve")

    async def _claim_orphans(self) -> None:
        if self.busy and await self._idlest() is not None:
            return  # left to the workers that are not busy
        running = await self.database.read(live_group_ids)
        owners = await self.leases.owners([g for g in running if g not in self.held])
        orphans = [g for g, o in owners.items() if o is None]
        random.shuffle(orphans)
        for group_id in orphans[:20]:
            with contextlib.suppress(NotPersisted, LookupError):
                await self.claim(group_id)

    async def _heartbeat_loop(self) -> None:
        beaten: float | None = None  # monotonic seconds of the last heartbeat stored
        while True:
            try:
                await self._heartbeat()
            except (RedisError, OSError):
                pass
            else:
                now = time.monotonic()
                if beaten is not None and now - beaten >= HEARTBEAT_TTL:
                    # unheard of long enough for the others to find this worker gone
                    self._recheck_until = now + RECHECK_FOR
                beaten = now
                if now < self._recheck_until and (self._rechecking is None or self._rechecking.done()):
                    # a task of its own: a slow database must not hold the next heartbeat back
                    self._rechecking = asyncio.get_running_loop().create_task(self._reconnect_swept())
            await asyncio.sleep(HEARTBEAT_EVERY)

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
            pipe.set(key, dumps(beat), ex=HEARTBEAT_TTL)
            pipe.sadd(self._key("workers"), self.worker)
            await pipe.execute()

    async def _sweep_loop(self) -> None:
        await self._every(SWEEP_EVERY, self._sweep, "connections a gone worker left open")

    async def _sweep(self) -> None:
        """Close the connections of the workers gone for :data:`GONE_AFTER` seconds.

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
            if now - since < GONE_AFTER:
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

    # ------------------------------------------------------------------ requests

    def ready(self, topic: str) -> Any:
        return self.hub.ready(topic)

    def mark(self, topic: str, seq: int) -> None:
        self.hub.mark(topic, seq)

    async def request(self, worker: str, op: str, body: dict[str, Any]) -> Any:
        """``op`` at ``worker`` (see :meth:`.requests.Requests.request`)."""
        return await self.requests.request(worker, op, body)

    def send(self, worker: str, op: str, body: dict[str, Any]) -> None:
        self.requests.send(worker, op, body)

    def answer(self, message: dict[str, Any]) -> None:
        """A request from another worker: run it here, send the answer back (when it is ready)."""
        assert self.router is not None
        op, body = message["op"], message["body"]
        if op == "close":
            self.router.close_member(self.worker, body["k"], int(body["code"]), str(body["reason"]))
            return
        if op != "take":
            group_id = int(body["g"])
            waiting = self._waiting.get(group_id)
            claiming = self._claims.get(group_id)
            if waiting is None and claiming is not None:
                # the lease is ours, the group not loaded yet: its members' frames wait for it
                waiting = self._waiting[group_id] = []
                claiming.add_done_callback(lambda _: self._claimed(group_id))
            if waiting is not None:
                waiting.append(message)
                return
        self._answer(message)

    def _claimed(self, group_id: int) -> None:
        """The claim of a group ended: the requests that waited for it run, in order."""
        for message in self._waiting.pop(group_id, []):
            self._answer(message)

    def _answer(self, message: dict[str, Any]) -> None:
        assert self.router is not None
        op, body, rid, asker = message["op"], message["body"], message.get("id"), message["from"]
        try:
            result = (
                asyncio.ensure_future(self.owner(int(body["g"]), here=True)) if op == "take" else self.router.handle(op, body)
            )
        except BaseException as exc:
            self.requests.reply(asker, rid, None, exc)
            return
        if isinstance(result, asyncio.Future):
            result.add_done_callback(lambda f: self.requests.reply(asker, rid, None if f.exception() else f.result(), f.exception()))
        else:
            self.requests.reply(asker, rid, result, None)

    def _released(self, group_id: int) -> None:
        """Another worker handed a group over: take it at once if members of it are here."""
        assert self.router is not None
        self.unknown(group_id)
        view = self.router.views.get(group_id)
        if view is not None and view.current and not self._draining:
            self.router.spawn(self.owner(group_id))

    def _resync(self, topic: str) -> None:
        """Frames of ``topic`` may be lost: group members here get the whole state; monitors start over."""
        assert self.router is not None
        group_id = group_of(topic)
        if group_id is not None:
            view = self.router.views.get(group_id)
            if view is not None:
                view.resync()
        elif topic.startswith(("monitor:", "presence:")):
            for subscriber in self.hub.subscribers(topic):
                lost = getattr(subscriber, "lost", None)
                if lost is not None:
                    lost()


def _playing(live: LiveGroup | None) -> bool:
    return live is not None and live.committed.phase is not Phase.ENDED


class _Inbox:
    """The hub subscriber of this worker's inbox and of the cluster's topic."""

    def __init__(self, node: Node) -> None:
        self._node = node

    def deliver(self, to: frozenset[str] | None, data: str) -> None:
        message = orjson.loads(data)
        if message["op"] == "reply":
            self._node.requests.answered(message)
        elif message["op"] == "released":
            self._node._released(int(message["g"]))
        elif message["op"] == "taken":
            self._node.taken(int(message["g"]), str(message["w"]))
        else:
            try:
                self._node.answer(message)
            except Exception:
                log.exception("cluster: a request failed: %r", message.get("op"))
