"""Stand-ins: server-side bots that play a member's seat at the group's authority.

A stand-in decides with the game's own :meth:`groups.DecisionGroup.bot_decision` (a seeded
``random.Random`` per seat and group), about once a second with jitter and never faster than
the block's ``rate_limit``, through the same path as a human's decision
(:meth:`server.live.LiveGroup.receive`: stored before it is broadcast, given its ``seq``), and
every event it makes is stored with ``bot`` true. It counts as connected, so a period starts
(or a period paused for a disconnect resumes) with it in the seat.

Two reasons put one in a seat (:meth:`StandIns.start`, reached through
:meth:`server.routing.LiveGroups.stand_in`):

- ``fill``: the lobby found no human for the seat. The bot plays it for good, in every later
  block too (the participant's status is ``bot``, so whoever loads a later group knows).
- ``dropout``: in an experiment with ``online`` settings, a human member was disconnected for
  more than ``dropout_after`` seconds while the period ran (or was paused, or while a later
  block's group waited for them). The bot plays until the human connects again and stops at
  once; it follows them to their next block while they stay away.

Taking a seat and leaving it are recorded as ``standin`` events (``{"participant", "reason",
"playing"}``, stored, sent to nobody) with the participant's status in the same write
(:mod:`server.storage.statuses`): ``bot``, ``dropped`` when a bot takes over from a human,
``replaced`` when the human comes back; ``finished`` (or ``dropped`` if a bot still plays) when
the last block's period ends, which the writer's transaction makes ``cancelled`` for a member who
did not play every block (the experimenter ended the experiment or a group first). Everything here runs at the group's authority: a worker that takes
a group over (or a restart) loads it with its members' statuses, puts the fill bots back at
once, a ``dropped`` member's bot too unless they reconnect first, and starts every other absent
member's ``dropout_after`` from their last connection's stored close (from the load when that is
not known: never connected, or a connection a crash left open).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Coroutine
from time import perf_counter
from typing import Any, Protocol

from groups import (
    DECISIONS,
    NOBODY,
    PERIOD_END,
    STATE,
    Event,
    GroupError,
    InvalidState,
    Phase,
    RefusedAction,
)

from .exceptions import NotPersisted, Unavailable
from .futures import consume
from .hooks import IN_BOT_DECISION
from .live import LiveGroup
from .online import settings
from .storage import STANDIN, Database, load_seat

log = logging.getLogger("synclab.standins")

FILL = "fill"
DROPOUT = "dropout"
REASONS = (FILL, DROPOUT)
#: seconds between a stand-in's decisions on average (each interval 0.5 to 1.5 times it)
PACE = 1.0


class Router(Protocol):
    """What the stand-ins need of :class:`server.routing.LiveGroups`."""

    database: Database

    def clock(self) -> float: ...

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None: ...

    async def stand_in(self, group_id: int, participant: str, reason: str) -> None: ...


class StandIns:
    """The stand-ins of one live group, and its members' dropout clocks (for an online experiment)."""

    def __init__(self, live: LiveGroup, router: Router) -> None:
        self.live = live
        self.router = router
        online = settings(live.spec.online)
        #: seconds a member may be away before a bot plays for them (``None``: never)
        self.dropout_after = None if online is None else online.dropout_after
        #: the seats a bot plays now, with the reason
        self.playing: dict[str, str] = {}
        self._bots: dict[str, asyncio.Task[None]] = {}
        self._away: dict[str, asyncio.TimerHandle] = {}
        self._stopped = False

    def begin(self) -> None:
        """The group was just loaded here: put back the bots its members' statuses call for."""
        if self.live.committed.phase is Phase.ENDED:
            return  # nothing left to play here (a bot that plays on is put back by its next group's load)
        for code in self.live.core.members:
            status = self.live.spec.statuses.get(code)
            if status == "bot":
                self.start(code, FILL).add_done_callback(consume)
            elif self.dropout_after is not None and code not in self.live.connections:
                if status == "dropped" and self._takes_dropouts():
                    self.start(code, DROPOUT).add_done_callback(consume)
                else:  # away since their last connection closed, if that is known
                    self._arm(code, self.live.spec.away_since.get(code))

    # ------------------------------------------------------------------ seats

    def start(self, participant: str, reason: str) -> asyncio.Future[list[int]]:
        """A bot plays ``participant``'s seat from now on (no-op if one does, or, for a dropout, the human is here).

        Resolves once the bot's arrival is stored. Raises :class:`LookupError` for somebody who
        is not a member and :class:`ValueError` for an unknown reason. An arrival the game fails
        on is logged once, with its traceback, and counted all the same (stored, the bot playing).
        """
        if reason not in REASONS:
            raise ValueError(f"expected a reason in {list(REASONS)}, got {reason!r}")
        if participant not in self.live.core.members:
            raise LookupError(f"{participant!r} is not a member of group {self.live.id}")
        if self._stopped or participant in self.playing or (reason == DROPOUT and participant in self.live.connections):
            done: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
            done.set_result([])
            return done
        self.playing[participant] = reason
        self._disarm(participant)
        record = Event(STANDIN, {"participant": participant, "reason": reason, "playing": True}, None, NOBODY)
        live = self.live
        try:
            future = live.act(lambda: [record, *live.core.connect(participant, live.now())])
        except (RefusedAction, InvalidState):
            del self.playing[participant]  # refused: nothing changed
            raise
        except Exception as exc:
            # The game failed on the arrival (the period's start it makes, say): the bot takes the
            # seat all the same, as a human's arrival counts (``server.presence``): the core counted
            # it connected and undid the rest (the period not started, :meth:`groups.DecisionGroup.connect`).
            # Its ``standin`` event is what says whose seat it is (a participant's ``finished``,
            # ``played_by_bots``, the percentiles: ``storage.bot_held_seats``), and a lobby's fill
            # already stored the status ``bot``: not storing it left a seat nobody played counted as
            # its human's, and here as a bot's (``playing``) for good, no bot ever to take it again.
            log.error("group %s: the game %s failed when a bot took the seat of %s (%s); the bot plays it all the same",
                      live.id, type(live.core).__name__, participant, reason, exc_info=exc)
            future = live.act(lambda: [record])
        self._bots[participant] = asyncio.get_running_loop().create_task(self._play(participant, reason))
        log.info("group %s: a bot plays for %s (%s)", live.id, participant, reason)
        return future

    def connected(self, participant: str) -> None:
        """The human is back: a dropout's bot stops at once (a fill seat's bot stays)."""
        self._disarm(participant)
        if self.playing.get(participant) != DROPOUT:
            return
        del self.playing[participant]
        bot = self._bots.pop(participant, None)
        if bot is not None:
            bot.cancel()
        if self.live.committed.phase is Phase.ENDED and self.live.spec.last_block:
            return  # back after the end: the bot finished for them, they stay dropped
        record = Event(STANDIN, {"participant": participant, "reason": DROPOUT, "playing": False}, None, NOBODY)
        self.live.act(lambda: [record]).add_done_callback(consume)
        log.info("group %s: %s is back; the bot stops", self.live.id, participant)

    def disconnected(self, participant: str) -> None:
        """The human left: in an online experiment, their dropout clock starts."""
        if self.dropout_after is not None and participant not in self.playing:
            self._arm(participant)

    def idle(self) -> bool:
        """Whether no bot plays here now (a finished bot's task is done; one that follows its
        participant to the next block runs on the router, without this group)."""
        return all(bot.done() for bot in self._bots.values())

    def stop(self) -> None:
        """This process no longer acts for the group: every bot and clock stops (nothing is stored)."""
        self._stopped = True
        for bot in self._bots.values():
            bot.cancel()
        self._bots.clear()
        for timer in self._away.values():
            timer.cancel()
        self._away.clear()

    def statuses(self, events: list[Event]) -> list[tuple[int, str]]:
        """The participants' status changes a write of ``events`` carries (see :mod:`server.storage.statuses`)."""
        changes: list[tuple[int, str]] = []
        ids = self.live.member_ids
        for ev in events:
            if ev.channel == STANDIN and isinstance(ev.payload, dict):
                who = ids[ev.payload["participant"]]
                if ev.payload["playing"]:
                    changes.append((who, "bot" if ev.payload["reason"] == FILL else "dropped"))
                else:
                    changes.append((who, "replaced"))
            elif ev.channel == STATE and ev.payload == PERIOD_END and self.live.spec.last_block:
                for code in self.live.core.members:
                    changes.append((ids[code], "dropped" if self.playing.get(code) == DROPOUT else "finished"))
        return changes

    # ------------------------------------------------------------------ dropouts

    def _takes_dropouts(self) -> bool:
        """Whether an absent member gets a bot now: the period runs or is paused, or a later block waits."""
        phase = self.live.committed.phase
        return phase in (Phase.RUNNING, Phase.PAUSED) or (phase is Phase.WAITING and self.live.block_index > 0)

    def _arm(self, participant: str, since: float | None = None) -> None:
        """The participant's dropout clock: ``dropout_after`` from ``since`` (epoch seconds), or from now."""
        self._disarm(participant)
        if self._stopped or self.dropout_after is None:
            return
        delay = self.dropout_after
        if since is not None:  # a restart or a takeover: the time away before it counts
            delay = max(0.0, since + self.dropout_after - self.live.now())
        loop = asyncio.get_running_loop()
        self._away[participant] = loop.call_later(delay, self._away_too_long, participant)

    def _disarm(self, participant: str) -> None:
        timer = self._away.pop(participant, None)
        if timer is not None:
            timer.cancel()

    def _away_too_long(self, participant: str) -> None:
        self._away.pop(participant, None)
        if self._stopped or participant in self.live.connections or participant in self.playing:
            return
        if self.live.committed.phase is Phase.ENDED:
            return
        if self._takes_dropouts():
            self.start(participant, DROPOUT).add_done_callback(consume)
        else:  # block 1's group still waits for its members (the lobby's business): look again later
            self._arm(participant)

    # ------------------------------------------------------------------ playing

    async def _play(self, participant: str, reason: str) -> None:
        """Decide at the bot's pace while the period runs; when it ends, go on to the next block."""
        live = self.live
        rng = random.Random(f"{live.experiment_code}:{live.id}:{participant}")
        pace = max(PACE, live.core.timing.rate_limit or 0.0)
        while self.playing.get(participant) == reason and not self._stopped:
            state = live.committed
            if state.phase is Phase.ENDED:
                if not live.spec.last_block and state.ended_at is not None:
                    self.router.spawn(self._follow(participant, reason, state.ended_at + live.spec.block_pause))
                return
            if state.phase is Phase.RUNNING:
                began = perf_counter()  # the game's code on the event loop, outside any action: timed as one is
                try:
                    decision = live.core.bot_decision(participant, dict(state.decisions), rng)
                except Exception as exc:
                    live.watch.timed(began, IN_BOT_DECISION)
                    live.watch.hook_failed(exc, IN_BOT_DECISION, "the bot holds still")
                    decision = None
                else:
                    live.watch.timed(began, IN_BOT_DECISION)
                if decision is not None:
                    try:
                        await live.receive(participant, DECISIONS, decision, None, bot=True)
                    except (GroupError, NotPersisted) as exc:  # the period ended meanwhile, the database is away
                        log.debug("group %s: the bot's decision for %s was not taken: %s", live.id, participant, exc)
            await asyncio.sleep(pace * rng.uniform(0.5, 1.5))

    async def _follow(self, participant: str, reason: str, due: float) -> None:
        """After the block pause, the bot takes the participant's seat in their next block's group."""
        await asyncio.sleep(max(0.0, due - self.router.clock()))
        if self.playing.get(participant) != reason:
            return  # the human came back meanwhile
        try:
            seat = await self.router.database.read(load_seat, participant, max(self.router.clock(), due))
            if seat is None or seat.group_id == self.live.id:
                return
            await self.router.stand_in(seat.group_id, participant, reason)
        except (LookupError, Unavailable, NotPersisted) as exc:  # the next group's authority loads it from the statuses
            log.warning("group %s: the bot of %s could not follow to the next block: %s", self.live.id, participant, exc)
