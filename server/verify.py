"""``synclab verify CODE``: recompute every result and session score from the event log.

The server scores inside the core (:mod:`groups.period`) while the period runs and stores the
results beside their ``result`` events. This module checks that after the fact, from the stored
events alone: it replays each group's log (``state``, ``decisions``, ``period``, ``subperiod``)
with its own loop, asks the game class only for ``initial_decision`` and ``payoff``, and
compares what it gets with the ``results`` and ``sessions`` rows. It also checks that ``seq``
runs 1..``experiments.last_seq`` without gaps or repeats.

Every finding is one line naming the experiment and, where it applies, the group, participant
and ``seq``. :func:`verify` returns them in a :class:`Report`; :func:`run_verify` is ``synclab verify``.

The log is read by :mod:`server.storedlog`, each group's period replayed by :mod:`server.replay`;
the report and the place a finding names are :mod:`server.findings`'.
"""

from __future__ import annotations

import math
import sys
from collections import Counter
from collections.abc import Iterable

import orjson
from sqlalchemy import Engine

from groups import RESULT, GroupError, load_game

from .findings import Report, VerifyError, place
from .replay import Replay, replay
from .settings import Settings
from .storage import reading_current, score_sum
from .storedlog import StoredEvent, StoredLog, check_schema, load_log, snapshot

#: relative tolerance of every score comparison (sums may be added up in another order)
REL_TOL = 1e-9
#: absolute tolerance, so that scores of 0 compare too
ABS_TOL = 1e-9


# --------------------------------------------------------------------------- the checks


def verify(engine: Engine, code: str) -> Report:
    """Check experiment ``code``: its ``seq``s, every result and every session's score.

    Raises :class:`server.findings.UnknownExperiment` for an unknown code, :class:`VerifyError`
    when its game cannot be loaded, and :class:`SchemaError` when the database is not a synclab one.
    """
    with snapshot(engine) as conn:
        check_schema(conn)
        log = load_log(conn, code)
    try:
        game = load_game(str(log.experiment["game"]))
    except GroupError as exc:
        raise VerifyError(f"experiment {code}: cannot load its game: {exc}") from exc
    report = Report(code, events=len(log.events), groups=len(log.groups))
    _check_seqs(report, log)
    by_group: dict[int | None, list[StoredEvent]] = {}
    for ev in log.events:
        by_group.setdefault(ev.group_id, []).append(ev)
    found: dict[int, Replay] = {}
    for group in log.groups:
        try:
            found[group.id] = replay(report, game, log.experiment.get("config") or {}, group, by_group.get(group.id, []))
        except Exception as exc:  # the game's own code raised: the replay cannot go on, which is no mismatch
            raise VerifyError(
                f"{place(code, group=group.id)}: the game failed while replaying it: {type(exc).__name__}: {exc}"
            ) from exc
    _check_results(report, log, found)
    _check_sessions(report, log, found)
    return report


def _close(a: float, b: float, slack: float = 0.0) -> bool:
    return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=ABS_TOL + slack)


def _check_seqs(report: Report, log: StoredLog) -> None:
    """``seq`` is 1..last_seq, each once (the writer allocates it inside its transaction)."""
    code = report.code
    seqs = [ev.seq for ev in log.events]
    for seq, times in sorted(Counter(seqs).items()):
        if times > 1:
            report.problems.append(f"{place(code, seq=seq)}: stored {times} times")
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


def _check_results(report: Report, log: StoredLog, found: dict[int, Replay]) -> None:
    """Each results row against its event and the replay; each due result and result event has a row."""
    code = report.code
    by_seq = {ev.seq: ev for ev in log.events}
    people = {s.id: s for s in log.sessions}
    seen: Counter[tuple[int, str, int | None]] = Counter()
    referenced: set[int] = set()
    for row in log.results:
        report.results += 1
        person = people[row.session_id]
        where = place(code, group=person.group_id, participant=person.code, seq=row.seq)
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
            report.problems.append(f"{place(code, group=gid, participant=who)}: {times} results for {_label(sub)}")
    for group in log.groups:
        for (who, sub) in found[group.id].expected:
            if (group.id, who, sub) not in seen:
                report.problems.append(f"{place(code, group=group.id, participant=who)}: no result for {_label(sub)}")
    for ev in log.events:
        if ev.channel == RESULT and ev.seq not in referenced:
            report.problems.append(f"{place(code, group=ev.group_id, seq=ev.seq)}: a result event with no results row")


def _label(subperiod: int | None) -> str:
    return "the continuous period" if subperiod is None else f"subperiod {subperiod}"


def _check_sessions(report: Report, log: StoredLog, found: dict[int, Replay]) -> None:
    """Sessions start and finish with their group's period; final_score = bonus + Σ results, also
    for the sessions of a period ended without its game (unfinished, scored with what they earned)."""
    code = report.code
    bonus = {g.id: g.bonus for g in log.groups}
    stored: dict[int, float] = {}
    scores: dict[int, list[float]] = {}
    for row in log.results:
        stored[row.session_id] = stored.get(row.session_id, 0.0) + row.score
        scores.setdefault(row.session_id, []).append(row.score)
    for s in log.sessions:
        replay = found[s.group_id]
        where = place(code, group=s.group_id, participant=s.code)
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
        if math.isnan(s.final_score) or not math.isfinite(summed):  # stored NULL: past a float's range
            _check_not_finite(report, where, s.final_score, [bonus[s.group_id], *scores.get(s.id, [])])
            continue
        if not _close(s.final_score, summed):
            report.problems.append(
                f"{where}: final_score {s.final_score!r} but bonus + the stored results is {summed!r}"
            )
        if not _close(s.final_score, recomputed, sum(e.slack for e in due)):
            report.problems.append(f"{where}: final_score {s.final_score!r}, recomputed {recomputed!r}")


def _check_not_finite(report: Report, where: str, final_score: float, earned: list[float]) -> None:
    """A final_score stored NULL (``nan`` here) must be a bonus + Σ results past a float's range
    (as the period's end sums it: :func:`.storage.score_sum`), and such a sum must be stored NULL."""
    total = score_sum(earned)
    if math.isfinite(total) and not math.isnan(final_score):  # (only a naive sum overflowed on the way)
        if not _close(final_score, total):
            report.problems.append(f"{where}: final_score {final_score!r} but bonus + the stored results is {total!r}")
    elif math.isfinite(total):
        report.problems.append(f"{where}: final_score null (past a float's range), but bonus + the stored results is {total!r}")
    elif not math.isnan(final_score):
        report.problems.append(f"{where}: final_score {final_score!r}, but bonus + the stored results is past a float's range (null)")
    else:
        report.notes.append(f"{where}: final_score null: bonus + the stored results is past a float's range")


# --------------------------------------------------------------------------- the command


def run_verify(settings: Settings, code: str, *, as_json: bool = False) -> int:
    """``synclab verify CODE [--json]``: 0 when all agrees, 1 on a mismatch, 2 when it cannot run.

    A bad ``DATABASE_URL`` or an older schema raises :class:`SettingsError` / :class:`SchemaError`
    for the caller (``synclab`` exits 2 on them like its other commands).
    """
    try:
        with reading_current(settings.database_url) as engine:
            report = verify(engine, code)
    except VerifyError as exc:
        print(f"synclab: {exc}", file=sys.stderr)
        return 2
    if as_json:
        print(orjson.dumps(report.as_json(), option=orjson.OPT_INDENT_2).decode())
    else:
        print(report.summary())
    return 0 if report.ok else 1
