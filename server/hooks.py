"""A live group's game hooks that the server calls outside an action, and how every hook is watched.

The game's hooks run on the event loop: while one runs, every group of the process waits. An
action (:meth:`server.live.LiveGroup.act`) is timed as a whole; a hook the server calls alone (a
stand-in's ``bot_decision``, a hello's ``payoff`` and ``role``) is timed as one, and one that fails
is logged as a game failing on the members' frames is. :class:`HookWatch` keeps one group's
logs of both from flooding; :class:`Greeting` is what a new connection sees, whose score so far
and role are such hooks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from time import perf_counter
from typing import TYPE_CHECKING, Any

import orjson

from groups import STATE, DecisionGroup, GameFault, GroupState, Phase, shown

from .exceptions import Unstorable
from .storage import GroupSpec
from .throttle import LogThrottle
from .wire import encode, ms

# the group's logger: these lines are about the group, wherever their code lives
log = logging.getLogger("synclab.live")
#: seconds one action of a group may hold the event loop (the game's hooks, mostly) before it is
#: logged: every group of the process waits meanwhile
SLOW_ACTION = 0.05
#: seconds between two such logs of one group and kind (the slow ones between are counted in the next)
SLOW_LOG_EVERY = 5.0
#: the kinds of those logs: where the game held the loop. An action runs several hooks (not told
#: apart: timing each would cost at every decision); the others, one hook the server calls alone
IN_ACTION = "one action"
IN_BOT_DECISION = "bot_decision (a stand-in's decision)"
IN_HELLO_PAYOFF = "payoff (the score so far of a hello)"
IN_ROLE = "role (a member's role in a hello)"


def in_control(action: str) -> str:
    """The kind of a game's failure on the experimenter's ``action`` (``start``, ``pause``…), as
    :meth:`HookWatch.hook_failed` logs it: the action the game failed on, not one hook."""
    return f"the experimenter's {action}"


#: seconds between two log lines of one group's game failing in one such hook the server calls
#: alone, in one way (the failures between are counted in the next line)
HOOK_FAULTS_LOG_EVERY = 5.0
#: the (hook, exception type) pairs of a group kept at most; past it the oldest is forgotten (logged anew)
HOOK_FAULTS_KEPT = 16
#: seconds between two log lines of one group's game failing on members' frames in one way (the
#: failures between are counted in the next line)
FRAME_FAULTS_LOG_EVERY = 5.0
#: the (group, exception type) pairs kept at most; past it the oldest is forgotten (logged anew)
FRAME_FAULTS_KEPT = 10_000
#: seconds between two log lines of one group's writes refused as unstorable in one way (the game's
#: value, or the database's refusal): the ones between are counted in the next line
REFUSED_LOG_EVERY = 5.0

_frame_faults = LogThrottle(FRAME_FAULTS_LOG_EVERY, FRAME_FAULTS_KEPT)
# the line's logger since a participant's connection logged it, kept wherever it is logged now
_frame_log = logging.getLogger("synclab.connection")


def frame_failed(group_id: int, game: str, participant: str, exc: Exception) -> None:
    """Log that the game failed on a member's frame, where it ran (the member's connection may be
    on another worker, ``server.calls``): the first failure of its kind in a group with its
    traceback, then at most one line every :data:`FRAME_FAULTS_LOG_EVERY` s with the count of
    those not logged (a broken game fails on every decision of its members: a traceback each)."""
    kind = type(exc).__name__
    skipped = _frame_faults.due((group_id, kind), perf_counter())
    if skipped is None:
        return
    if skipped < 0:
        _frame_log.error("group %s: the game %s failed on a frame of %s", group_id, game, participant, exc_info=exc)
        return
    _frame_log.error(
        "group %s: the game %s failed on a frame of %s again: %s: %s (%d more such failures since the last line)",
        group_id, game, participant, kind, exc, skipped,
    )


class HookWatch:
    """One group's game, watched: where it held the event loop too long, where it failed."""

    def __init__(self, group_id: int, game_class: str, game: str) -> None:
        self.group_id = group_id
        #: the game's class and its name, as the log lines give them
        self._game_class = game_class
        self._game = game
        #: per kind (``IN_…``): when (``perf_counter``) the game was last logged slow, and how many
        #: slow ones were not logged since
        self._slow_hooks = LogThrottle(SLOW_LOG_EVERY, 4)
        #: per hook the server calls alone and exception type: the game's failures there, logged
        #: as :meth:`hook_failed` says
        self._hook_faults = LogThrottle(HOOK_FAULTS_LOG_EVERY, HOOK_FAULTS_KEPT)
        #: per way the group's writes were refused as unstorable: logged as :meth:`refused` says
        self._refused = LogThrottle(REFUSED_LOG_EVERY, 2)

    def slow(self, took: float, where: str = IN_ACTION) -> None:
        """The game held the event loop ``took`` seconds in ``where`` (one of the ``IN_…``):
        logged, at most every :data:`SLOW_LOG_EVERY` s for each kind."""
        more = self._slow_hooks.due(where, perf_counter())
        if more is None:
            return
        log.warning(
            "group %s: the game %s (%s) held the event loop %.0f ms in %s (over %.0f ms: every group "
            "of this process waited)%s; its hooks must be quick (docs/writing-a-game.md)",
            self.group_id, self._game_class, self._game, took * 1000, where, SLOW_ACTION * 1000,
            f"; {more} more since the last such warning" if more > 0 else "",
        )

    def timed(self, began: float, where: str) -> None:
        """A hook the server called outside an action (``where``, one of the ``IN_…``) ended; it
        began at ``began`` (``perf_counter``): logged as a slow action is, if it held the loop as long."""
        took = perf_counter() - began
        if took > SLOW_ACTION:
            self.slow(took, where)

    def hook_failed(self, exc: Exception, where: str, instead: str) -> None:
        """The game failed with ``exc`` in a hook the server called outside an action (``where``,
        one of the ``IN_…``), or on the experimenter's action (:func:`in_control`), and the server
        did ``instead``. Such a hook runs at every hello or at
        every decision of a stand-in: the first failure of a kind (hook and exception type) in a
        while is logged with its traceback (none for a :class:`groups.GameFault`: the core's
        refusal of what the hook gave, which its message names), then at most one line every
        :data:`HOOK_FAULTS_LOG_EVERY` s counting those since, as a game failing on the members'
        frames is (``server.connection``)."""
        kind = type(exc).__name__
        skipped = self._hook_faults.due((where, kind), perf_counter())
        if skipped is None:
            return
        game = f"the game {self._game_class} ({self._game})"
        if skipped < 0:
            log.error("group %s: %s failed in %s: %s: %s; %s", self.group_id, game, where, kind, exc, instead,
                      exc_info=None if isinstance(exc, GameFault) else exc)
            return
        log.error("group %s: %s failed in %s again: %s: %s; %s (%d more such failures since the last line)",
                  self.group_id, game, where, kind, exc, instead, skipped)


    def refused(self, exc: Unstorable) -> None:
        """A write of the group was refused as one that cannot be stored (``exc``), the group rolled
        back to what is stored: logged, naming what (:attr:`Unstorable.reason`), then at most one
        line every :data:`REFUSED_LOG_EVERY` s for each way (the game's value, or the database's
        refusal, which the exception's message tells apart), counting those since. A member's
        every frame may be refused so (a game keeping a set, say): a line each flooded the log."""
        skipped = self._refused.due(str(exc).partition(":")[0], perf_counter())
        if skipped is None:
            return
        log.error("group %s: a write of the game %s cannot be stored; refused, the group is back at its "
                  "last stored state: %s%s", self.group_id, self._game_class, exc.reason,
                  f" ({skipped} more such writes refused since the last line)" if skipped > 0 else "")


class Greeting:
    """What a new connection sees of its live group (a part of :class:`server.live.LiveGroup`)."""

    # what it reads of the group
    spec: GroupSpec
    id: int
    experiment_code: str
    game: str
    title: str
    block_index: int
    core: DecisionGroup
    committed: GroupState
    last_seq: int
    last_state: dict[str, Any] | None
    watch: HookWatch
    _clock: Callable[[], float]

    if TYPE_CHECKING:  # (server.presence.Presence)
        def lobby(self, arriving: str | None = None) -> dict[str, int] | None: ...

    def hello(self, participant: str) -> dict[str, Any]:
        """The whole committed state, for the first frame of a connection (and of a new block)."""
        state = self.committed
        period = None
        if state.started_at is not None:
            period = {
                "started_at": ms(state.started_at),
                "ends_at": None if state.ends_at is None else ms(state.ends_at),
                "subperiod": state.subperiod if self.core.timing.num_subperiods else None,
                "num_subperiods": self.core.timing.num_subperiods,
                "paused_for": state.paused_for,
                "ended_at": None if state.ended_at is None else ms(state.ended_at),
                "paused_at": None if state.paused_at is None else ms(state.paused_at),
            }
        now = self._clock()
        earned = self._earned(participant, now, state) if participant in self.core.members else 0.0
        return {
            "participant": participant,
            "experiment": self.experiment_code,
            "game": self.game,
            "title": self.title,
            "config": self.core.config,
            "group": self.id,
            "members": list(self.core.members),
            "role": self._role(participant),
            "block": self.block_index,
            "num_blocks": self.spec.num_blocks,
            "phase": state.phase.value,
            "group_decisions": dict(state.decisions) if state.phase is not Phase.WAITING else None,
            "period": period,
            "period_length": self.core.timing.period_length,
            # the block's timing before its period starts (``period`` is null until then)
            "num_subperiods": self.core.timing.num_subperiods,
            "bonus_points": self.spec.bonus_points,
            "block_pause": self.spec.block_pause,
            "earned": earned,
            "lobby": self.lobby(participant),
            # an online experiment (the join link): the final screen asks for the way back
            "online": self.spec.online is not None,
            "server_time": ms(now),
            "last_seq": self.last_seq,
        }

    def _earned(self, participant: str, now: float, state: GroupState) -> float:
        """The participant's score so far; up to the last accrual when the game fails on its payoff
        (a page that connects to a group whose game fails is shown its period all the same). The
        payoff is the game's code on the event loop, timed as an action is."""
        began = perf_counter()
        try:
            earned = self.core.earned(participant, now, state)
        except Exception as exc:
            self.watch.timed(began, IN_HELLO_PAYOFF)
            self.watch.hook_failed(exc, IN_HELLO_PAYOFF, "the hello shows the score up to the last accrual")
            return self.core.earned(participant, state.flow_at if state.flow_at is not None else now, state)
        self.watch.timed(began, IN_HELLO_PAYOFF)
        return earned

    def _role(self, participant: str) -> Any:
        """The participant's role for their hello; ``None`` (unknown, as a game without roles
        gives) when the game fails on it or gives what JSON cannot hold: the page works all the
        same. The role is the game's code on the event loop, timed as an action is."""
        began = perf_counter()
        try:
            role = self.core.role(participant)
        except Exception as exc:
            self.watch.timed(began, IN_ROLE)
            self.watch.hook_failed(exc, IN_ROLE, "the hello shows no role (null)")
            return None
        self.watch.timed(began, IN_ROLE)
        if role is None or type(role) is str:
            return role
        try:
            orjson.dumps(role)  # what the hello is encoded with, here and between the workers
        except TypeError:  # orjson.JSONEncodeError
            fault = GameFault(f"{type(self.core).__name__}.role gave {shown(role)} for {participant!r}: "
                              "a role must be JSON (a string, or None for none)", "role")
            self.watch.hook_failed(fault, IN_ROLE, "the hello shows no role (null)")
            return None
        return role

    def replay(self) -> list[str]:
        """Frames repeated to a new connection: the last ``state`` and the current decisions."""
        frames = []
        if self.last_state is not None:
            s = self.last_state
            frames.append(encode(STATE, s["value"], seq=s["seq"], ts=s["ts"]))
        if self.committed.phase is not Phase.WAITING:
            frames.append(encode("group_decisions", dict(self.committed.decisions)))
        return frames
