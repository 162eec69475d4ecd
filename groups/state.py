"""A group's values: where it is in its period, its block's clock settings, and its state.

:class:`Phase` is where a group is in its period, :class:`Timing` a block's clock settings
(refused when they make no sense), :class:`GroupState` everything about a group that is
persisted and restored; :class:`~groups.DecisionGroup` changes it, the shell stores it.
"""

from __future__ import annotations

import copy
import enum
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .exceptions import ConfigError
from .values import is_number, shown

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
    #: continuous time: the integral of each member's flow payoff up to ``flow_at``, scaled down
    #: by ``2 ** -(FLOW_STEP * flow_scale)`` (:func:`add_flow`: 0 unless it passed a float's range)
    flow: dict[str, float] = field(default_factory=dict)
    flow_at: float | None = None
    #: rate limit: when ``group_decisions`` was last broadcast, and whether a newer one waits
    broadcast_at: float | None = None
    broadcast_due: bool = False
    #: with subperiods: each member's score so far in this period (the sum of its results)
    earned: dict[str, float] = field(default_factory=dict)
    #: continuous time: how many steps of :data:`FLOW_STEP` bits ``flow`` is scaled down by
    flow_scale: int = 0

    def copy(self) -> GroupState:
        # field by field, not through __init__'s fifteen keywords: a copy is made at every action
        new = object.__new__(GroupState)
        new.phase = self.phase
        new.decisions = self.decisions.copy()  # (cheaper than dict(): a copy is made at every action)
        new.started_at = self.started_at
        new.ends_at = self.ends_at
        new.ended_at = self.ended_at
        new.subperiod = self.subperiod
        new.vars = copy.deepcopy(self.vars) if self.vars else {}
        new.paused_at = self.paused_at
        new.paused_by = self.paused_by
        new.paused_for = self.paused_for
        new.flow = self.flow.copy()
        new.flow_at = self.flow_at
        new.broadcast_at = self.broadcast_at
        new.broadcast_due = self.broadcast_due
        new.earned = self.earned.copy()
        new.flow_scale = self.flow_scale
        return new

    def clock(self, *, copied: bool = True) -> dict[str, Any]:
        """The timing fields beyond phase and period, as JSON (the shell stores them as one value).

        ``copied=False`` puts this state's own ``flow`` and ``earned`` in it, not copies: for a
        snapshot that nothing changes any more (the shell stores each action's snapshot so)."""
        clock = {
            "paused_at": self.paused_at,
            "paused_by": self.paused_by,
            "paused_for": self.paused_for,
            "flow": dict(self.flow) if copied else self.flow,
            "flow_at": self.flow_at,
            "broadcast_at": self.broadcast_at,
            "broadcast_due": self.broadcast_due,
            "earned": dict(self.earned) if copied else self.earned,
        }
        if self.flow_scale:  # (only then: a clock stored before it is the same)
            clock["flow_scale"] = self.flow_scale
        return clock

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
        self.flow_scale = int(stored.get("flow_scale") or 0)


#: bits a flow is scaled down by at each step (``GroupState.flow_scale``): exact, but for subnormals
FLOW_STEP = 64


def add_flow(flow: dict[str, float], scale: int, rates: Mapping[str, float], elapsed: float) -> int:
    """Each member's ``rate * elapsed`` added to its integral in ``flow``, which is kept scaled
    down by ``2 ** -(FLOW_STEP * scale)``; returns the scale after it. A sum that would pass a
    float's range scales every integral down one more step instead: a member's score is the
    time average of finite payoffs (:func:`flow_score`), a finite number, and a payoff of 1e308 a
    second for two seconds made its integral, and so its score, infinity. At scale 0 (any payoff
    short of that) it is ``flow + rate * elapsed``, as ever. (A decision's path: one test a member
    here, the scaling in :func:`_scaled_down`.)"""
    step = math.ldexp(elapsed, -FLOW_STEP * scale) if scale else elapsed
    for p, rate in rates.items():
        total = flow.get(p, 0.0) + rate * step
        if total - total != 0.0:  # past a float's range (inf - inf and nan - nan are nan)
            scale, step, total = _scaled_down(flow, scale, p, rate, elapsed)
        flow[p] = total
    return scale


def _scaled_down(flow: dict[str, float], scale: int, p: str, rate: float, elapsed: float) -> tuple[int, float, float]:
    """:func:`add_flow`'s sum for ``p`` that passed a float's range: every integral scaled down a
    step at a time (each divides by 2**64; a step or two) until it is finite; the scale, the step
    and ``p``'s new integral."""
    step, total = elapsed, math.inf
    for _ in range(64):
        scale += 1
        for q, value in flow.items():
            flow[q] = math.ldexp(value, -FLOW_STEP)
        step = math.ldexp(elapsed, -FLOW_STEP * scale)
        total = flow.get(p, 0.0) + rate * step
        if total - total == 0.0:
            break
    return scale, step, total


def flow_score(flow: float, scale: int, length: float) -> float:
    """A member's score in continuous time: its integral ``flow`` (scaled as :func:`add_flow` keeps
    it) over the period's ``length`` seconds. An average of finite payoffs, within a float's
    range; should rounding put it a hair past, it is the largest float of its sign."""
    if length <= 0:
        return 0.0
    try:
        return math.ldexp(flow / length, FLOW_STEP * scale)
    except OverflowError:
        return math.copysign(sys.float_info.max, flow)
