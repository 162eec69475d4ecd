"""Sessions, results and ticks: the REST lists and MUSCLE's one-session helpers."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Engine, and_, func, select, text, update
from sqlalchemy.engine import Connection

from groups import PERIOD_END

from .statuses import STOOD_IN
from .tables import (
    STANDIN_ONLY,
    STATE_ONLY,
    blocks,
    events,
    participants,
    results,
    sessions,
    ticks,
)
from .times import iso, to_epoch

#: scores summed scaled down by this when their sum overflows on the way (exact but for subnormals)
_SCALE = 2.0**-64


def score_sum(scores: Iterable[float]) -> float:
    """A participant's score, the correctly rounded sum of their sessions' ``final_score``
    (``math.fsum``), that never raises: a sum past a float's range is ``inf`` or ``-inf`` (as its
    sign says), infinities of both signs ``nan``. The database does not sum them: PostgreSQL
    refuses a sum past a float's range, SQLite makes it infinity. The callers say what is no
    finite number (never JSON's silent ``null`` for ``inf``)."""
    values = list(scores)
    try:
        return math.fsum(values)
    except OverflowError:  # (an intermediate sum too: 1e308 + 1e308 - 1e308 is 1e308)
        return math.fsum(v * _SCALE for v in values) / _SCALE
    except ValueError:  # inf and -inf
        return math.nan


def stored_score(value: float | None) -> float:
    """A session's ``final_score`` as stored, as a float: NULL, a score past a float's range (its
    period's end sums it so, never infinity: ``storage.periods``), is ``nan``, no number, whose
    sign is not known. Summed (:func:`score_sum`) it makes the participant's score ``nan`` too:
    ranked last, given as ``null``, counted in the stats' ``scores_not_finite``."""
    return math.nan if value is None else float(value)


def session_query() -> Any:
    return (
        select(
            sessions.c.id,
            participants.c.code.label("participant"),
            blocks.c.index.label("block"),
            sessions.c.group_id.label("group"),
            sessions.c.started_at,
            sessions.c.finished_at,
            sessions.c.final_score,
            sessions.c.json_data,
        )
        .join(participants, participants.c.id == sessions.c.participant_id)
        .join(blocks, blocks.c.id == sessions.c.block_id)
    )


def session_row(r: Any) -> dict[str, Any]:
    return {
        "participant": r["participant"],
        "block": r["block"],
        "group": r["group"],
        "started_at": iso(r["started_at"]),
        "finished_at": iso(r["finished_at"]),
        "final_score": r["final_score"],
        "json_data": r["json_data"] or {},
    }


def results_by_session(conn: Connection, session_ids: list[int], upto_seq: int | None = None) -> dict[int, list[dict[str, Any]]]:
    """The results of these sessions (up to ``upto_seq``) in scoring order: ``subperiod, decision, score, seq``."""
    if not session_ids:
        return {}
    query = select(results.c.session_id, results.c.subperiod, results.c.decision, results.c.score, results.c.seq)
    query = query.where(results.c.session_id.in_(session_ids))
    if upto_seq is not None:
        query = query.where(results.c.seq <= upto_seq)
    by_session: dict[int, list[dict[str, Any]]] = {}
    for r in conn.execute(query.order_by(results.c.seq)).mappings():
        by_session.setdefault(r["session_id"], []).append(
            {"subperiod": r["subperiod"], "decision": r["decision"], "score": r["score"], "seq": r["seq"]}
        )
    return by_session


def count_rows(engine: Engine, table_name: str, experiment_id: int) -> int:
    table = {"sessions": sessions, "results": results}[table_name]
    with engine.connect() as conn:
        return int(
            conn.execute(
                select(func.count()).select_from(table).where(table.c.experiment_id == experiment_id)
            ).scalar_one()
        )


def list_sessions(engine: Engine, experiment_id: int, offset: int, limit: int) -> list[dict[str, Any]]:
    """Sessions in block order, then participant order."""
    with engine.connect() as conn:
        rows = conn.execute(
            session_query()
            .where(sessions.c.experiment_id == experiment_id)
            .order_by(blocks.c.index, participants.c.index)
            .offset(offset)
            .limit(limit)
        ).mappings()
        return [session_row(r) for r in rows]


def list_results(
    engine: Engine, experiment_id: int, offset: int, limit: int, after_seq: int = 0, upto_seq: int | None = None
) -> list[dict[str, Any]]:
    """Results in the order they were scored (their ``result`` event's ``seq``), after ``after_seq`` and up to ``upto_seq``."""
    bounds = [results.c.experiment_id == experiment_id, results.c.seq > after_seq]
    if upto_seq is not None:
        bounds.append(results.c.seq <= upto_seq)
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                participants.c.code.label("participant"),
                blocks.c.index.label("block"),
                results.c.subperiod,
                results.c.decision,
                results.c.score,
                results.c.seq,
            )
            .select_from(results)
            .join(sessions, sessions.c.id == results.c.session_id)
            .join(participants, participants.c.id == sessions.c.participant_id)
            .join(blocks, blocks.c.id == sessions.c.block_id)
            .where(and_(*bounds))
            .order_by(results.c.seq)
            .offset(offset)
            .limit(limit)
        ).mappings()
        return [dict(r) for r in rows]


def list_ticks(engine: Engine, group_id: int) -> list[dict[str, Any]]:
    """A group's ticks in the order they were due, with scheduled and actual times (epoch seconds)."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(ticks).where(ticks.c.group_id == group_id).order_by(ticks.c.scheduled_at, ticks.c.kind.desc())
        ).mappings()
        return [
            {**dict(r), "scheduled_at": to_epoch(r["scheduled_at"]), "actual_at": to_epoch(r["actual_at"])}
            for r in rows
        ]


# --------------------------------------------------------------------------- one session (the MUSCLE helpers)


def find_session(engine: Engine, participant_code: str, block: int) -> dict[str, Any] | None:
    """The session of participant ``participant_code`` in block ``block`` (its index), with its
    block's bonus; its ``final_score`` a float (:func:`stored_score`)."""
    with engine.connect() as conn:
        row = conn.execute(
            session_query()
            .add_columns(sessions.c.block_id, blocks.c.bonus_points)
            .where(and_(participants.c.code == participant_code, blocks.c.index == block))
        ).mappings().first()
        if row is None:
            return None
        return {**session_row(row), "final_score": stored_score(row["final_score"]), "id": row["id"], "block_id": row["block_id"],
                "bonus_points": float(row["bonus_points"] or 0.0)}


def session_results(engine: Engine, session_id: int) -> list[dict[str, Any]]:
    """A session's results in the order they were scored."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(results.c.seq, results.c.subperiod, results.c.decision, results.c.score)
            .where(results.c.session_id == session_id)
            .order_by(results.c.seq)
        ).mappings()
        return [dict(r) for r in rows]


def block_final_scores(engine: Engine, block_id: int, finished_only: bool) -> list[float]:
    """The final scores of every session of a block (``nan`` for one past a float's range:
    :func:`stored_score`); ``finished_only``: of the sessions their
    participants finished themselves, those whose seat no bot held when the block's period ended
    (:func:`bot_held_seats`). Who played each block's seat decides, not the participant's status now:
    a ``dropped`` participant's earlier block that they played to its end is compared, and a
    ``replaced`` one's block that a bot played to its end is not."""
    with engine.connect() as conn:
        if not finished_only:
            query = select(sessions.c.final_score).where(sessions.c.block_id == block_id)
            return [stored_score(score) for score in conn.execute(query).scalars()]
        rows = conn.execute(
            select(sessions.c.final_score, sessions.c.group_id, participants.c.code, participants.c.status)
            .join(participants, participants.c.id == sessions.c.participant_id)
            .where(sessions.c.block_id == block_id, sessions.c.finished_at.is_not(None))
        ).all()
        # only a participant a bot stood in for may have a seat a bot held: the groups' logs are
        # read for those groups only (in most blocks none)
        stood_in = {int(group) for _, group, _, status in rows if status in STOOD_IN}
        bots = bot_held_seats(conn, stood_in) if stood_in else set()
        return [stored_score(score) for score, group, code, _ in rows if (group, code) not in bots]


def bot_held_seats(conn: Connection, group_ids: set[int]) -> set[tuple[int, str]]:
    """The seats (group, participant code) a bot held when the group's period ended: the member's
    last ``standin`` event in the group's log before its ``period_end`` says the bot was playing.
    A block's session counts as its participant's own unless its seat is one of these (a session's
    ``percentile_rank``, the participants' ``finished`` in ``server.progress``). Only groups of
    one experiment; ask for those of the participants a bot ever stood in for (:data:`.STOOD_IN`).

    Both are read through partial indexes by group (``ix_events_group_state``,
    ``ix_events_standin``): a few events a group, whatever the experiment holds."""
    wanted = sorted(group_ids)
    ends: dict[int, int] = {}
    for group, seq, value in conn.execute(
        select(events.c.group_id, events.c.seq, events.c.value).where(events.c.group_id.in_(wanted), text(STATE_ONLY))
    ):
        if value == PERIOD_END:
            ends[group] = min(int(seq), ends.get(group, int(seq)))
    holding: dict[tuple[int, str], bool] = {}
    for group, seq, value in conn.execute(
        select(events.c.group_id, events.c.seq, events.c.value)
        .where(events.c.group_id.in_(wanted), text(STANDIN_ONLY))  # ix_events_standin (its literal condition)
        .order_by(events.c.seq)
    ):
        end = ends.get(group)
        if isinstance(value, dict) and (end is None or seq < end):  # (one back after the end: the bot finished)
            holding[int(group), str(value.get("participant"))] = bool(value.get("playing"))
    return {seat for seat, playing in holding.items() if playing}


def merge_session_json(engine: Engine, session_id: int, data: dict[str, Any]) -> dict[str, Any]:
    """Merge ``data`` into a session's ``json_data`` (its keys win) in one transaction; returns the result."""
    with engine.begin() as conn:
        current = conn.execute(
            select(sessions.c.json_data).where(sessions.c.id == session_id).with_for_update()
        ).scalar_one()
        merged = {**(current or {}), **data}
        conn.execute(update(sessions).where(sessions.c.id == session_id).values(json_data=merged))
        return merged

