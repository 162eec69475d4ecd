"""A group's period: its clock, its broadcasts and its scores.

:class:`Period` is the part of :class:`~groups.DecisionGroup` that the actions (:mod:`groups.group`)
apply: when ``tick`` is due next (absolute deadlines, moved by pauses), what falls due before an
action (a rate-limited broadcast, a subperiod's tick, the period's end), starting, pausing,
resuming and ending the period, and scoring it: each subperiod's snapshot, or in continuous time
the integral of each member's flow payoff. It asks the game's hooks (:mod:`groups.hooks`) for
the initial decisions and the payoffs, and checks what they give.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from .channels import GROUP_DECISIONS, PERIOD, PERIOD_END, PERIOD_START, RESULT, STATE, SUBPERIOD
from .exceptions import GameFault, InvalidState
from .hooks import GameHooks
from .messages import Event, Tick, new_event
from .state import GroupState, Phase, add_flow, flow_score
from .values import is_number, shown


class Period(GameHooks):
    """A group's period: its deadlines, broadcasts and scores (see the module's docstring)."""

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
        # (asked before and after every action: _subperiods_left and _broadcast_deadline, inlined)
        n = self.timing.num_subperiods
        scheduled = state.ends_at if n is None or state.subperiod >= n else self.subperiod_deadline(state.subperiod + 1)
        if state.broadcast_due:
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
        flow, scale = {participant: state.flow.get(participant, 0.0)}, state.flow_scale
        if state.phase is Phase.RUNNING and state.flow_at is not None and now > state.flow_at:
            rate = self._finite(self.payoff(participant, state.decisions), participant, "payoff")
            scale = add_flow(flow, scale, {participant: rate}, now - state.flow_at)
        length = self.timing.period_length or (
            (state.ended_at if state.ended_at is not None else now) - state.started_at - state.paused_for
        )
        return flow_score(flow[participant], scale, length)

    # ------------------------------------------------------------------ internals

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

    def _broadcast(self) -> None:
        state = self.state
        state.broadcast_at = self.now
        state.broadcast_due = False
        # Event(GROUP_DECISIONS, self.group_decisions), at every decision: the copy and the event made directly
        self._outbox.append(new_event(Event, (GROUP_DECISIONS, state.decisions.copy(), None, None, None)))

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
            state.flow_scale = 0
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
        if type(rates) is dict and tuple(rates) == self.members:
            # at every decision: the common case, the members in their order and nothing else (as
            # the copy below is made), a finite float each: looked at cheaply, given as it is (the
            # core keeps none of it)
            for rate in rates.values():
                if type(rate) is not float or rate - rate != 0.0:  # (inf - inf and nan - nan are nan)
                    break
            else:
                return rates
        hook = "payoff" if type(self).payoffs is GameHooks.payoffs else "payoffs"
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
                score = flow_score(state.flow.get(p, 0.0), state.flow_scale, length)
                self._result(p, None, state.decisions.get(p), score)
        tick = None if due is None else Tick(PERIOD_END, 0, due, self.now)
        self._outbox.append(Event(STATE, PERIOD_END, tick=tick))

    def _result(self, participant: str, subperiod: int | None, decision: Any, score: float) -> None:
        payload = {"subperiod": subperiod, "decision": decision, "score": score}
        self._outbox.append(Event(RESULT, payload, None, frozenset((participant,))))

    def _accrue(self, until: float | None = None) -> None:
        """Continuous time: add each member's flow payoff since ``flow_at`` to its integral."""
        state = self.state
        if state.flow_at is None or self.timing.num_subperiods is not None or state.phase is not Phase.RUNNING:
            return  # (not continuous: Timing.continuous, a property, inlined at every decision)
        until = self.now if until is None else until
        elapsed = until - state.flow_at
        if elapsed > 0:
            state.flow_scale = add_flow(state.flow, state.flow_scale, self._rates(state.decisions), elapsed)
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


def _ms(epoch: float | None) -> int | None:
    """Seconds since the epoch as whole milliseconds, the unit of times in a frame."""
    return None if epoch is None else math.floor(epoch * 1000 + 0.5)
