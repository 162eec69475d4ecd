"""The decision group: a state machine with no I/O and no clock of its own.

The shell feeds it actions (``connect``, ``disconnect``, ``receive``, ``tick``, ``start``,
``end``) each with an explicit ``now`` (seconds since the epoch) and gets back the events to
persist and send, in order. ``next_deadline()`` says when the shell must call ``tick`` next.

A game subclasses :class:`DecisionGroup` and overrides the hooks::

    class Chicken(DecisionGroup):
        name = "chicken"

        def validate_decision(self, participant, decision):
            if decision not in ("swerve", "straight"):
                raise InvalidDecision(f"expected 'swerve' or 'straight', got {shown(decision)}")
            return decision

        def initial_decision(self, participant):
            return "swerve"

        def payoff(self, participant, decisions):
            ...

Hooks may call :meth:`DecisionGroup.send` to add events to the action's output.

The class is made of three parts: what a game declares and the hooks it overrides
(:mod:`groups.hooks`), the period's clock and scores (:mod:`groups.period`), and here the
actions and a decision's way in. The names a game may import from this module before these
parts had modules of their own, those it defined and those it imported (``InvalidDecision`` in the
example above), are still here (``__all__``); synclab imports each from its home.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from .channels import (
    DECISIONS,
    GROUP_DECISIONS,
    PERIOD,
    PERIOD_END,
    PERIOD_START,
    RESERVED_CHANNELS,
    RESULT,
    STATE,
    SUBPERIOD,
)
from .exceptions import (
    ConfigError,
    GameFault,
    InvalidDecision,
    InvalidState,
    NotAMember,
    NotRunning,
    UnknownChannel,
)
from .faults import GAME_FAULT
from .messages import NOBODY, Event, Tick, new_event
from .period import Period
from .state import PAUSED_BY_DISCONNECT, PAUSED_BY_EXPERIMENTER, GroupState, Phase, Timing
from .values import MAX_AMOUNT, config_number, is_number, require_number, shown

__all__ = [
    "DECISIONS",
    "GROUP_DECISIONS",
    "MAX_AMOUNT",
    "PAUSED_BY_DISCONNECT",
    "PAUSED_BY_EXPERIMENTER",
    "PERIOD",
    "PERIOD_END",
    "PERIOD_START",
    "RESERVED_CHANNELS",
    "RESULT",
    "STATE",
    "SUBPERIOD",
    "DecisionGroup",
    "GameFault",
    "GroupState",
    "InvalidDecision",
    "Phase",
    "Tick",
    "Timing",
    "config_number",
    "is_number",
    "require_number",
]


class DecisionGroup(Period):
    """A group of participants who decide together; the base class of every game.

    Override the hooks (their defaults are in :class:`~groups.hooks.GameHooks`), not the
    actions. Class attributes a game sets:

    - ``name``: how experimenters name the game in ``POST /api/experiments``.
    - ``group_sizes``: the smallest and largest group (``None``: no upper bound).
    - ``channels``: extra client channels the game accepts; each needs ``on_<channel>``. None
      of :data:`RESERVED_CHANNELS` (refused by :meth:`check_channels`, as :meth:`send` refuses
      them).
    - ``config_schema`` and ``default_config``: the game's own settings (JSON Schema), checked
      by :meth:`check_config` when the experiment is created (:mod:`groups.schema` says which
      keywords are enforced), and by :meth:`validate_config` whenever a group is built.
    - ``pause_when_disconnected``: ``True`` stops the period's clock while a member is away
      (default ``False``: the period runs on).
    - ``title``: what the participant page calls the game (default: its name in words).
    - ``view``: the participant page's view of the game, an ES module file named relative to
      the Python file of the class that declares ``view`` (a subclass that inherits it is shown
      its parent's; served at ``/p/{code}/view.js``; see the README's guide). Without one the
      page shows a generic view.
    """

    def __init__(
        self,
        members: Sequence[str],
        *,
        timing: Timing | None = None,
        config: Mapping[str, Any] | None = None,
        state: GroupState | None = None,
    ) -> None:
        if not members:
            raise ConfigError("members", "a group needs at least one member")
        if len(set(members)) != len(members):
            raise ConfigError("members", f"members must be distinct, got {shown(list(members))}")
        self.check_group_size(len(members))
        self.members: tuple[str, ...] = tuple(members)
        self.timing = timing or Timing()
        self.config: dict[str, Any] = self.validate_config(config or {})
        self.state = state.copy() if state is not None else GroupState()
        self.connected: set[str] = set()
        self.now: float = 0.0
        self._outbox: list[Event] = []

    # ------------------------------------------------------------------ for the shell

    @property
    def carried(self) -> bool:
        """Whether a refused action left events that fell due before it (see :meth:`take_carried`)."""
        return bool(self._outbox)

    def take_carried(self) -> list[Event]:
        """The events a refused action applied before it failed, taken out; nothing more is applied.

        (``tick`` would return them too, but first apply what is due again: after a game's fault
        that is the very step that failed.)"""
        return self._flush()

    # ------------------------------------------------------------------ actions
    #
    # Every action first applies what fell due before ``now`` (a subperiod tick, the period's
    # end, a rate-limited broadcast), so a decision that arrives after a deadline never lands
    # in the snapshot before it. A refused action raises and adds nothing of its own; what it
    # applied first stays in the output of the next action.

    def connect(self, participant: str, now: float) -> list[Event]:
        """A member's connection opened; starts the period once every member is here.

        The member counts as connected even when the game fails on what their arrival makes
        (a hook raises: ``initial_decision``, ``when_all_players_ready``): the rest is undone
        (:meth:`_all_or_nothing`, the period not started) and the failure raised."""
        self._member(participant)
        self.connected.add(participant)  # before what is due: a game failing there fails no arrival
        self._begin(participant, now)
        with self._all_or_nothing():
            everyone = self.connected >= set(self.members)
            if self.state.phase is Phase.WAITING and everyone:
                self._start_period()
            elif self.state.phase is Phase.PAUSED and self.state.paused_by == PAUSED_BY_DISCONNECT and everyone:
                self._resume()
        return self._flush()

    def disconnect(self, participant: str, now: float) -> list[Event]:
        """A member's connection closed; pauses the period if the game says so.

        The member counts as gone even when the game fails on it (``when_player_disconnects``,
        or the payoff the pause accrues): the rest is undone and the failure raised."""
        self._member(participant)
        self.connected.discard(participant)
        self._begin(participant, now)
        with self._all_or_nothing():
            self.when_player_disconnects(participant)
            if self.pause_when_disconnected and self.state.phase is Phase.RUNNING:
                self._pause(PAUSED_BY_DISCONNECT)
        return self._flush()

    def start(self, now: float) -> list[Event]:
        """Start the period now, whoever is connected (the experimenter forces it). A game that
        fails on the start leaves the group waiting, as it was (the failure raised)."""
        self._begin(None, now)
        self._expect("start", Phase.WAITING)
        with self._all_or_nothing():
            self._start_period()
        return self._flush()

    def end(self, now: float) -> list[Event]:
        """End the period now (the experimenter ends it); a no-op once ended."""
        self._begin(None, now)
        if self.state.phase is not Phase.ENDED:
            self._end_period(None)
        return self._flush()

    def end_faulted(self, now: float, fault: Mapping[str, Any]) -> list[Event]:
        """End the period now without calling any of the game's hooks: its game failed (``fault``,
        what :func:`groups.faults.describe_fault` says of it, recorded as a ``game_fault`` event).

        Nothing due is applied first (that would ask the game again), and the period ends without
        the scores the game cannot give: results already made stay (each scored subperiod), no
        subperiod due is scored, and in continuous time the period's result is not made (its
        flow, which the game could not finish, is dropped). The period ends ``now``, or at its
        deadline if that is past. A no-op once ended.
        """
        self.now = now  # not _begin(): its catch-up would run the game again
        state = self.state
        if state.phase is Phase.ENDED:
            return self._flush()
        self._outbox.append(Event(GAME_FAULT, {**fault, "ended": True}, None, NOBODY))
        if state.broadcast_due:  # the group's last word is the latest decisions
            self._broadcast()
        if state.phase is Phase.PAUSED:
            self._resume_clock()
        state.phase = Phase.ENDED
        state.ended_at = now if state.ends_at is None or now < state.ends_at else state.ends_at
        if state.flow:  # none of it is scored: what the page shows as earned is what is stored
            state.flow = dict.fromkeys(state.flow, 0.0)
            state.flow_scale = 0
        state.flow_at = None
        self._outbox.append(Event(STATE, PERIOD_END))
        return self._flush()

    def pause(self, now: float) -> list[Event]:
        """Stop the period's clock (the experimenter pauses it). A game that fails on it (the
        payoff the pause accrues) leaves the period running, as it was (the failure raised)."""
        self._begin(None, now)
        self._expect("pause", Phase.RUNNING)
        with self._all_or_nothing():
            self._pause(PAUSED_BY_EXPERIMENTER)
        return self._flush()

    def resume(self, now: float) -> list[Event]:
        """Restart a paused period's clock; every later deadline moves by the pause's length."""
        self._begin(None, now)
        self._expect("resume", Phase.PAUSED)
        with self._all_or_nothing():
            self._resume()
        return self._flush()

    def receive(self, participant: str, channel: str, payload: Any, now: float) -> list[Event]:
        """A frame from a member on ``channel``; refused frames raise and change nothing."""
        mark = self._begin(participant, now)
        try:
            if channel == DECISIONS:
                self._decide(participant, payload)
                return self._flush()
            if channel not in self.channels or channel in RESERVED_CHANNELS:
                # (a reserved one too: a game of an experiment created before the names were
                # reserved may still declare one, and a member must not forge the core's events)
                accepted = sorted({DECISIONS, *(c for c in self.channels if c not in RESERVED_CHANNELS)})
                raise UnknownChannel(f"expected a channel in {accepted}, got {shown(channel)}")
            handler = getattr(self, f"on_{channel}", None)
            if handler is None:
                raise UnknownChannel(f"the game declares {shown(channel)} but has no on_{channel}")
            self._outbox.append(Event(channel, payload, participant, NOBODY))
            with self._all_or_nothing():  # what the handler changed before it raised is put back
                handler(participant, payload)
        except BaseException:
            self._refuse(mark)
            raise
        return self._flush()

    def tick(self, now: float) -> list[Event]:
        """Apply everything due at ``now``, in order: subperiod ticks, then the period's end.

        A late call applies every tick it missed; deadlines stay where they were scheduled.
        """
        self._begin(None, now)
        return self._flush()

    def restore(self, state: GroupState) -> None:
        """Return to an earlier snapshot (after a failed commit); connections are kept."""
        self.state = state.copy()
        self._outbox.clear()

    # ------------------------------------------------------------------ internals

    def _begin(self, participant: str | None, now: float) -> int:
        """Start an action at ``now``: apply what is due; returns where the action's own output starts."""
        if participant is not None and participant not in self.members:
            self._member(participant)  # (raises)
        self.now = now
        if self.state.phase is Phase.RUNNING:  # (at every decision: the one look _catch_up begins with, first)
            due = self.next_deadline()
            if due is not None and not now < due:  # (as _catch_up asks it)
                self._catch_up()
        return len(self._outbox)

    def _member(self, participant: str) -> None:
        if participant not in self.members:
            raise NotAMember(f"expected a member of {list(self.members)}, got {shown(participant)}")

    @contextlib.contextmanager
    def _all_or_nothing(self) -> Iterator[None]:
        """An action's own step, after what fell due before it: should the game fail in it (a hook
        raises, or gives what the core refuses), its state and output are put back as they were
        before the step, and the failure raised. What fell due stays (``carried``); what the game
        keeps of its own outside :attr:`state` is the game's. A copy of the state: for the
        actions that are rare (arrivals, departures, the experimenter's, a game's own channel), not a decision's."""
        mark, saved = len(self._outbox), self.state.copy()
        try:
            yield
        except BaseException:
            self.state = saved
            del self._outbox[mark:]
            raise

    def _refuse(self, mark: int) -> None:
        del self._outbox[mark:]

    def _expect(self, action: str, phase: Phase) -> None:
        if self.state.phase is not phase:
            raise InvalidState(f"{action}: the group is {self.state.phase.value}, not {phase.value}")

    def _flush(self) -> list[Event]:
        out, self._outbox = self._outbox, []
        return out

    def _decide(self, participant: str, decision: Any) -> None:
        if self.state.phase is not Phase.RUNNING:
            raise NotRunning(
                f"decisions are accepted while the period runs; the group is {self.state.phase.value}"
            )
        value = self.validate_decision(participant, decision)
        self._accrue()
        state, limit = self.state, self.timing.rate_limit
        state.decisions[participant] = value
        self._outbox.append(new_event(Event, (DECISIONS, value, participant, NOBODY, None)))  # Event(DECISIONS, …)
        if limit is None or state.broadcast_at is None or self.now >= state.broadcast_at + limit:
            self._broadcast()
        else:
            state.broadcast_due = True
