"""``synclab verify CODE``: recompute every result and session score from the event log.

The server scores inside the core (:mod:`groups.group`) while the period runs and stores the
results beside their ``result`` events. This module checks that after the fact, from the stored
events alone: it replays each group's log (``state``, ``decisions``, ``period``, ``subperiod``)
with its own loop, asks the game class only for ``initial_decision`` and ``payoff``, and
compares what it gets with the ``results`` and ``sessions`` rows. It also checks that ``seq``
runs 1..``experiments.last_seq`` without gaps or repeats.

Every finding is one line naming the experiment and, where it applies, the group, participant
and ``seq``. :func:`verify` returns them in a :class:`Report`; :func:`run_verify` is ``synclab verify``.

Times: the core works on the server's clock rounded to microseconds, and the events store those
same times, so replaying the accruals in the core's order gives the same floats. Only a server
restarted mid-period reloads its deadline from a microsecond column, which can move the end of
the integral by one float step; the continuous-time check allows what one microsecond at each
time boundary can change (see :func:`_time_slack`), never more.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson
from sqlalchemy import Engine, inspect, select
from sqlalchemy.engine import Connection

from groups import (
    DECISIONS,
    GAME_FAULT,
    GROUP_DECISIONS,
    PERIOD,
    PERIOD_END,
    PERIOD_START,
    RESULT,
    STATE,
    SUBPERIOD,
    DecisionGroup,
    GroupError,
    Timing,
    load_game,
)

from .exceptions import SchemaError, SynclabError
from .settings import Settings
from .storage import (
    blocks,
    events,
    experiments,
    groups,
    memberships,
    participants,
    reading,
    results,
    sessions,
    to_epoch,
)

#: relative tolerance of every score comparison (sums may be added up in another order)
REL_TOL = 1e-9
#: absolute tolerance, so that scores of 0 compare too
ABS_TOL = 1e-9
#: stored times have microseconds
TIME_RESOLUTION = 1e-6
#: the tables and columns this module reads (checked before reading, without writing anything)
_READS = (experiments, blocks, participants, groups, memberships, events, sessions, results)


class VerifyError(SynclabError):
    """Verification could not run: an unknown experiment, or a game that cannot be loaded."""


class UnknownExperiment(VerifyError):
    """No experiment has the code asked for."""


@dataclass
class Report:
    """What :func:`verify` checked and found. ``problems`` make it fail; ``notes`` do not."""

    code: str
    events: int = 0
    groups: int = 0
    sessions: int = 0
    unfinished_sessions: int = 0
    results: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}

    def summary(self) -> str:
        """The human report: one line per finding, then the counts and the verdict."""
        lines = [f"MISMATCH {p}" for p in self.problems] + [f"note: {n}" for n in self.notes]
        verdict = "OK" if self.ok else f"{len(self.problems)} mismatch{'es' if len(self.problems) != 1 else ''}"
        lines.append(
            f"synclab verify {self.code}: checked {self.events} events, {self.groups} groups, "
            f"{self.sessions} finished sessions ({self.unfinished_sessions} unfinished), "
            f"{self.results} results: {verdict}"
        )
        return "\n".join(lines)


# --------------------------------------------------------------------------- what is read


@dataclass(frozen=True, slots=True)
class _Event:
    seq: int
    at: float
    group_id: int | None
    participant_id: int | None
    channel: str
    value: Any


@dataclass(slots=True)
class _Group:
    id: int
    block_index: int
    phase: str
    timing: Timing
    bonus: float
    #: member codes in member order, and participant id -> code
    members: list[str] = field(default_factory=list)
    codes: dict[int, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Session:
    id: int
    code: str
    group_id: int
    started: bool
    finished: bool
    final_score: float


@dataclass(frozen=True, slots=True)
class _Result:
    session_id: int
    seq: int
    subperiod: int | None
    decision: Any
    score: float


@dataclass(slots=True)
class _Log:
    experiment: dict[str, Any]
    events: list[_Event]
    groups: list[_Group]
    sessions: list[_Session]
    results: list[_Result]


@contextlib.contextmanager
def _snapshot(engine: Engine) -> Iterator[Connection]:
    """One read transaction, so a running experiment is read at one point in time."""
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        elif engine.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN")  # pysqlite opens no transaction for reads by itself
        yield conn


def _check_schema(conn: Connection) -> None:
    """Raise :class:`SchemaError` when a table or column this module reads is missing."""
    stored = inspect(conn)
    for table in _READS:
        if not stored.has_table(table.name):
            raise SchemaError(f"the database has no table {table.name!r}: is DATABASE_URL a synclab database?")
        have = {c["name"] for c in stored.get_columns(table.name)}
        missing = [c.name for c in table.columns if c.name not in have]
        if missing:
            raise SchemaError(f"table {table.name!r} lacks {missing}: the database was made by an older synclab")


def _load(conn: Connection, code: str) -> _Log:
    experiment = conn.execute(select(experiments).where(experiments.c.code == code)).mappings().first()
    if experiment is None:
        raise UnknownExperiment(f"no experiment with code {code!r}")
    eid = experiment["id"]
    logged = [
        _Event(int(e["seq"]), to_epoch(e["timestamp"]) or 0.0, e["group_id"], e["participant_id"], e["channel"],
               e["value"])
        for e in conn.execute(
            select(events.c.seq, events.c.timestamp, events.c.group_id, events.c.participant_id,
                   events.c.channel, events.c.value)
            .where(events.c.experiment_id == eid)
            .order_by(events.c.seq)
        ).mappings()
    ]
    by_id: dict[int, _Group] = {}
    for g in conn.execute(
        select(groups.c.id, groups.c.phase, blocks.c.index.label("block_index"), blocks.c.period_length,
               blocks.c.num_subperiods, blocks.c.rate_limit, blocks.c.bonus_points)
        .join(blocks, blocks.c.id == groups.c.block_id)
        .where(groups.c.experiment_id == eid)
        .order_by(blocks.c.index, groups.c.index)
    ).mappings():
        timing = Timing(g["period_length"], g["num_subperiods"], g["rate_limit"])
        by_id[g["id"]] = _Group(g["id"], g["block_index"], g["phase"], timing, float(g["bonus_points"] or 0.0))
    for m in conn.execute(
        select(memberships.c.group_id, participants.c.id, participants.c.code)
        .join(participants, participants.c.id == memberships.c.participant_id)
        .join(groups, groups.c.id == memberships.c.group_id)
        .where(groups.c.experiment_id == eid)
        .order_by(memberships.c.group_id, memberships.c.position)
    ).mappings():
        by_id[m["group_id"]].members.append(m["code"])
        by_id[m["group_id"]].codes[m["id"]] = m["code"]
    people = [
        _Session(s["id"], s["code"], s["group_id"], s["started_at"] is not None, s["finished_at"] is not None,
                 float(s["final_score"]))
        for s in conn.execute(
            select(sessions.c.id, participants.c.code, sessions.c.group_id, sessions.c.started_at,
                   sessions.c.finished_at, sessions.c.final_score)
            .join(participants, participants.c.id == sessions.c.participant_id)
            .where(sessions.c.experiment_id == eid)
            .order_by(sessions.c.group_id, participants.c.index)
        ).mappings()
    ]
    scored = [
        _Result(r["session_id"], int(r["seq"]), r["subperiod"], r["decision"], float(r["score"]))
        for r in conn.execute(
            select(results.c.session_id, results.c.seq, results.c.subperiod, results.c.decision, results.c.score)
            .join(sessions, sessions.c.id == results.c.session_id)
            .where(results.c.experiment_id == eid)
            .order_by(results.c.seq)
        ).mappings()
    ]
    return _Log(dict(experiment), logged, list(by_id.values()), people, scored)


# --------------------------------------------------------------------------- the checks


def verify(engine: Engine, code: str) -> Report:
    """Check experiment ``code``: its ``seq``s, every result and every session's score.

    Raises :class:`UnknownExperiment` for an unknown code, :class:`VerifyError` when its game
    cannot be loaded, and :class:`SchemaError` when the database is not a synclab one.
    """
    with _snapshot(engine) as conn:
        _check_schema(conn)
        log = _load(conn, code)
    try:
        game = load_game(str(log.experiment["game"]))
    except GroupError as exc:
        raise VerifyError(f"experiment {code}: cannot load its game: {exc}") from exc
    report = Report(code, events=len(log.events), groups=len(log.groups))
    _check_seqs(report, log)
    by_group: dict[int | None, list[_Event]] = {}
    for ev in log.events:
        by_group.setdefault(ev.group_id, []).append(ev)
    found: dict[int, _Replay] = {}
    for group in log.groups:
        try:
            found[group.id] = _replay(report, game, log.experiment.get("config") or {}, group, by_group.get(group.id, []))
        except Exception as exc:  # the game's own code raised: the replay cannot go on, which is no mismatch
            raise VerifyError(
                f"{_where(code, group=group.id)}: the game failed while replaying it: {type(exc).__name__}: {exc}"
            ) from exc
    _check_results(report, log, found)
    _check_sessions(report, log, found)
    return report


def _where(code: str, *, group: int | None = None, participant: str | None = None, seq: int | None = None) -> str:
    parts = [f"experiment {code}"]
    if group is not None:
        parts.append(f"group {group}")
    if participant is not None:
        parts.append(f"participant {participant}")
    if seq is not None:
        parts.append(f"seq {seq}")
    return " ".join(parts)


def _close(a: float, b: float, slack: float = 0.0) -> bool:
    return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=ABS_TOL + slack)


def _check_seqs(report: Report, log: _Log) -> None:
    """``seq`` is 1..last_seq, each once (the writer allocates it inside its transaction)."""
    code = report.code
    seqs = [ev.seq for ev in log.events]
    for seq, times in sorted(Counter(seqs).items()):
        if times > 1:
            report.problems.append(f"{_where(code, seq=seq)}: stored {times} times")
    last = int(log.experiment["last_seq"] or 0)
    top = max([last, *seqs])
    have = set(seqs)
    for low, high in _runs(s for s in range(1, top + 1) if s not in have):
        what = f"seq {low}" if low == high else f"seqs {low}..{high}"
        report.problems.append(f"experiment {code}: {what} missing from the event log (a gap)")
    if seqs and max(seqs) != last:
        report.problems.append(f"experiment {code}: last_seq is {last} but the highest stored seq is {max(seqs)}")
    elif not seqs and last:
        report.problems.append(f"experiment {code}: last_seq is {last} but no event is stored")


def _runs(numbers: Iterable[int]) -> list[tuple[int, int]]:
    """Ascending numbers as runs of consecutive ones: 3, 4, 5, 9 -> (3, 5), (9, 9)."""
    runs: list[tuple[int, int]] = []
    for n in numbers:
        if runs and runs[-1][1] == n - 1:
            runs[-1] = (runs[-1][0], n)
        else:
            runs.append((n, n))
    return runs


@dataclass(slots=True)
class _Expected:
    decision: Any
    score: float
    slack: float = 0.0


@dataclass(slots=True)
class _Replay:
    """What one group's log says: its phase, and the result due to each (member, subperiod)."""

    phase: str = "waiting"
    started_seq: int | None = None
    ended_seq: int | None = None
    #: the period was ended without its game, which failed (a ``game_fault`` with ``ended``):
    #: not played through, its sessions stay unfinished
    faulted: bool = False
    expected: dict[tuple[str, int | None], _Expected] = field(default_factory=dict)


class _Clock:
    """The continuous-time integral, accrued at the same instants as the core accrues it.

    The core adds ``payoff * elapsed`` for each member whenever the decisions change, at a
    pause and at the end; a resume moves the start of the next stretch to the resume's time.
    """

    def __init__(self, game: DecisionGroup, members: list[str], start: float) -> None:
        self.game = game
        self.members = members
        self.flow = dict.fromkeys(members, 0.0)
        self.at = start
        self.boundaries = 1
        self.largest = 0.0

    def accrue(self, until: float, decisions: Mapping[str, Any]) -> None:
        elapsed = until - self.at
        if elapsed > 0:
            for p in self.members:
                rate = float(self.game.payoff(p, decisions))
                self.largest = max(self.largest, abs(rate))
                self.flow[p] = self.flow[p] + rate * elapsed
        self.at = until
        self.boundaries += 1

    def restart(self, at: float) -> None:
        self.at = at
        self.boundaries += 1


def _time_slack(clock: _Clock, length: float) -> float:
    """What one microsecond at each boundary of the integral can change in a score."""
    return 2 * clock.boundaries * clock.largest * TIME_RESOLUTION / length if length > 0 else 0.0


def _replay(
    report: Report, game_class: type[DecisionGroup], config: dict[str, Any], group: _Group, log: list[_Event]
) -> _Replay:
    """Replay one group's events; report what contradicts the game's rules or the log itself."""
    out = _Replay()
    if not group.members:
        report.problems.append(f"{_where(report.code, group=group.id)}: has no members")
        return out
    try:
        game = game_class(group.members, timing=group.timing, config=config)
    except GroupError as exc:
        report.problems.append(f"{_where(report.code, group=group.id)}: the game refuses its members or config: {exc}")
        return out
    replayer = _Replayer(report, game, group, out)
    for ev in log:
        replayer.apply(ev)
    if out.phase != group.phase:
        replayer.problem(f"the stored phase is {group.phase!r} but the event log says {out.phase!r}")
    return out


class _Replayer:
    """One group's period rebuilt event by event, in ``seq`` order, as the core lived it."""

    def __init__(self, report: Report, game: DecisionGroup, group: _Group, out: _Replay) -> None:
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
        self.fault: _Event | None = None

    def problem(self, text: str, seq: int | None = None, participant: str | None = None) -> None:
        where = _where(self.report.code, group=self.group.id, participant=participant, seq=seq)
        self.report.problems.append(f"{where}: {text}")

    def note(self, text: str, seq: int) -> None:
        self.report.notes.append(f"{_where(self.report.code, group=self.group.id, seq=seq)}: {text}")

    def apply(self, ev: _Event) -> None:
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

    def period_start(self, ev: _Event) -> None:
        """Every member starts from the game's initial decision; the integral starts now."""
        if self.out.phase != "waiting":
            self.problem(f"period_start while the period is {self.out.phase}", ev.seq)
            return
        self.out.phase, self.out.started_seq, self.started_at = "running", ev.seq, ev.at
        self.decisions = {p: self.game.initial_decision(p) for p in self.group.members}
        self.clock = _Clock(self.game, self.group.members, ev.at) if self.timing.continuous else None
        length = self.timing.period_length
        self.ends = None if length is None else ev.at + length

    def decision(self, ev: _Event, who: str) -> None:
        """The flow so far is accrued with the old decisions, then the new one holds."""
        if self.out.phase != "running":
            self.problem(f"a decision stored while the period is {self.out.phase}", ev.seq, who)
            return
        if not _valid(self.game, who, ev.value):
            self.problem(f"decision {ev.value!r} is one the game refuses", ev.seq, who)
        if self.clock is not None:
            self.clock.accrue(ev.at, self.decisions)
        self.decisions[who] = ev.value

    def pause_or_resume(self, ev: _Event, status: Any) -> None:
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

    def subperiod(self, ev: _Event) -> None:
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
            self.out.expected[(p, self.ticked)] = _Expected(self.decisions[p], score)
        self.ticked += 1

    def period_end(self, ev: _Event) -> None:
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
            score = clock.flow[p] / length if length > 0 else 0.0
            self.out.expected[(p, None)] = _Expected(self.decisions.get(p), score, slack)


def _resumed(ends: float | None, paused_for: float, paused_at: float, now: float) -> tuple[float | None, float]:
    """The deadline and total pause after a pause from ``paused_at`` to ``now`` (the core's order)."""
    pause = max(0.0, now - paused_at)
    return (None if ends is None else ends + pause), paused_for + pause


def _valid(game: DecisionGroup, participant: str, value: Any) -> bool:
    try:
        return bool(game.validate_decision(participant, value) == value)
    except GroupError:
        return False


def _check_results(report: Report, log: _Log, found: dict[int, _Replay]) -> None:
    """Each results row against its event and the replay; each due result and result event has a row."""
    code = report.code
    by_seq = {ev.seq: ev for ev in log.events}
    people = {s.id: s for s in log.sessions}
    seen: Counter[tuple[int, str, int | None]] = Counter()
    referenced: set[int] = set()
    for row in log.results:
        report.results += 1
        person = people[row.session_id]
        where = _where(code, group=person.group_id, participant=person.code, seq=row.seq)
        label = "continuous" if row.subperiod is None else f"subperiod {row.subperiod}"
        referenced.add(row.seq)
        seen[(person.group_id, person.code, row.subperiod)] += 1
        ev = by_seq.get(row.seq)
        if ev is None:
            report.problems.append(f"{where}: the {label} result's event is not in the log")
        elif ev.channel != RESULT:
            report.problems.append(f"{where}: the {label} result points at a {ev.channel!r} event, not a result")
        elif ev.group_id != person.group_id:
            report.problems.append(f"{where}: the {label} result's event belongs to group {ev.group_id}")
        elif ev.value != {"subperiod": row.subperiod, "decision": row.decision, "score": row.score}:
            report.problems.append(
                f"{where}: the result event says {ev.value!r} but the results row says "
                f"subperiod {row.subperiod!r}, decision {row.decision!r}, score {row.score!r}"
            )
        due = found[person.group_id].expected.get((person.code, row.subperiod))
        if due is None:
            report.problems.append(f"{where}: an extra {label} result that the event log does not score")
            continue
        if not _close(row.score, due.score, due.slack):
            report.problems.append(f"{where}: {label} score {row.score!r}, recomputed {due.score!r}")
        if row.decision != due.decision:
            report.problems.append(f"{where}: {label} decision {row.decision!r}, replayed {due.decision!r}")
    for (gid, who, sub), times in sorted(seen.items(), key=str):
        if times > 1:
            report.problems.append(f"{_where(code, group=gid, participant=who)}: {times} results for {_label(sub)}")
    for group in log.groups:
        for (who, sub) in found[group.id].expected:
            if (group.id, who, sub) not in seen:
                report.problems.append(f"{_where(code, group=group.id, participant=who)}: no result for {_label(sub)}")
    for ev in log.events:
        if ev.channel == RESULT and ev.seq not in referenced:
            report.problems.append(f"{_where(code, group=ev.group_id, seq=ev.seq)}: a result event with no results row")


def _label(subperiod: int | None) -> str:
    return "the continuous period" if subperiod is None else f"subperiod {subperiod}"


def _check_sessions(report: Report, log: _Log, found: dict[int, _Replay]) -> None:
    """Sessions start and finish with their group's period; final_score = bonus + Σ results, also
    for the sessions of a period ended without its game (unfinished, scored with what they earned)."""
    code = report.code
    bonus = {g.id: g.bonus for g in log.groups}
    stored: dict[int, float] = {}
    for row in log.results:
        stored[row.session_id] = stored.get(row.session_id, 0.0) + row.score
    for s in log.sessions:
        replay = found[s.group_id]
        where = _where(code, group=s.group_id, participant=s.code)
        if s.started != (replay.started_seq is not None):
            said = f"period_start at seq {replay.started_seq}" if replay.started_seq else "no period_start"
            report.problems.append(f"{where}: session started is {s.started}, but the log has {said}")
        played = replay.started_seq is not None and replay.ended_seq is not None and not replay.faulted
        if s.finished != played:
            said = f"period_end at seq {replay.ended_seq}" if played else "no period played to its end"
            report.problems.append(f"{where}: session finished is {s.finished}, but the log has {said}")
        if not s.finished:
            report.unfinished_sessions += 1
            report.notes.append(f"{where}: session not finished (its group is {replay.phase})")
            if not (replay.faulted and s.started):
                continue
        else:
            report.sessions += 1
        summed = bonus[s.group_id] + stored.get(s.id, 0.0)
        due = [e for (who, _), e in replay.expected.items() if who == s.code]
        recomputed = bonus[s.group_id] + sum(e.score for e in due)
        if not _close(s.final_score, summed):
            report.problems.append(
                f"{where}: final_score {s.final_score!r} but bonus + the stored results is {summed!r}"
            )
        if not _close(s.final_score, recomputed, sum(e.slack for e in due)):
            report.problems.append(f"{where}: final_score {s.final_score!r}, recomputed {recomputed!r}")


# --------------------------------------------------------------------------- the command


def run_verify(settings: Settings, code: str, *, as_json: bool = False) -> int:
    """``synclab verify CODE [--json]``: 0 when all agrees, 1 on a mismatch, 2 when it cannot run.

    A bad ``DATABASE_URL`` or an older schema raises :class:`SettingsError` / :class:`SchemaError`
    for the caller (``synclab`` exits 2 on them like its other commands).
    """
    try:
        with reading(settings.database_url) as engine:
            report = verify(engine, code)
    except VerifyError as exc:
        print(f"synclab: {exc}", file=sys.stderr)
        return 2
    if as_json:
        print(orjson.dumps(report.as_json(), option=orjson.OPT_INDENT_2).decode())
    else:
        print(report.summary())
    return 0 if report.ok else 1
