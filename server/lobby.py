"""The lobby's timeout: what becomes of a block-1 group of an online experiment that does not fill.

Arrivals through the join link take seats in participant order, so the first block's groups
form in order of arrival, and each waits (its ``lobby`` count live on the participant page)
until every member is connected. ``lobby_timeout`` seconds after the group's first arrival
(its earliest stored ``joined_at``), a group still waiting is either

- filled with bots (``fill: "bots"``): its seats nobody took get status ``bot`` (so no later
  arrival takes them) and a server-side bot plays each (``LiveGroups.stand_in``, which counts as
  connected, so the period starts); a member who took a seat but is not connected is played by a
  bot as a dropout is (until they come back); or
- released (``fill: "release"``): every seat of the group, taken or not, gets status
  ``no_group``; the members are told (a stored ``lobby`` event ``{"status": "no_group"}``) and
  sent on their way back, and later arrivals go on to the next group. Releasing the whole group
  rather than its members one by one means nobody arrives into a group whose first members are
  gone, to wait out another whole timeout.

The timer runs where the group's authority is (this process, or the worker holding its lease),
armed when a member arrives there, from the times stored at the join: a worker that takes a
group over arms it again from the same times.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, Protocol

from groups import Event, Phase

from .exceptions import NotPersisted
from .live import LiveGroup, RunEnded
from .online import settings
from .presence import LOBBY
from .storage import BOT, NO_GROUP, Database, close_lobby, lobby_of
from .ticks import Clock

log = logging.getLogger("synclab.lobby")
#: a timeout whose writes failed is tried again after this many seconds, at most ``RETRIES`` times
RETRY_AFTER = 1.0
RETRIES = 30


class Router(Protocol):
    """What the lobbies need of the process's router (:class:`server.routing.LiveGroups`)."""

    database: Database
    clock: Clock
    #: tells the deliveries that these participants' runs ended (``server.deliveries``)
    run_ended: RunEnded | None

    def local(self, group_id: int) -> LiveGroup | None: ...

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None: ...


class Lobbies:
    """The lobby timers of the groups this process acts for."""

    def __init__(self, router: Router) -> None:
        self._router = router
        #: group id -> its timer (armed), or ``None`` (not a lobby: a later block, or not online)
        self._timers: dict[int, asyncio.TimerHandle | None] = {}
        self._arming: set[int] = set()

    def arrived(self, live: LiveGroup) -> None:
        """A member of ``live`` arrived: arm its lobby's timer once (the first time it has a joined member)."""
        if not live.has_lobby or live.id in self._timers or live.id in self._arming:
            return
        if live.committed.phase is not Phase.WAITING:
            return
        self._arming.add(live.id)
        self._router.spawn(self._arm(live))

    async def _arm(self, live: LiveGroup) -> None:
        try:
            lobby = await self._router.database.read(lobby_of, live.id)
        finally:
            self._arming.discard(live.id)
        if lobby is None:
            self._timers[live.id] = None
            return
        online = settings(lobby.online)
        first = lobby.first_joined()
        if online is None or first is None:
            return  # nobody came through the join link yet: the next arrival arms it
        due = first + online.lobby_timeout
        delay = max(0.0, due - self._router.clock())
        self._set(live, delay, online.fill, 0)

    def _set(self, live: LiveGroup, delay: float, fill: str, tries: int) -> None:
        loop = asyncio.get_running_loop()
        self._timers[live.id] = loop.call_at(loop.time() + delay, lambda: self._router.spawn(self._due(live, fill, tries)))

    async def _due(self, live: LiveGroup, fill: str, tries: int = 0) -> None:
        """The first arrival has waited ``lobby_timeout``: fill the group with bots, or release it."""
        if self._router.local(live.id) is not live or live.committed.phase is not Phase.WAITING:
            return  # formed meanwhile (or served elsewhere now: that worker has its own timer)
        try:
            await self._apply(live, fill)
        except NotPersisted as exc:  # the database away: try again shortly, a bounded number of times
            if tries + 1 >= RETRIES:
                log.error("group %s: the lobby's %s failed %d times: %s", live.id, fill, RETRIES, exc)
                return
            log.warning("group %s: the lobby's %s failed, trying again: %s", live.id, fill, exc)
            self._set(live, RETRY_AFTER, fill, tries + 1)

    async def _apply(self, live: LiveGroup, fill: str) -> None:
        if fill == "release":
            closed = await self._router.database.write(close_lobby, live.id, NO_GROUP)
            log.info("group %s: released from the lobby (status set for %s)", live.id, closed)
            # the whole group is released; stored, then sent (a failure is tried again, closing nothing twice)
            await live.act(lambda: [Event(LOBBY, {"status": NO_GROUP, "released": list(live.core.members)})])
            if self._router.run_ended is not None:  # their runs end here: the scores go back (oTree)
                self._router.run_ended(live.experiment_id, list(live.member_ids.values()))
            return
        # the stand-ins (``LiveGroups.stand_in(group_id, participant, reason)``): a server-side bot plays the seat
        stand_in = getattr(self._router, "stand_in", None)
        if stand_in is None:
            log.error("group %s: no stand-in bots in this build: its empty seats stay open", live.id)
            return
        empty = await self._router.database.write(close_lobby, live.id, BOT)
        # a member who took their seat but is not here (the tab closed after the join) would
        # keep the group waiting for ever: a bot plays for them too, as for a dropout
        absent = [c for c in live.core.members if c not in live.core.connected and c not in empty]
        log.info("group %s: bots fill the empty seats %s and play for the absent %s", live.id, empty, absent)
        for code in empty:
            await stand_in(live.id, code, "fill")
        for code in absent:
            await stand_in(live.id, code, "dropout")

    def forget(self, group_id: int) -> None:
        """The group is no longer acted for here (retired, handed over): its timer stops."""
        timer = self._timers.pop(group_id, None)
        if timer is not None:
            timer.cancel()

    def close(self) -> None:
        for timer in self._timers.values():
            if timer is not None:
                timer.cancel()
        self._timers.clear()
