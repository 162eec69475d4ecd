"""Participants' progress, after edx's completion API: completion, scores, ranks and means.

Everything is computed from the stored rows in one read (a handful of queries), so the REST API,
the exports and the monitor agree: the REST API and the monitor as the rows stand now, an export
as of its ``last_seq`` (``upto_seq``; see ``storage.asof``). Ranks are over the whole experiment:
``rank`` is MUSCLE's dense rank of ``final_score`` (1 = best, ties share), ``percentile_rank`` the
percentage of the participants compared who score below, ties counted half.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from statistics import fmean
from typing import Any

from sqlalchemy import Engine, and_, func, select

from .storage import (
    FINAL_STATUSES,
    STOOD_IN,
    Standing,
    blocks,
    bot_held_seats,
    connections,
    experiments,
    groups,
    iso,
    memberships,
    participants,
    results_by_session,
    score_sum,
    session_query,
    session_row,
    session_standings,
    sessions,
)


@dataclass(frozen=True, slots=True)
class Filter:
    """Which participants a list or the stats take in."""

    #: only this participant (its code)
    participant: str | None = None
    #: only the members of this group
    group: int | None = None
    #: means and percentiles over the participants who finished only (:func:`is_finished`)
    exclude_unfinished: bool = False


def participant_progress(
    engine: Engine, experiment_id: int, only: Filter | None = None, *, upto_seq: int | None = None
) -> list[dict[str, Any]]:
    """One row per participant in participant order (see :func:`_rows`), filtered by ``only``.

    As stored now, or with ``upto_seq`` as of that ``seq`` (the exports): completion, scores,
    ranks and the group from the sessions and groups as they stood then; ``connected`` and
    ``connected_since`` are not in the event log and stay as read now.
    """
    return _progress(engine, experiment_id, only or Filter(), upto_seq)[0]


def progress_stats(engine: Engine, experiment_id: int, only: Filter | None = None) -> dict[str, Any]:
    """:func:`stats` of the participants ``only`` takes in, as stored now."""
    only = only or Filter()
    rows, bot_held = _progress(engine, experiment_id, only, None)
    return stats(rows, bot_held, only.exclude_unfinished)


def participant_sessions(engine: Engine, participant_id: int) -> list[dict[str, Any]]:
    """A participant's sessions in block order, each with its results in scoring order."""
    with engine.connect() as conn:
        rows = conn.execute(
            session_query().where(sessions.c.participant_id == participant_id).order_by(blocks.c.index)
        ).mappings().all()
        nested = results_by_session(conn, [r["id"] for r in rows])
    return [{**session_row(r), "results": nested.get(r["id"], [])} for r in rows]


def participant_id(engine: Engine, experiment_id: int, code: str) -> int | None:
    with engine.connect() as conn:
        found = conn.execute(
            select(participants.c.id).where(
                and_(participants.c.experiment_id == experiment_id, participants.c.code == code)
            )
        ).scalar()
        return None if found is None else int(found)


def group_in_experiment(engine: Engine, experiment_id: int, group_id: int) -> bool:
    with engine.connect() as conn:
        found = conn.execute(
            select(groups.c.id).where(and_(groups.c.id == group_id, groups.c.experiment_id == experiment_id))
        ).scalar()
        return found is not None


def is_finished(row: dict[str, Any], bot_held: set[str]) -> bool:
    """Whether the participant finished: every block played (completion ratio 1), each by them,
    none whose seat a bot held when its period ended (``bot_held``: the codes of those who had
    one, :func:`_bot_held`), as a session's ``percentile_rank(exclude_unfinished=True)`` compares
    the sessions of a block."""
    return row["completion"]["ratio"] >= 1.0 and row["code"] not in bot_held


def stats(rows: list[dict[str, Any]], bot_held: set[str], exclude_unfinished: bool) -> dict[str, Any]:
    """``mean_completion``, ``mean_score`` and counts over ``rows`` (from :func:`participant_progress`).

    ``finished`` counts the participants who finished (:func:`is_finished`), ``played_by_bots`` the
    others who played every block, a bot holding their seat at the end of one at least (a lobby's
    fill, a dropout's that it played on, one who came back only in a later block);
    ``exclude_unfinished`` takes the former only. ``mean_score`` is ``None`` too when a score
    taken is no finite number (``None`` in the rows): ``scores_not_finite`` counts them.
    """
    done = [r for r in rows if is_finished(r, bot_held)]
    taken = done if exclude_unfinished else rows
    scores = [r["final_score"] for r in taken]
    not_finite = sum(s is None for s in scores)  # (:func:`_progress`: no finite number)
    return {
        "mean_completion": fmean(r["completion"]["ratio"] for r in taken) if taken else None,
        "mean_score": _mean(scores) if taken and not not_finite else None,
        "scores_not_finite": not_finite,
        "count": len(taken),
        "participants": len(rows),
        "finished": len(done),
        "played_by_bots": sum(r["completion"]["ratio"] >= 1.0 and r["code"] in bot_held for r in rows),
        "connected": sum(bool(r["connected"]) for r in rows),
        "exclude_unfinished": exclude_unfinished,
    }


def _mean(scores: list[float]) -> float:
    """``fmean``, whose sum may overflow where the mean does not (two scores near 1e308)."""
    try:
        return fmean(scores)
    except OverflowError:
        return math.fsum(s / len(scores) for s in scores)


# --------------------------------------------------------------------------- the reads


def _progress(
    engine: Engine, experiment_id: int, only: Filter, upto_seq: int | None
) -> tuple[list[dict[str, Any]], set[str]]:
    """The rows ``only`` takes in, ranked, and the codes of the participants a bot held a seat of
    at its period's end (of the whole experiment: :func:`_bot_held`)."""
    with engine.connect() as conn:
        rows, bot_held = _rows(conn, experiment_id, upto_seq)
        members = _group_members(conn, only.group) if only.group is not None else None
    _rank(rows, bot_held, only.exclude_unfinished)
    for r in rows:  # ranked by its sign; never a number, nor JSON's silent null for inf
        if not math.isfinite(r["final_score"]):
            r["final_score"] = None
    taken = [
        r
        for r in rows
        if (only.participant is None or r["code"] == only.participant) and (members is None or r["code"] in members)
    ]
    return taken, bot_held


def _bot_held(conn: Any, people: list[Any], standings: dict[int, list[Standing]]) -> set[str]:
    """The codes of the participants whose seat a bot held when one of their blocks' periods
    ended (``storage.bot_held_seats``, the rule of a session's ``percentile_rank``). Only a
    participant a bot ever stood in for can have one (status ``bot``, ``dropped``, ``replaced``):
    the groups' logs are read for theirs only (none in most experiments)."""
    stood_in = {int(p.id): p.code for p in people if p.status in STOOD_IN}
    seats = {(s.group_id, stood_in[pid]) for pid in stood_in for s in standings.get(pid, [])}
    if not seats:
        return set()
    held = bot_held_seats(conn, {group for group, _ in seats})
    return {code for group, code in seats if (group, code) in held}


def _rows(conn: Any, experiment_id: int, upto_seq: int | None) -> tuple[list[dict[str, Any]], set[str]]:
    num_blocks = conn.execute(select(experiments.c.num_blocks).where(experiments.c.id == experiment_id)).scalar_one()
    people = conn.execute(
        select(
            participants.c.id,
            participants.c.code,
            participants.c.label,
            participants.c.join_label,
            participants.c.joined_at,
            participants.c.completion_code,
            participants.c.status,
        )
        .where(participants.c.experiment_id == experiment_id)
        .order_by(participants.c.index)
    ).all()
    open_since = dict(
        conn.execute(
            select(connections.c.participant_id, func.min(connections.c.connected_at))
            .where(and_(connections.c.experiment_id == experiment_id, connections.c.disconnected_at.is_(None)))
            .group_by(connections.c.participant_id)
        ).all()
    )
    standings: dict[int, list[Standing]] = {}
    for s in session_standings(conn, experiment_id, upto_seq):
        standings.setdefault(s.participant_id, []).append(s)
    rows = []
    for pid, code, label, join_label, joined_at, completion_code, status in people:
        mine = standings.get(pid, [])
        finished = sum(s.finished for s in mine)
        # its group now: the first not ended, else the last (the block pause is not counted)
        group = next((s.group_id for s in mine if not s.group_ended), mine[-1].group_id if mine else None)
        since = open_since.get(pid)
        possible = int(num_blocks)
        over = len(mine) == possible and mine[-1].group_ended  # its last block's period ended
        rows.append(
            {
                "code": code,
                "label": label,
                "group": group,
                "connected": since is not None,
                "connected_since": iso(since),
                "completion": {
                    "earned": finished,
                    "possible": possible,
                    "ratio": finished / possible if possible else 0.0,
                },
                # fsum: the correctly rounded sum, whatever the order of the sessions; past a
                # float's range, inf or -inf (ranked so), then None (:func:`_progress`)
                "final_score": score_sum(s.final_score for s in mine),
                "rank": 0,
                "percentile_rank": 0.0,
                # the shared join link's (``server.join``): the label it came with, when, and the
                # code to take back
                "join_label": join_label,
                "joined_at": iso(joined_at),
                "completion_code": completion_code,
                # how the run ended (see server.storage.statuses); as of a seq, only once it had:
                # the status was set with the last block's period end (or is one set for good)
                "status": status if upto_seq is None or over or status in FINAL_STATUSES else None,
            }
        )
    # (as of a seq too: a block counts once its period had ended then, whose log is the same now)
    return rows, _bot_held(conn, people, standings)


def _group_members(conn: Any, group_id: int) -> set[str]:
    return {
        r[0]
        for r in conn.execute(
            select(participants.c.code)
            .join(memberships, memberships.c.participant_id == participants.c.id)
            .where(memberships.c.group_id == group_id)
        )
    }


def _rank(rows: list[dict[str, Any]], bot_held: set[str], exclude_unfinished: bool) -> None:
    """Set ``rank`` (dense, over everyone) and ``percentile_rank`` (over the compared ones)."""
    distinct = sorted({_ranked(r["final_score"]) for r in rows}, reverse=True)
    position = {score: i + 1 for i, score in enumerate(distinct)}
    # sorted, so that who scores below and who ties is two bisections a row, not a pass over all
    # (10,000 participants were 10^8 comparisons, seconds a request)
    compared = sorted(_ranked(r["final_score"]) for r in rows if not exclude_unfinished or is_finished(r, bot_held))
    for r in rows:
        score = _ranked(r["final_score"])
        r["rank"] = position[score]
        if compared:
            below = bisect_left(compared, score)
            equal = bisect_right(compared, score) - below
            r["percentile_rank"] = 100.0 * (below + 0.5 * equal) / len(compared)
        else:
            r["percentile_rank"] = None


def _ranked(score: float) -> float:
    """A score as ranks compare it: past a float's range by its sign, ``nan`` (infinities of both
    signs) last, as ``-inf`` (it compares with nothing)."""
    return -math.inf if math.isnan(score) else score
