"""One group's period replayed from its stored events (:mod:`server.verify`): the results its log is due.

The replay has its own loop over the log (``state``, ``decisions``, ``period``, ``subperiod``) and
asks the game class only for ``initial_decision`` and ``payoff`` (and ``validate_decision`` for each
stored decision); what contradicts the game's rules or the log itself is a problem of the
:class:`server.findings.Report`.

Times: the core works on the server's clock rounded to microseconds, and the events store those
same times, so replaying the accruals in the core's order gives the same floats. Only a server
restarted mid-period reloads its deadline from a microsecond column, which can move the end of
the integral by one float step; the continuous-time check allows what one microsecond at each
time boundary can change (see :func:`_time_slack`), never more.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from groups import (
    DECISIONS,
    GAME_FAULT,
    GROUP_DECISIONS,
    PERIOD,
    PERIOD_END,
    PERIOD_START,
    STATE,
    SUBPERIOD,
    DecisionGroup,
    GroupError,
    add_flow,
    flow_score,
)

from .findings import Report, place
from .storedlog import StoredEvent, StoredGroup

#: stored times have microseconds
TIME_RESOLUTION = 1e-6


@dataclass(slots=True)
class Expected:
    decision: Any
    score: float
    slack: float = 0.0


@dataclass(slots=True)
class Replay:
    """What one group's log says: its phase, and the result due to each (member, subperiod)."""

    phase: str = "waiting"
    started_seq: int | None = None
    ended_seq: int | None = None
    #: the period was ended without its game, which failed (a ``game_fault`` with ``ended``):
    #: not played through, its sessions stay unfinished
    faulted: bool = False
    expected: dict[tuple[str, int | None], Expected] = field(default_factory=dict)


class _Clock:
    """The continuous-time integral, accrued at the same instants as the core accrues it.

    The core adds ``payoff * elapsed`` for each member whenever the decisions change, at a
    pause and at the end; a resume moves the start of the next stretch to the resume's time.
    """

    def __init__(self, game: DecisionGroup, members: list[str], start: float) -> None:
        self.game = game
        self.members = members
        self.flow = dict.fromkeys(members, 0.0)
        #: the flow's scale, as the core keeps it (:func:`groups.add_flow`)
        self.scale = 0
        self.at = start
        self.boundaries = 1
        self.largest = 0.0

    def accrue(self, until: float, decisions: Mapping[str, Any]) -> None:
        elapsed = until - self.at
        if elapsed > 0:
            rates = {p: float(self.game.payoff(p, decisions)) for p in self.members}
            self.largest = max(self.largest, *(abs(rate) for rate in rates.values()))
            self.scale = add_flow(self.flow, self.scale, rates, elapsed)
        self.at = until
        self.boundaries += 1

    def restart(self, at: float) -> None:
        self.at = at
        self.boundaries += 1


def _time_slack(clock: _Clock, length: float) -> float:
    """What one microsecond at each boundary of the integral can change in a score."""
    return 2 * clock.boundaries * clock.largest * TIME_RESOLUTION / length if length > 0 else 0.0


def replay(
    report: Report, game_class: type[DecisionGroup], config: dict[str, Any], group: StoredGroup, log: list[StoredEvent]
) -> Replay:
    """Replay one group's events; report what contradicts the game's rules or the log itself."""
    out = Replay()
    if not group.members:
        report.problems.append(f"{place(report.code, group=group.id)}: has no members")
        return out
    try:
        game = game_class(group.members, timing=group.timing, config=config)
    except GroupError as exc:
        report.problems.append(f"{place(report.code, group=group.id)}: the game refuses its members or config: {exc}")
        return out
    replayer = _Replayer(report, game, group, out)
    for ev in log:
        replayer.apply(ev)
    if out.phase != group.phase:
        replayer.problem(f"the stored phase is {group.phase!r} but the event log says {out.phase!r}")
    return out


class _Replayer:
    """One group's period rebuilt event by event, in ``seq`` order, as the core lived it."""

    def __init__(self, report: Report, game: DecisionGroup, group: StoredGroup, out: Replay) -> None:
        self.report, self.game, self.group, self.out = report, game, group, out
        self.timing = group.timing
        self.decisions: dict[str, Any] = {}
        self.clock: _Clock | None = None
        #: the period's deadline (moved by each pause), the current pause, and all pauses so far
        self.ends: float | None = None
        self.paused_at: float | None = None
        self.paused_for = 0.0
        self.started_at = 0.0
        self.ticked = 0
        #: the ``game_fault`` recorded with the period's end without the game, if it came
        self.fault: StoredEvent | None = None

    def problem(self, text: str, seq: int | None = None, participant: str | None = None) -> None:
        where = place(self.report.code, group=self.group.id, participant=participant, seq=seq)
        self.report.problems.append(f"{where}: {text}")

    def note(self, text: str, seq: int) -> None:
        self.report.notes.append(f"{place(self.report.code, group=self.group.id, seq=seq)}: {text}")

    def apply(self, ev: StoredEvent) -> None:
        who = None if ev.participant_id is None else self.group.codes.get(ev.participant_id)
        if ev.participant_id is not None and who is None:
            self.problem(f"a {ev.channel} event from participant id {ev.participant_id}, not a member", ev.seq)
        elif ev.channel == STATE and ev.value == PERIOD_START:
            self.period_start(ev)
        elif ev.channel == DECISIONS and who is not None:
            self.decision(ev, who)
        elif ev.channel == GROUP_DECISIONS and self.out.phase != "waiting":
            if ev.value != self.decisions:
                self.problem(f"group_decisions {ev.value!r} differ from the replayed {self.decisions!r}", ev.seq)
        elif ev.channel == PERIOD and isinstance(ev.value, dict):
            self.pause_or_resume(ev, ev.value.get("status"))
        elif ev.channel == SUBPERIOD and isinstance(ev.value, dict):
            self.subperiod(ev)
        elif ev.channel == GAME_FAULT and isinstance(ev.value, dict) and ev.value.get("ended"):
            self.fault = ev  # the period_end that follows it, in the same write, is not scored
        elif ev.channel == STATE and ev.value == PERIOD_END:
            self.period_end(ev)

    def period_start(self, ev: StoredEvent) -> None:
        """Every member starts from the game's initial decision; the integral starts now."""
        if self.out.phase != "waiting":
            self.problem(f"period_start while the period is {self.out.phase}", ev.seq)
            return
        self.out.phase, self.out.started_seq, self.started_at = "running", ev.seq, ev.at
        self.decisions = {p: self.game.initial_decision(p) for p in self.group.members}
        self.clock = _Clock(self.game, self.group.members, ev.at) if self.timing.continuous else None
        length = self.timing.period_length
        self.ends = None if length is None else ev.at + length

    def decision(self, ev: StoredEvent, who: str) -> None:
        """The flow so far is accrued with the old decisions, then the new one holds."""
        if self.out.phase != "running":
            self.problem(f"a decision stored while the period is {self.out.phase}", ev.seq, who)
            return
        if not _valid(self.game, who, ev.value):
            self.problem(f"decision {ev.value!r} is one the game refuses", ev.seq, who)
        if self.clock is not None:
            self.clock.accrue(ev.at, self.decisions)
        self.decisions[who] = ev.value

    def pause_or_resume(self, ev: StoredEvent, status: Any) -> None:
        """A pause accrues up to it and stops the clock; a resume moves the deadline by the pause."""
        if status == "paused" and self.out.phase == "running":
            if self.clock is not None:
                self.clock.accrue(ev.at, self.decisions)
            self.out.phase, self.paused_at = "paused", ev.at
        elif status == "running" and self.out.phase == "paused":
            self.resume(ev.at)
        else:
            self.problem(f"period {status!r} while the period is {self.out.phase}", ev.seq)

    def resume(self, at: float) -> None:
        if self.paused_at is not None:
            self.ends, self.paused_for = _resumed(self.ends, self.paused_for, self.paused_at, at)
        if self.clock is not None:
            self.clock.restart(at)
        self.out.phase, self.paused_at = "running", None

    def subperiod(self, ev: StoredEvent) -> None:
        """Each member scores the payoff of the replayed decisions / N (the snapshot must agree)."""
        index, snapshot, n = ev.value.get("index"), ev.value.get("group_decisions"), self.timing.num_subperiods
        if n is None or self.out.phase != "running":
            self.problem(f"a subperiod tick while the period is {self.out.phase} (num_subperiods {n})", ev.seq)
            return
        if index != self.ticked:
            self.problem(f"subperiod index {index!r}, expected {self.ticked}", ev.seq)
        if snapshot != self.decisions:
            self.problem(f"the subperiod snapshot {snapshot!r} differs from the replayed {self.decisions!r}", ev.seq)
        for p in self.group.members:
            score = float(self.game.payoff(p, dict(self.decisions))) / n
            self.out.expected[(p, self.ticked)] = Expected(self.decisions[p], score)
        self.ticked += 1

    def period_end(self, ev: StoredEvent) -> None:
        """A timed end counts up to its deadline however late the tick ran; an earlier
        ``period_end`` can only be the experimenter's, and counts up to when it came."""
        if self.out.phase == "waiting":  # the experimenter ended a group that never started
            self.out.phase, self.out.ended_seq = "ended", ev.seq
            self.note("ended before its period started", ev.seq)
            return
        if self.out.phase not in ("running", "paused"):
            self.problem(f"period_end while the period is {self.out.phase}", ev.seq)
            return
        if self.fault is not None:  # ended without the game: nothing more to score
            f, n = self.fault.value, self.timing.num_subperiods
            self.out.phase, self.out.ended_seq, self.out.faulted = "ended", ev.seq, True
            scored = f"after {self.ticked} of {n} subperiods" if n else "(continuous time: no result)"
            self.note(f"ended without its scores {scored}, its sessions unfinished: the game failed "
                      f"({f.get('hook')}: {f.get('error')}: {f.get('message')})", ev.seq)
            return
        if self.out.phase == "paused":  # ended by the experimenter during a pause
            self.resume(ev.at)
        timed = self.ends is not None and ev.at >= self.ends
        ended_at = self.ends if timed and self.ends is not None else ev.at
        self.out.phase, self.out.ended_seq = "ended", ev.seq
        if self.clock is not None:
            self.score_continuous(self.clock, ended_at)
        n = self.timing.num_subperiods
        if n is not None and self.ticked != n:
            if timed:
                self.problem(f"the period ended at its deadline after {self.ticked} of {n} subperiods", ev.seq)
            else:
                self.note(f"ended by the experimenter after {self.ticked} of {n} subperiods", ev.seq)

    def score_continuous(self, clock: _Clock, ended_at: float) -> None:
        """One result per member: the integral of its flow payoff / period_length."""
        clock.accrue(ended_at, self.decisions)
        length = self.timing.period_length or (ended_at - self.started_at - self.paused_for)
        slack = _time_slack(clock, length)
        for p in self.group.members:
            score = flow_score(clock.flow[p], clock.scale, length)
            self.out.expected[(p, None)] = Expected(self.decisions.get(p), score, slack)


def _resumed(ends: float | None, paused_for: float, paused_at: float, now: float) -> tuple[float | None, float]:
    """The deadline and total pause after a pause from ``paused_at`` to ``now`` (the core's order)."""
    pause = max(0.0, now - paused_at)
    return (None if ends is None else ends + pause), paused_for + pause


def _valid(game: DecisionGroup, participant: str, value: Any) -> bool:
    try:
        return bool(game.validate_decision(participant, value) == value)
    except GroupError:
        return False

