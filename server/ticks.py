"""A live group's clock: its ticks, what fell due while it was down, the tries again of a tick that
failed, and its stop.

The core names the group's next deadline; the group sets one ``loop.call_at`` on it after every
action (:meth:`server.live.LiveGroup._reschedule`, on a decision's path) and :class:`Ticks`
applies what is due when it comes. A tick whose write failed (the database away) is tried again
after :data:`RETRY_AFTER`; one the game failed on, less and less often, and once its period's end
is long past the period is ended without the game. The clock stops at shutdown
(:meth:`Ticks.close`), and for good once another worker acts for the group (:meth:`Ticks.retire`).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from groups import GAME_FAULT, NOBODY, DecisionGroup, Event, describe_fault

from .exceptions import NotPersisted, Unstorable
from .futures import consume
from .hooks import HookWatch
from .presence import Seats

# the group's logger: these lines are about the group, wherever their code lives
log = logging.getLogger("synclab.live")
#: a time source: seconds since the epoch
Clock = Callable[[], float]
#: seconds before a tick whose write failed (the database away) is tried again
RETRY_AFTER = 0.5
#: the longest wait between tries of a tick the game failed on (each wait twice the last, from
#: :data:`RETRY_AFTER`): a game that raises on every tick is not run in a loop
GAME_RETRY_MAX = 10.0
#: seconds past its period's end after which a group whose game still fails on its tick is ended
#: without the game (:meth:`groups.DecisionGroup.end_faulted`), as the experimenter's ``end`` does
GAME_FAULT_END_AFTER = 30.0


class Ticks:
    """A live group's clock, from its load to its stop (a part of :class:`server.live.LiveGroup`)."""

    # what it reads and sets of the group's state (see server.live.LiveGroup.__init__)
    id: int
    core: DecisionGroup
    _clock: Clock
    _timer: asyncio.TimerHandle | None
    _deadline: float | None
    _retry_at: float | None
    _tick_failures: int
    _closed: bool
    retired: bool
    _looking: set[asyncio.Task[Any]]
    standins: Seats | None
    watch: HookWatch

    if TYPE_CHECKING:  # (server.live.LiveGroup)
        def act(self, action: Callable[[], list[Event]]) -> asyncio.Future[list[int]]: ...

        def _reschedule(self) -> None: ...

    async def catch_up(self) -> None:
        """Apply at once what fell due while no process acted for the group, and wait until it
        is stored (or refused): a restart's first ``hello`` then shows it."""
        deadline = self.core.next_deadline()
        if deadline is None or deadline > self._clock():
            return
        if self._timer is not None:
            self._timer.cancel()
        future = self._tick()
        if future is None:
            return
        try:
            await future
        except NotPersisted as exc:  # the timer tries again; the restart goes on
            log.warning("group %s: what fell due while down is not stored yet: %s", self.id, exc)

    def _due(self) -> None:
        future = self._tick()
        if future is not None:
            future.add_done_callback(consume)

    def _tick(self) -> asyncio.Future[list[int]] | None:
        """What is due now, applied and on its way to the database; ``None``: the game failed on it (logged)."""
        self._timer = None
        self._deadline = None
        try:
            future = self.act(lambda: self.core.tick(self._clock()))
        except Exception as exc:
            return self._tick_failed(exc)
        return future  # once a tick's write is stored, the failures in a row start from 0 again

    def _unstorable(self, exc: Unstorable, tick: bool) -> None:
        """A write of the group that the database cannot take was refused (the core is back at
        what is stored). With a tick in it (a subperiod's or the period's end, maybe carried by a
        decision) the clock tries it again as a tick the game failed on (:meth:`_tick_failed`);
        else a line in the log (:meth:`server.hooks.HookWatch.refused`: throttled)."""
        if tick:
            ended = self._tick_failed(exc)
            if ended is not None:
                ended.add_done_callback(consume)
            return
        self.watch.refused(exc)
        self._reschedule()

    def _tick_failed(self, exc: Exception) -> asyncio.Future[list[int]] | None:
        """The game failed on a tick (a payoff that raises, or is no number; or the tick's write
        cannot be stored, :meth:`_unstorable`): nothing of the tick was applied. Tried again
        later, less and less often, never in a loop; the first failure in a row is recorded
        (``game_fault``); once the period's end is :data:`GAME_FAULT_END_AFTER` past, the period
        is ended without the game (returned: the end on its way)."""
        now = self._clock()
        ends_at = self.core.state.ends_at
        if ends_at is not None and now >= ends_at + GAME_FAULT_END_AFTER:
            self._tick_failures = 0
            return self.act(lambda: self._end_faulted(exc, "tick", now))
        self._tick_failures += 1
        wait = min(RETRY_AFTER * 2 ** min(self._tick_failures - 1, 16), GAME_RETRY_MAX)
        retry = now + wait
        if ends_at is not None:  # the end without the game comes on time, not up to a wait later
            retry = min(retry, max(now, ends_at + GAME_FAULT_END_AFTER))
        self._retry_at = retry
        if self._tick_failures == 1:  # (a write that could not be stored has no traceback to show)
            log.error("group %s: the game %s failed on a tick; tried again in %g s, then less often: %s",
                      self.id, type(self.core).__name__, wait, exc, exc_info=exc if exc.__traceback__ else None)
            self.record_fault(exc, "tick")
        else:
            log.error("group %s: the game %s failed on a tick again (%d in a row), tried again in %g s: %s",
                      self.id, type(self.core).__name__, self._tick_failures, wait, exc)
        self._reschedule()
        return None

    def record_fault(self, exc: Exception, during: str) -> None:
        """Store the game's failure ``during`` a step that changed nothing (a tick tried again
        later, the experimenter's action left undone: ``server.calls``) as a ``game_fault`` event
        sent to nobody, ``ended`` false: the monitor's feed, the exports and ``synclab bots`` show it."""
        fault = {**describe_fault(self.core, exc, during), "ended": False}
        self.act(lambda: [Event(GAME_FAULT, fault, None, NOBODY)]).add_done_callback(consume)

    def _end_faulted(self, exc: Exception, during: str, now: float) -> list[Event]:
        """The events of the period's end without the game, which failed with ``exc`` (logged)."""
        fault = describe_fault(self.core, exc, during)
        self._tick_failures = 0
        log.error(
            "group %s: the game %s failed on the %s (%s: %s: %s); the period is ended without it",
            self.id, type(self.core).__name__, "experimenter's end" if during == "end" else "period's end, long past",
            fault["hook"] or "no hook", fault["error"], fault["message"],
        )
        return self.core.end_faulted(now, fault)

    def now(self) -> float:
        """The group's clock (seconds since the epoch, to the microsecond, as stored)."""
        return self._clock()

    def close(self) -> None:
        """Stop the group's clock and its bots (at shutdown); what it has submitted is still stored."""
        self._closed = True
        if self.standins is not None:
            self.standins.stop()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def retire(self) -> None:
        """This process no longer acts for the group (its lease lapsed or was handed over).

        Its clock stops and every action is refused with :class:`~server.exceptions.NotAuthority`; writes already
        submitted are stored only if the group's epoch is still this one (the fence). Its reads and
        look-ups of client ids stop: the frames held behind them are refused at once, to be sent
        again to whoever serves the group now (:mod:`server.lookups`), not after a read of no use.
        """
        self.retired = True
        self.close()
        for task in list(self._looking):
            task.cancel()
        # its bots have stopped: without the cycle group <-> stand-ins, reference counting frees
        # the group as soon as the router lets go of it (the cycle collector runs seldom)
        self.standins = None


def to_microseconds(epoch: float) -> float:
    """``epoch`` on a whole microsecond, as stored: ``datetime.fromtimestamp`` of the result has
    exactly that microsecond, and its ``timestamp()`` gives the result back (``round(epoch, 6)``
    picks the same kind of value, at six times the cost: it goes through decimal digits).
    ``server.live.LiveGroup``'s clock writes it out (a call less at every decision)."""
    return math.floor(epoch * 1e6 + 0.5) / 1e6
