"""Where groups go: a busy worker leaves new groups to the others and hands some of its own over,
and running groups nobody serves are claimed.

A busy worker (its event loop late past ``SYNCLAB_BUSY_LAG``, :mod:`.load`) takes no group
nobody serves: it asks the least late worker that is not busy to take it
(:meth:`Placement._place`), and leaves orphans to the others; with every worker busy it takes the
group itself. Busy for ``SYNCLAB_SHED_AFTER`` seconds (5), it hands groups it serves over to such
a worker, one every ``SYNCLAB_SHED_EVERY`` seconds (2, ±50 %; :meth:`Placement._shed`). Every
:data:`CLAIM_EVERY` seconds a worker looks for running groups whose lease is gone (their worker
died) and claims them (:meth:`Placement._claim_orphans`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from groups import Phase

from ..exceptions import NotPersisted
from ..storage import Database, live_group_ids
from .heartbeats import BeatTimes
from .leases import Lease, Leases
from .load import LagMeter

if TYPE_CHECKING:
    from ..live import LiveGroup
    from ..routing import LiveGroups

log = logging.getLogger("synclab.cluster")
#: seconds between two looks for running groups nobody serves
CLAIM_EVERY = 0.5
#: the defaults of ``SYNCLAB_SHED_AFTER`` and ``SYNCLAB_SHED_EVERY``: seconds a worker stays busy
#: before it hands a group it serves to a worker that is not, and then between two such
#: hand-overs while it stays busy (see :meth:`Placement._shed`)
SHED_AFTER = 5.0
SHED_EVERY = 2.0


class Placement:
    """Which worker takes a group, as this one sees it (a part of :class:`server.cluster.node.Node`)."""

    # what it reads and sets of the node's state (see server.cluster.node.Node.__init__)
    worker: str
    database: Database
    leases: Leases
    held: dict[int, Lease]
    router: LiveGroups | None
    meter: LagMeter
    beat_times: BeatTimes
    busy_lag: float
    #: ``SYNCLAB_SHED_AFTER`` and ``SYNCLAB_SHED_EVERY`` (see :meth:`_shed`)
    shed_after: float
    shed_every: float
    _busy_since: float | None
    _claims: dict[int, asyncio.Future[str]]
    _draining: bool

    if TYPE_CHECKING:  # (server.cluster.node.Node and its heartbeats)
        async def request(self, worker: str, op: str, body: dict[str, Any]) -> Any: ...

        def _remember(self, group_id: int, worker: str) -> None: ...

        async def _hand_over(self, group_id: int) -> None: ...

        async def claim(self, group_id: int) -> str: ...

        async def workers(self) -> list[dict[str, Any]]: ...

        async def _every(
            self, period: float, look: Callable[[], Awaitable[None]], what: str, *, redis: bool = True
        ) -> None: ...

    @property
    def busy(self) -> bool:
        """This worker's loop runs late (``SYNCLAB_BUSY_LAG``): it leaves new groups to the others."""
        return self.busy_lag > 0 and self.meter.lag >= self.busy_lag

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
            if b.get("worker") != self.worker and b.get("busy") is False and now - float(b.get("at", 0)) < self.beat_times.ttl
        ]
        if not fit:
            return None
        return str(min(fit, key=lambda b: (float(b.get("lag_ms", 0)), int(b.get("groups", 0))))["worker"])

    async def _shed_loop(self) -> None:
        await self._every(self.shed_every, self._shed, "a group to hand over")

    async def _shed(self) -> None:
        """Busy for :attr:`shed_after` seconds: hand a group over to the least late worker that is not.

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
        if now - self._busy_since < self.shed_after or len(self.held) < 2 or self._draining:
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


def _playing(live: LiveGroup | None) -> bool:
    return live is not None and live.committed.phase is not Phase.ENDED
