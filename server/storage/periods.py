"""What a period's start or end changes besides its events and its group's row, in the writer's
batch (:func:`.batch.commit_writes`): the experiment, block and sessions it belongs to."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from sqlalchemy import BigInteger, and_, bindparam, case, func, null, select, update
from sqlalchemy.engine import Connection

from groups import GAME_FAULT

from .tables import blocks, experiments, groups, results, sessions
from .times import to_datetime
from .writes import Write

# What a period's start or end changes besides its events and its group's row: a few rows a
# period, so they go through SQLAlchemy, as statements built once (a statement built at each
# call left cyclic garbage behind, several SQLAlchemy objects a period, for the cycle collector).
_EXPERIMENT_RUNNING = (
    update(experiments)
    .where(and_(experiments.c.id == bindparam("eid"), experiments.c.status == "pending"))
    .values(status="running", started_at=bindparam("at"))
)
_SESSIONS_STARTED = (
    update(sessions)
    .where(and_(sessions.c.group_id == bindparam("gid"), sessions.c.started_at.is_(None)))
    .values(started_at=bindparam("at"))
)
_BLOCK_RUNNING = (
    update(blocks)
    .where(and_(
        blocks.c.id == select(groups.c.block_id).where(groups.c.id == bindparam("gid")).scalar_subquery(),
        blocks.c.status == "pending",
    ))
    .values(status="running")
)
#: scores are summed scaled down by this (exact: a power of two), so that no sum on the way
#: overflows (PostgreSQL refuses one, SQLite makes it infinity); the same sum as unscaled but for
#: scores below 2**-958, which the scaling makes subnormal
_SCALE = 2.0**-64
#: the largest magnitude whose scaled value rounds to zero (2**-1075 and below round to zero, ties
#: to even): a float's product, on SQLite, is that zero with the score's sign; PostgreSQL refuses
#: the same product (``value out of range: underflow``), and with it the period's end, for good
_SCALED_TO_ZERO = 2.0**-1011


def _scaled(value: Any) -> Any:
    """``value`` scaled down by :data:`_SCALE`, as a float's product on either database: a score
    too small to scale is that zero (``value * 0.0``, its sign kept), which PostgreSQL takes."""
    return case((func.abs(value) <= _SCALED_TO_ZERO, value * 0.0), else_=value * _SCALE)


#: what a session earned, scaled down: bonus + Σ its results, in a table of one row that
#: :data:`_EARNED` selects from, so that the sum is made once though its CASE reads it twice (put
#: into the CASE as an expression, twice, it was made twice: each session's results read twice)
_SCALED = (
    select(
        (
            select(_scaled(blocks.c.bonus_points)).where(blocks.c.id == sessions.c.block_id)
            .correlate(sessions).scalar_subquery()
            + func.coalesce(func.sum(_scaled(results.c.score)), 0.0)
        ).label("scaled")
    )
    .where(results.c.session_id == sessions.c.id)
    .correlate(sessions)
    .subquery("earned")
)
#: what a session earned: bonus + Σ its results; NULL when that is past a float's range (or no
#: number), never infinity: no finite score (``storage.stored_score``)
_EARNED = select(
    case((func.abs(_SCALED.c.scaled) <= sys.float_info.max * _SCALE, _SCALED.c.scaled / _SCALE), else_=null())
).scalar_subquery()
_STARTED_IN_GROUP = and_(sessions.c.group_id == bindparam("gid"), sessions.c.started_at.is_not(None))
#: final_score = bonus + Σ results (NULL past a float's range), for the group's sessions that started
_SESSIONS_FINISHED = update(sessions).where(_STARTED_IN_GROUP).values(finished_at=bindparam("at"), final_score=_EARNED)
#: the same score for the sessions of a period ended without its game, which stay unfinished
_SESSIONS_SCORED = update(sessions).where(_STARTED_IN_GROUP).values(final_score=_EARNED)
_GROUP_BLOCK = select(groups.c.block_id).where(groups.c.id == bindparam("gid"))
_block = bindparam("bid", type_=BigInteger)
_BLOCK_DONE = (
    update(blocks)
    .where(and_(
        blocks.c.id == _block,
        ~select(groups.c.id).where(and_(groups.c.block_id == _block, groups.c.phase != "ended")).exists(),
    ))
    .values(status="done")
)
_experiment = bindparam("eid", type_=BigInteger)
_EXPERIMENT_DONE = (
    update(experiments)
    .where(and_(
        experiments.c.id == _experiment,
        experiments.c.status.in_(("pending", "running")),
        ~select(groups.c.id).where(and_(groups.c.experiment_id == _experiment, groups.c.phase != "ended")).exists(),
    ))
    .values(status=bindparam("status"), finished_at=bindparam("at"))
)


def experiment_running(conn: Connection, experiment_id: int, at: float | None) -> None:
    """The experiment's first period started: it is running (if it was pending)."""
    conn.execute(_EXPERIMENT_RUNNING, {"eid": experiment_id, "at": to_datetime(at)})


def period_started(conn: Connection, group_id: int, at: float | None) -> None:
    """The group's sessions started; its block is running (if it was pending)."""
    conn.execute(_SESSIONS_STARTED, {"gid": group_id, "at": to_datetime(at)})
    conn.execute(_BLOCK_RUNNING, {"gid": group_id})


def period_ended(
    conn: Connection, experiment_id: int, group_id: int, at: float | None, *, by_hand: bool = False,
    played: bool = True,
) -> None:
    """Finish the group's sessions (final_score = bonus + Σ results); close its block and experiment when all ended.

    The experiment is then ``done``, or ``cancelled`` when this end was the experimenter's
    (``by_hand``): their ``end`` ended its last open period, as ``end`` on the whole experiment
    does (the same groups ended one at a time are the same act). A period ended without its
    game, which failed (not ``played``), leaves its sessions unfinished: the block was not played
    through, so its members' runs end ``cancelled`` (:mod:`.statuses`) and their completion
    does not count it. What they earned before the fault counts all the same, nothing more: each
    session's final_score is its bonus plus the results made, as after the experimenter's end,
    so that the sessions, the participants' scores and the page agree with the results. When it
    closes the experiment, the experiment is ``cancelled`` too, whether the experimenter's
    ``end`` or the group itself (its game failing long past the period's end) ended it: ``done``
    says it ran to its end.
    """
    ended_at = to_datetime(at)
    if played:
        conn.execute(_SESSIONS_FINISHED, {"gid": group_id, "at": ended_at})
    else:
        conn.execute(_SESSIONS_SCORED, {"gid": group_id})
    block_id = conn.execute(_GROUP_BLOCK, {"gid": group_id}).scalar_one()
    conn.execute(_BLOCK_DONE, {"bid": block_id})
    status = "done" if played and not by_hand else "cancelled"
    conn.execute(_EXPERIMENT_DONE, {"eid": experiment_id, "at": ended_at, "status": status})


def store_periods(conn: Connection, writes: Sequence[Write]) -> None:
    """What the batch's period starts and ends change: experiments running, then sessions and
    blocks started, then sessions, blocks and experiments finished (an experiment is done only
    after it ran)."""
    starting: dict[int, float] = {}
    started: list[tuple[int, float | None]] = []
    ended: list[tuple[int, int, float | None, bool, bool]] = []
    for write in writes:
        for ev in write.events:
            if ev.channel != "state" or ev.group_id is None:
                continue
            g = write.group
            if ev.value == "period_start":
                starting.setdefault(write.experiment_id, ev.timestamp)
                started.append((ev.group_id, g.started_at if g else ev.timestamp))
            elif ev.value == "period_end":
                # the experimenter's end is stored with what it caused, in the same write
                by_hand = any(e.channel == "control" and _ends(e.value) for e in write.events)
                # a period ended without its game, which failed, is not played through
                played = not any(e.channel == GAME_FAULT and _ends_faulted(e.value) for e in write.events)
                ended.append((write.experiment_id, ev.group_id, g.ended_at if g else ev.timestamp, by_hand, played))
    for experiment_id, at in starting.items():
        experiment_running(conn, experiment_id, at)
    for group_id, started_at in started:
        period_started(conn, group_id, started_at)
    for experiment_id, group_id, ended_at, by_hand, played in ended:
        period_ended(conn, experiment_id, group_id, ended_at, by_hand=by_hand, played=played)


def _ends(value: Any) -> bool:
    """Whether a ``control`` event's value is the experimenter's ``end``."""
    return isinstance(value, dict) and value.get("action") == "end"


def _ends_faulted(value: Any) -> bool:
    """Whether a ``game_fault`` event's value says the period was ended without the game."""
    return isinstance(value, dict) and bool(value.get("ended"))


def changes_a_period(write: Write) -> bool:
    """Whether ``write`` starts or ends a period (:func:`store_periods` has something to do)."""
    return any(ev.channel == "state" and ev.value in ("period_start", "period_end") for ev in write.events)


def rows_only(writes: Sequence[Write]) -> bool:
    """Whether ``writes`` set no status and start or end no period: their rows are all there is.

    Asked of every batch: here the events' channels are gathered first, and the writes looked
    at one by one only when one is ``state``. A call of :func:`changes_a_period` per write, with
    its generator, cost the journal's apply 2,000 instructions a decision more
    (``python -m bench.instructions --part apply``: 132,748 → 130,720)."""
    if any([w.statuses for w in writes]):
        return False
    return "state" not in {ev.channel for w in writes for ev in w.events} or not any(map(changes_a_period, writes))
