"""This worker in a cluster: its Redis hub, the leases of the groups it serves, requests between workers.

A worker serves a group when it holds the group's lease (:mod:`.leases`): it takes a free one
when a member of the group connects here, when a request for it arrives and nobody serves it,
or — for a running group whose worker died, even without any traffic — when its claim loop finds
the lease gone (every :data:`.placement.CLAIM_EVERY` seconds). Taking a group: the lease (a new
epoch), the epoch raised in PostgreSQL, the group loaded from PostgreSQL; a deadline missed
meanwhile is applied at once and recorded late, as after a restart.

Workers talk through the hub: each has an inbox topic (``worker:{name}``) for requests and
answers, which travel in order with the group frames of the same worker. A member's frames go
to the group's worker as requests; its answer (the stored ``seq``s, or why not) comes back to
the member's worker, which acknowledges. Every worker writes a heartbeat (``GET /api/server``
lists them). On SIGTERM a worker hands its leases over at once (:meth:`Node.drain`).

A busy worker (its event loop late past ``SYNCLAB_BUSY_LAG``, :mod:`.load`) takes no group
nobody serves: it asks the least late worker that is not busy to take it, and leaves orphans to
the others; with every worker busy it takes the group itself. Busy for ``SYNCLAB_SHED_AFTER``
seconds, it hands groups it serves over to such a worker, one every ``SYNCLAB_SHED_EVERY`` seconds.
Whenever a group gets a new authority, every worker tells it which members are connected there
(:meth:`Node.taken`): the group it loads from the database knows no sockets.

Safety before liveness: a worker that cannot renew its leases (Redis away) stops acting for the
groups when its local validity ends, and requests to other workers fail with ``unavailable``.

:class:`Node` holds this worker's state, its life, and the groups it claims and holds; its parts
are beside it: its heartbeat and its sweeps in :mod:`.heartbeats`, where groups go when it is
busy and the orphans it claims in :mod:`.placement`, the requests it answers in :mod:`.inbox`.
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

from redis.exceptions import RedisError

from ..exceptions import NotPersisted, Unavailable
from ..hub.redis import RedisHub
from ..storage import Database, claim_group, group_epoch
from ..tasks import ended
from .heartbeats import BeatTimes, Heartbeats
from .inbox import Answers, Inbox
from .leases import Lease, Leases
from .load import LagMeter
from .placement import Placement
from .requests import Requests, dumps, inbox

if TYPE_CHECKING:
    from ..routing import LiveGroups
    from ..settings import Settings

log = logging.getLogger("synclab.cluster")
#: every worker listens to it: a group handed over, to be taken at once
CLUSTER_TOPIC = "cluster"
#: groups whose worker this one remembers, at most (forgotten all at once past it)
MAX_OWNERS_KNOWN = 100_000


class Node(Heartbeats, Placement, Answers):
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
        #: how often it beats, and when another worker is gone (``SYNCLAB_HEARTBEAT_SECONDS``)
        self.beat_times = BeatTimes(settings.heartbeat_seconds)
        #: the workers holding open connections not heard of, since when (monotonic seconds)
        self._absent: dict[str | None, float] = {}
        #: until when (monotonic seconds) to look for this worker's sockets closed by another
        self._recheck_until = 0.0
        #: how late this worker's loop runs; past ``busy_lag`` it is busy (see :meth:`owner`)
        self.meter = LagMeter()
        self.busy_lag = settings.busy_lag
        #: busy this long, it hands a group over, then another every ``shed_every`` (:meth:`_shed`)
        self.shed_after, self.shed_every = settings.shed_after, settings.shed_every
        #: since when (monotonic seconds) this worker has been busy; ``None``: it is not
        self._busy_since: float | None = None
        self._rechecking: asyncio.Task[None] | None = None
        self._inbox = Inbox(self)

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
        """Hand every group over at once (SIGTERM): stop claiming, give the leases up, say so.

        The loops are ended first, each cancelled again while it goes on (:func:`server.tasks.ended`):
        a heartbeat whose Redis call swallowed a single cancel beat again after this had taken
        the worker out of Redis, and the cluster heard of a worker that had left."""
        self._draining = True
        await ended([*self._tasks, self._rechecking])
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
        await ended([*self._tasks, self._rechecking])
        self.requests.close()
        await self.hub.close()

    def _key(self, name: str) -> str:
        return f"{self.prefix}:{name}"

    # ------------------------------------------------------------------ groups

    def holds(self, group_id: int) -> bool:
        lease = self.held.get(group_id)
        return lease is not None and self.leases.valid(lease)

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
