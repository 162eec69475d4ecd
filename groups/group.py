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
"""

from __future__ import annotations

import copy
import enum
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

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
from .messages import NOBODY, Event, Tick, channel_problem
from .schema import check
from .values import is_number, shown

DECISIONS = "decisions"
GROUP_DECISIONS = "group_decisions"
STATE = "state"
SUBPERIOD = "subperiod"
RESULT = "result"
PERIOD = "period"
PERIOD_START = "period_start"
PERIOD_END = "period_end"
#: the channels synclab gives a meaning to, which a game may neither send on nor declare: the
#: core's events (above, and ``game_fault``), the server's own records (an experimenter's
#: ``control``, a stand-in's ``standin``, the ``lobby``'s release) and what the server says on a
#: participant's socket (``hello``, ``ack``, ``error``, ``ping``, ``experiment``, ``lobby``). A
#: game's event on one would be stored, replayed and shown as synclab's own: ``state``
#: ``period_end`` as the period's end, ``result`` as a score, ``ack`` as a member's frame stored.
RESERVED_CHANNELS: frozenset[str] = frozenset({
    DECISIONS, GROUP_DECISIONS, STATE, SUBPERIOD, RESULT, PERIOD, GAME_FAULT,
    "control", "standin", "lobby",  # server.control.CONTROL, server.standins.STANDIN, server.presence.LOBBY
    "hello", "ack", "error", "ping", "experiment",  # server.connection, server.routing.EXPERIMENT
})
#: who paused a period: the experimenter, or a member's disconnect (see ``pause_when_disconnected``)
PAUSED_BY_EXPERIMENTER = "experimenter"
PAUSED_BY_DISCONNECT = "disconnect"


class Phase(enum.Enum):
    """Where a group is in its period."""

    WAITING = "waiting"  # not every member has connected yet
    RUNNING = "running"
    PAUSED = "paused"  # the clock is stopped; deadlines move by the pause's length
    ENDED = "ended"


@dataclass(frozen=True, slots=True)
class Timing:
    """A block's clock settings: ``period_length`` in seconds (``None``: no end)."""

    period_length: float | None = None
    num_subperiods: int | None = None
    rate_limit: float | None = None

    def __post_init__(self) -> None:
        if self.period_length is not None and not _positive(self.period_length):
            raise ConfigError("period_length", f"expected a number > 0, got {shown(self.period_length)}")
        if self.num_subperiods is not None and (
            isinstance(self.num_subperiods, bool)
            or not isinstance(self.num_subperiods, int)
            or self.num_subperiods < 1
        ):
            raise ConfigError(
                "num_subperiods", f"expected an integer >= 1 or null, got {shown(self.num_subperiods)}"
            )
        if self.num_subperiods is not None and self.period_length is None:
            raise ConfigError("num_subperiods", "subperiods need a period_length")
        if self.rate_limit is not None and not _positive(self.rate_limit):
            raise ConfigError("rate_limit", f"expected a number > 0 or null, got {shown(self.rate_limit)}")

    @property
    def continuous(self) -> bool:
        """Scored once per period by the time-weighted flow payoff (no subperiods)."""
        return self.num_subperiods is None


def _positive(value: object) -> bool:
    return is_number(value) and value > 0  # type: ignore[operator]


@dataclass(slots=True)
class GroupState:
    """Everything about a group that is persisted and restored (a snapshot is a copy)."""

    phase: Phase = Phase.WAITING
    decisions: dict[str, Any] = field(default_factory=dict)
    started_at: float | None = None
    #: when the period ends: ``started_at + paused_for + period_length``
    ends_at: float | None = None
    ended_at: float | None = None
    #: how many subperiods have been ticked (0 .. num_subperiods)
    subperiod: int = 0
    #: game-specific values; kept JSON-serialisable by the game
    vars: dict[str, Any] = field(default_factory=dict)
    #: the current pause: since when, and who asked for it
    paused_at: float | None = None
    paused_by: str | None = None
    #: seconds the period has been paused in all (every deadline moves by it)
    paused_for: float = 0.0
    #: continuous time: the integral of each member's flow payoff up to ``flow_at``
    flow: dict[str, float] = field(default_factory=dict)
    flow_at: float | None = None
    #: rate limit: when ``group_decisions`` was last broadcast, and whether a newer one waits
    broadcast_at: float | None = None
    broadcast_due: bool = False
    #: with subperiods: each member's score so far in this period (the sum of its results)
    earned: dict[str, float] = field(default_factory=dict)

    def copy(self) -> GroupState:
        # field by field, not through __init__'s fifteen keywords: a copy is made at every action
        new = object.__new__(GroupState)
        new.phase = self.phase
        new.decisions = dict(self.decisions)
        new.started_at = self.started_at
        new.ends_at = self.ends_at
        new.ended_at = self.ended_at
        new.subperiod = self.subperiod
        new.vars = copy.deepcopy(self.vars) if self.vars else {}
        new.paused_at = self.paused_at
        new.paused_by = self.paused_by
        new.paused_for = self.paused_for
        new.flow = dict(self.flow)
        new.flow_at = self.flow_at
        new.broadcast_at = self.broadcast_at
        new.broadcast_due = self.broadcast_due
        new.earned = dict(self.earned)
        return new

    def clock(self, *, copied: bool = True) -> dict[str, Any]:
        """The timing fields beyond phase and period, as JSON (the shell stores them as one value).

        ``copied=False`` puts this state's own ``flow`` and ``earned`` in it, not copies: for a
        snapshot that nothing changes any more (the shell stores each action's snapshot so)."""
        return {
            "paused_at": self.paused_at,
            "paused_by": self.paused_by,
            "paused_for": self.paused_for,
            "flow": dict(self.flow) if copied else self.flow,
            "flow_at": self.flow_at,
            "broadcast_at": self.broadcast_at,
            "broadcast_due": self.broadcast_due,
            "earned": dict(self.earned) if copied else self.earned,
        }

    def set_clock(self, stored: Mapping[str, Any] | None) -> None:
        """The inverse of :meth:`clock`."""
        stored = stored or {}
        self.paused_at = stored.get("paused_at")
        self.paused_by = stored.get("paused_by")
        self.paused_for = float(stored.get("paused_for") or 0.0)
        self.flow = {str(k): float(v) for k, v in (stored.get("flow") or {}).items()}
        self.flow_at = stored.get("flow_at")
        self.broadcast_at = stored.get("broadcast_at")
        self.broadcast_due = bool(stored.get("broadcast_due"))
        self.earned = {str(k): float(v) for k, v in (stored.get("earned") or {}).items()}


class DecisionGroup:
    """A group of participants who decide together; the base class of every game.

    Override the hooks, not the actions. Class attributes a game sets:

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

    name: ClassVar[str] = ""
    group_sizes: ClassVar[tuple[int, int | None]] = (1, None)
    channels: ClassVar[frozenset[str]] = frozenset()
    config_schema: ClassVar[dict[str, Any]] = {"type": "object", "properties": {}}
    default_config: ClassVar[dict[str, Any]] = {}
    #: when a member disconnects mid-period, stop the clock until every member is back
    pause_when_disconnected: ClassVar[bool] = False
    #: the participant page's view: an ES module, relative to the file of the class that sets it
    view: ClassVar[str | None] = None
    #: what the participant page calls the game (default: its name in words)
    title: ClassVar[str] = ""

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

    # ------------------------------------------------------------------ game hooks

    @classmethod
    def validate_config(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        """Return the complete config (defaults filled in) or raise :class:`ConfigError`.

        The base refuses a key not in ``default_config`` and fills in the defaults; an override
        calls it first, then checks what it needs. It runs every time a group is built, also
        from what the database holds. ``config_schema`` is not checked here but in
        :meth:`check_config`, when a config comes in.
        """
        return _with_defaults(cls, config)

    @classmethod
    def check_config(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        """A config that comes in (an experiment being created): the complete config, or
        :class:`ConfigError`.

        A key not in ``default_config`` is refused, the config with the defaults filled in must
        fit ``config_schema`` (the keywords :mod:`groups.schema` knows; the others are ignored),
        then :meth:`validate_config` has its say. A stored config is never checked against the
        schema again: an experiment created before its game's schema said more stays playable.
        """
        check(cls.config_schema, _with_defaults(cls, config))
        return cls.validate_config(config)

    @classmethod
    def check_channels(cls) -> None:
        """Raise :class:`ConfigError` unless each of ``channels`` can name a channel of the
        game's own: a non-empty string of at most :data:`~groups.MAX_CHANNEL_LENGTH` characters
        (a frame on a longer one could not be stored), none of :data:`RESERVED_CHANNELS` (its
        frames would be taken for synclab's own events). Checked when an experiment is created,
        not when a stored group is built: an experiment stored before stays playable."""
        for channel in sorted(cls.channels, key=repr):
            problem = _game_channel_problem(channel)
            if problem is not None:
                raise ConfigError("channels", f"{cls.name or cls.__name__} declares a channel it cannot take: {problem}")

    @classmethod
    def check_group_size(cls, size: int) -> None:
        """Raise :class:`ConfigError` unless the game is played in groups of ``size``."""
        low, high = cls.group_sizes
        if size < low or (high is not None and size > high):
            if low == high:
                expected = f"exactly {low}"
            elif high is None:
                expected = f"at least {low}"
            else:
                expected = f"{low} to {high}"
            raise ConfigError(
                "group_size", f"{cls.name or cls.__name__} is played by {expected} members, got {size}"
            )

    def role(self, participant: str) -> str | None:
        """The participant's role in the group, shown in ``hello`` (default: none). A string; the
        server shows none (null) when this raises or gives what JSON cannot hold, and logs it."""
        return None

    def initial_decision(self, participant: str) -> Any:
        """Each member's decision when the period starts."""
        return None

    def validate_decision(self, participant: str, decision: Any) -> Any:
        """Return the decision to store, or raise :class:`InvalidDecision`."""
        return decision

    def payoff(self, participant: str, decisions: Mapping[str, Any]) -> float:
        """The flow payoff of ``participant`` when the group's decisions are ``decisions``."""
        return 0.0

    def payoffs(self, decisions: Mapping[str, Any]) -> dict[str, float]:
        """Every member's flow payoff at once, as :meth:`payoff` gives each (the default asks it
        for each member). A game whose payoffs share a term (a sum of all decisions, say) may
        compute it once here; the values must be exactly :meth:`payoff`'s, which ``verify`` uses."""
        return {p: self.payoff(p, decisions) for p in self.members}  # each checked by the core

    def bot_decision(self, participant: str, decisions: Mapping[str, Any], rng: random.Random) -> Any:
        """What a simulated participant (``synclab bots``) sends next, or ``None`` to send nothing now.

        ``decisions`` is the group's current decisions as the bot knows them (its own latest
        included); ``rng`` is the bot's only source of randomness. Called while the period runs,
        at the bot's own pace; a returned value must pass :meth:`validate_decision`. The default
        holds still: a game without a strategy is played by bots that connect and never decide.
        """
        return None

    def when_all_players_ready(self) -> None:
        """Runs exactly once, when the period starts (decisions are already initialised)."""

    def when_player_disconnects(self, participant: str) -> None:
        """Runs when a member's last connection closes."""

    # ------------------------------------------------------------------ for hooks

    def send(self, channel: str, payload: Any, *, to: Sequence[str] | None = None) -> None:
        """Broadcast ``payload`` on ``channel`` to the group (or to the members in ``to``).

        ``channel`` is a non-empty string of at most :data:`~groups.MAX_CHANNEL_LENGTH` (64)
        characters, what the database stores, and none of :data:`RESERVED_CHANNELS` (``state``,
        ``result``, ``hello``…: stored and sent on one of them, the event would be taken for
        synclab's own): anything else raises :class:`GameFault` at once, and the action that
        called the hook fails as when the hook raises.
        """
        problem = _game_channel_problem(channel)
        if problem is not None:
            raise GameFault(f"{type(self).__name__}.send: {problem}")
        recipients = None if to is None else frozenset(to)
        if recipients is not None and not recipients <= set(self.members):
            raise NotAMember(f"send to {sorted(recipients - set(self.members))}: not members")
        self._outbox.append(Event(channel, payload, None, recipients))

    @property
    def group_decisions(self) -> dict[str, Any]:
        """The current decision of every member (a copy)."""
        return dict(self.state.decisions)

    @property
    def phase(self) -> Phase:
        return self.state.phase

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
        """A member's connection opened; starts the period once every member is here."""
        self._begin(participant, now)
        self.connected.add(participant)
        everyone = self.connected >= set(self.members)
        if self.state.phase is Phase.WAITING and everyone:
            self._start_period()
        elif self.state.phase is Phase.PAUSED and self.state.paused_by == PAUSED_BY_DISCONNECT and everyone:
            self._resume()
        return self._flush()

    def disconnect(self, participant: str, now: float) -> list[Event]:
        """A member's connection closed; pauses the period if the game says so."""
        self._begin(participant, now)
        self.connected.discard(participant)
        self.when_player_disconnects(participant)
        if self.pause_when_disconnected and self.state.phase is Phase.RUNNING:
            self._pause(PAUSED_BY_DISCONNECT)
        return self._flush()

    def start(self, now: float) -> list[Event]:
        """Start the period now, whoever is connected (the experimenter forces it)."""
        self._begin(None, now)
        self._expect("start", Phase.WAITING)
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
        state.flow_at = None
        self._outbox.append(Event(STATE, PERIOD_END))
        return self._flush()

    def pause(self, now: float) -> list[Event]:
        """Stop the period's clock (the experimenter pauses it)."""
        self._begin(None, now)
        self._expect("pause", Phase.RUNNING)
        self._pause(PAUSED_BY_EXPERIMENTER)
        return self._flush()

    def resume(self, now: float) -> list[Event]:
        """Restart a paused period's clock; every later deadline moves by the pause's length."""
        self._begin(None, now)
        self._expect("resume", Phase.PAUSED)
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

    def next_deadline(self) -> float | None:
        """When ``tick`` must be called next, or ``None`` when nothing is scheduled.

        Deadlines are absolute: subperiod ``k`` ends at ``started_at + paused_for + k *
        period_length / N`` (the last one is the period's end itself and comes before
        ``period_end``). A rate-limited broadcast that waits is due ``rate_limit`` after the
        last one.
        """
        state = self.state
        if state.phase is not Phase.RUNNING:
            return None
        scheduled = self.subperiod_deadline(state.subperiod + 1) if self._subperiods_left() else state.ends_at
        flush = self._broadcast_deadline()
        if flush is not None and (scheduled is None or flush < scheduled):
            return flush
        return scheduled

    def subperiod_deadline(self, k: int) -> float:
        """When subperiod ``k`` (1-based) of the running period ends."""
        n, length, start = self.timing.num_subperiods, self.timing.period_length, self.state.started_at
        if n is None or length is None or start is None:
            raise InvalidState("subperiod_deadline: the period has no subperiods or has not started")
        if k >= n and self.state.ends_at is not None:
            return self.state.ends_at
        return start + self.state.paused_for + length * k / n

    def earned(self, participant: str, now: float, state: GroupState | None = None) -> float:
        """``participant``'s score so far in this period, as its results will count it.

        With subperiods: the sum of its results so far. In continuous time: the integral of
        its flow payoff up to ``now`` (or the period's end) over ``period_length``. ``state``
        is another snapshot of this group to read (default: the current state). The flow since
        the last accrual asks :meth:`payoff`, checked as every accrual checks it: anything but a
        finite number is a :class:`GameFault` naming ``payoff`` (a NaN is no score, and no JSON).
        """
        state = self.state if state is None else state
        if not self.timing.continuous:
            return state.earned.get(participant, 0.0)
        if state.started_at is None:
            return 0.0
        flow = state.flow.get(participant, 0.0)
        if state.phase is Phase.RUNNING and state.flow_at is not None and now > state.flow_at:
            rate = self._finite(self.payoff(participant, state.decisions), participant, "payoff")
            flow += rate * (now - state.flow_at)
        length = self.timing.period_length or (
            (state.ended_at if state.ended_at is not None else now) - state.started_at - state.paused_for
        )
        return flow / length if length > 0 else 0.0

    def restore(self, state: GroupState) -> None:
        """Return to an earlier snapshot (after a failed commit); connections are kept."""
        self.state = state.copy()
        self._outbox.clear()

    # ------------------------------------------------------------------ internals

    def _begin(self, participant: str | None, now: float) -> int:
        """Start an action at ``now``: apply what is due; returns where the action's own output starts."""
        if participant is not None and participant not in self.members:
            raise NotAMember(f"expected a member of {list(self.members)}, got {shown(participant)}")
        self.now = now
        self._catch_up()
        return len(self._outbox)

    def _refuse(self, mark: int) -> None:
        del self._outbox[mark:]

    def _expect(self, action: str, phase: Phase) -> None:
        if self.state.phase is not phase:
            raise InvalidState(f"{action}: the group is {self.state.phase.value}, not {phase.value}")

    def _flush(self) -> list[Event]:
        out, self._outbox = self._outbox, []
        return out

    def _catch_up(self) -> None:
        now = self.now
        while self.state.phase is Phase.RUNNING:
            due = self.next_deadline()
            if due is None or now < due:
                return
            if due == self._broadcast_deadline():
                self._broadcast()
            elif self._subperiods_left():
                self._end_subperiod(due)
            else:
                self._end_period(due)

    def _decide(self, participant: str, decision: Any) -> None:
        if self.state.phase is not Phase.RUNNING:
            raise NotRunning(
                f"decisions are accepted while the period runs; the group is {self.state.phase.value}"
            )
        value = self.validate_decision(participant, decision)
        self._accrue()
        self.state.decisions[participant] = value
        self._outbox.append(Event(DECISIONS, value, participant, NOBODY))
        state, limit = self.state, self.timing.rate_limit
        if limit is None or state.broadcast_at is None or self.now >= state.broadcast_at + limit:
            self._broadcast()
        else:
            state.broadcast_due = True

    def _broadcast(self) -> None:
        self.state.broadcast_at = self.now
        self.state.broadcast_due = False
        self._outbox.append(Event(GROUP_DECISIONS, self.group_decisions))

    def _broadcast_deadline(self) -> float | None:
        state, limit = self.state, self.timing.rate_limit
        if not state.broadcast_due or limit is None or state.broadcast_at is None:
            return None
        return state.broadcast_at + limit

    def _start_period(self) -> None:
        state = self.state
        state.phase = Phase.RUNNING
        state.started_at = self.now
        length = self.timing.period_length
        state.ends_at = None if length is None else self.now + length
        state.decisions = {p: self.initial_decision(p) for p in self.members}
        if self.timing.continuous:
            state.flow = dict.fromkeys(self.members, 0.0)
            state.flow_at = self.now
        else:
            state.earned = dict.fromkeys(self.members, 0.0)
        self._outbox.append(Event(STATE, PERIOD_START))
        self._broadcast()
        self.when_all_players_ready()

    def _subperiods_left(self) -> bool:
        n = self.timing.num_subperiods
        return n is not None and self.state.subperiod < n

    def _end_subperiod(self, due: float) -> None:
        snapshot = self.group_decisions
        n = self.timing.num_subperiods or 1
        # scored first: a payoff that raises (or is no finite number) leaves the group as it was
        scores = {p: self._finite(self.payoff(p, snapshot), p, "payoff") / n for p in self.members}
        index = self.state.subperiod
        self.state.subperiod = index + 1
        tick = Tick(SUBPERIOD, index, due, self.now)
        self._outbox.append(Event(SUBPERIOD, {"index": index, "group_decisions": snapshot}, tick=tick))
        self._broadcast()
        for p, score in scores.items():
            self.state.earned[p] = self.state.earned.get(p, 0.0) + score
            self._result(p, index, snapshot[p], score)

    def _finite(self, value: Any, participant: str, hook: str) -> float:
        """A payoff as the core counts it; :class:`GameFault`, naming the game and ``hook`` (the
        method that gave it), for anything but a finite number."""
        if not is_number(value):  # (finite, and not a bool)
            raise GameFault(
                f"{type(self).__name__}.{hook} gave {shown(value)} for {shown(participant)}: a payoff must be a finite number",
                hook,
            )
        return float(value)

    def _rates(self, decisions: Mapping[str, Any]) -> dict[str, float]:
        """Every member's flow payoff (:meth:`payoffs`), each checked to be a finite number.

        A fault names the hook that gave the value to the core: ``payoffs`` when the game
        overrides it, else ``payoff`` (the base's ``payoffs`` only asks it for each member)."""
        rates = self.payoffs(decisions)
        if type(rates) is dict:  # at every decision: the common case, a finite float each, looked at cheaply
            checked: dict[str, float] = {}
            for p in self.members:
                rate = rates.get(p)
                if type(rate) is not float or rate - rate != 0.0:  # (inf - inf and nan - nan are nan)
                    break
                checked[p] = rate
            else:
                return checked
        hook = "payoff" if type(self).payoffs is DecisionGroup.payoffs else "payoffs"
        if not isinstance(rates, Mapping) or any(p not in rates for p in self.members):
            raise GameFault(
                f"{type(self).__name__}.payoffs gave {shown(rates)}: expected a payoff for each of {list(self.members)}",
                "payoffs",
            )
        return {p: self._finite(rates[p], p, hook) for p in self.members}

    def _end_period(self, due: float | None) -> None:
        """End the period: at its deadline ``due``, or now when the experimenter ends it."""
        state = self.state
        if self.timing.continuous and state.flow_at is not None and state.phase is not Phase.WAITING:
            self._rates(state.decisions)  # what the end will score, looked at before anything changes
        if state.broadcast_due:  # the group's last word is the latest decisions
            self._broadcast()
        if state.phase is Phase.PAUSED:
            self._resume_clock()
        ended_at = self.now if due is None else due  # a late tick ends the period when it was due
        self._accrue(ended_at)
        state.phase = Phase.ENDED
        state.ended_at = ended_at
        if self.timing.continuous and state.started_at is not None:
            length = self.timing.period_length or (ended_at - state.started_at - state.paused_for)
            for p in self.members:
                score = state.flow.get(p, 0.0) / length if length > 0 else 0.0
                self._result(p, None, state.decisions.get(p), score)
        tick = None if due is None else Tick(PERIOD_END, 0, due, self.now)
        self._outbox.append(Event(STATE, PERIOD_END, tick=tick))

    def _result(self, participant: str, subperiod: int | None, decision: Any, score: float) -> None:
        payload = {"subperiod": subperiod, "decision": decision, "score": score}
        self._outbox.append(Event(RESULT, payload, None, frozenset((participant,))))

    def _accrue(self, until: float | None = None) -> None:
        """Continuous time: add each member's flow payoff since ``flow_at`` to its integral."""
        state = self.state
        if not self.timing.continuous or state.flow_at is None or state.phase is not Phase.RUNNING:
            return
        until = self.now if until is None else until
        elapsed = until - state.flow_at
        if elapsed > 0:
            flow = state.flow
            for p, rate in self._rates(state.decisions).items():
                flow[p] = flow.get(p, 0.0) + rate * elapsed
        state.flow_at = until

    def _pause(self, by: str) -> None:
        state = self.state
        if state.broadcast_due:
            self._broadcast()
        self._accrue()
        state.phase = Phase.PAUSED
        state.paused_at = self.now
        state.paused_by = by
        self._outbox.append(Event(PERIOD, self._period("paused")))

    def _resume(self) -> None:
        self._resume_clock()
        self._outbox.append(Event(PERIOD, self._period("running")))

    def _resume_clock(self) -> None:
        state = self.state
        if state.paused_at is not None:
            pause = max(0.0, self.now - state.paused_at)
            state.paused_for += pause
            if state.ends_at is not None:
                state.ends_at += pause
        state.phase = Phase.RUNNING
        state.paused_at = None
        state.paused_by = None
        if state.flow_at is not None:
            state.flow_at = self.now

    def _period(self, status: str) -> dict[str, Any]:
        state = self.state
        return {
            "status": status,
            "paused_by": state.paused_by,
            "started_at": _ms(state.started_at),
            "ends_at": _ms(state.ends_at),
            "subperiod": state.subperiod if self.timing.num_subperiods else None,
            "num_subperiods": self.timing.num_subperiods,
        }


def _game_channel_problem(channel: object) -> str | None:
    """Why a game cannot name ``channel`` (in ``channels`` or in ``send``), ``None`` when it can:
    it cannot be stored (:func:`.channel_problem`), or synclab gives it a meaning."""
    problem = channel_problem(channel)
    if problem is None and channel in RESERVED_CHANNELS:
        reserved = "one synclab keeps for its own (groups.RESERVED_CHANNELS)"
        return f"expected a channel of the game's own, got {shown(channel)}, {reserved}"
    return problem


def _with_defaults(game: type[DecisionGroup], config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` with ``game``'s defaults filled in; :class:`ConfigError` for a key it does not take."""
    unknown = set(config) - set(game.default_config)
    if unknown:
        raise ConfigError(
            f"config.{sorted(unknown)[0]}",
            f"unknown setting; {game.name or game.__name__} takes {sorted(game.default_config)}",
        )
    return {**copy.deepcopy(game.default_config), **config}


def _ms(epoch: float | None) -> int | None:
    """Seconds since the epoch as whole milliseconds, the unit of times in a frame."""
    return None if epoch is None else math.floor(epoch * 1000 + 0.5)


#: the largest magnitude a bundled game takes for a payoff, an endowment or points, far beyond
#: any lab's: every sum of scores over an experiment's sessions then stays a finite float
MAX_AMOUNT = 1e9
def require_number(decision: Any, low: float, high: float) -> float:
    """A helper for ``validate_decision``: ``decision`` as a float in ``[low, high]``."""
    if not is_number(decision):
        raise InvalidDecision(f"expected a number in [{low}, {high}], got {shown(decision)}")
    value = float(decision)
    if not low <= value <= high:  # also refuses NaN
        raise InvalidDecision(f"expected a number in [{low}, {high}], got {shown(decision)}")
    return value


def config_number(
    value: Any, field: str, low: float = -MAX_AMOUNT, high: float = MAX_AMOUNT, *, above_low: bool = False
) -> float:
    """A helper for ``validate_config``: ``value`` as a float in ``[low, high]`` (``(low, high]``
    with ``above_low``), or :class:`ConfigError` naming ``field`` (``"config.endowment"``).

    The default bounds are :data:`MAX_AMOUNT` either way: bound every payoff and amount of a game,
    or a huge one makes scores, and the sums of scores, infinite.
    """
    opening = "(" if above_low else "["
    expected = f"expected a number in {opening}{low:g}, {high:g}]"
    if not is_number(value):
        raise ConfigError(field, f"{expected}, got {shown(value)}")
    number = float(value)
    if not (low < number if above_low else low <= number) or number > high:
        raise ConfigError(field, f"{expected}, got {shown(value)}")
    return number
