"""As of a ``seq``: sessions, groups and blocks as they stood when the event log ended at that ``seq``.

A period's ``state`` event (``period_start``, ``period_end``) is committed in the same transaction
as everything the period's start or end changes (:mod:`.batch`): the group's row, its sessions'
``started_at`` (start) or ``finished_at`` and ``final_score`` (end), its block's status. Nothing
else changes those columns afterwards. So a group's period had started (ended) as of ``seq`` S
exactly when its ``period_start`` (``period_end``) has a ``seq`` of at most S, and a row read
later can be taken back to S by hiding what a later period event wrote: an unstarted session has
no ``started_at``, one whose period had not ended no ``finished_at`` and ``final_score`` 0.0 (what
the database held for it), a group not started is ``waiting``. A period ended without its game
scores its sessions and leaves them unfinished: as of its end, ``final_score`` as stored and no
``finished_at``. The exports read this way, so that every table of one export stops at the same
``last_seq`` as its events and results.

A group's ``state`` events are looked up through the partial index ``ix_events_group_state``:
the query repeats the index's condition (``tables.STATE_ONLY``) word for word, and the values are
compared in Python, because a JSON value compares differently in SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, select, text
from sqlalchemy.engine import Connection

from groups import PERIOD_END, PERIOD_START, Phase

from .outcomes import stored_score
from .tables import STATE_ONLY, blocks, events, groups, memberships, participants, sessions
from .times import iso

#: group ids per query: well under SQLite's bound on a statement's parameters (32766)
_IN_CHUNK = 1000


@dataclass(frozen=True, slots=True)
class Period:
    """A group's period as of a ``seq``: whether its ``period_start`` and ``period_end`` were logged by then."""

    started: bool = False
    ended: bool = False

    @property
    def played(self) -> bool:
        """Its sessions had their final scores, and had finished unless the game failed (then
        ``finished_at`` stays null as stored): a group the experimenter ended before it started
        scores none."""
        return self.started and self.ended

    def phase(self, stored: str) -> str:
        """The group's phase then, given the one stored now.

        Pauses are not ``state`` events: between its start and its end, a group that is paused now
        is taken to have been paused then.
        """
        if self.ended:
            return Phase.ENDED.value
        if not self.started:
            return Phase.WAITING.value
        return stored if stored in (Phase.RUNNING.value, Phase.PAUSED.value) else Phase.RUNNING.value

    def session(self, row: Mapping[Any, Any]) -> dict[str, Any]:
        """A copy of a session row (``started_at``, ``finished_at``, ``final_score``) as it stood then."""
        out = dict(row)
        if not self.started:
            out["started_at"] = None
        if not self.played:
            out["finished_at"] = None
            out["final_score"] = 0.0
        return out

    def group(self, row: Mapping[Any, Any]) -> dict[str, Any]:
        """A copy of a group row (``phase``, ``started_at``, ``ended_at``) as it stood then."""
        out = dict(row)
        out["phase"] = self.phase(row["phase"])
        if not self.started:
            out["started_at"] = None
        if not self.ended:
            out["ended_at"] = None
        return out


def block_status(periods: Collection[Period]) -> str:
    """A block's status from its groups' periods: ``done`` when all ended, ``running`` when any started."""
    if periods and all(p.ended for p in periods):
        return "done"
    return "running" if any(p.started for p in periods) else "pending"


def periods_as_of(conn: Connection, upto_seq: int, group_ids: Iterable[int]) -> dict[int, Period]:
    """Each of these groups' period as of ``upto_seq`` (every id is a key; no event yet: not started)."""
    wanted = sorted(set(group_ids))
    marks: dict[int, set[str]] = {gid: set() for gid in wanted}
    for start in range(0, len(wanted), _IN_CHUNK):
        chunk = wanted[start : start + _IN_CHUNK]
        for gid, value in conn.execute(_state_events(events.c.group_id.in_(chunk), upto_seq)):
            if isinstance(value, str):
                marks[gid].add(value)
    return {gid: _period(seen) for gid, seen in marks.items()}


def experiment_periods_as_of(conn: Connection, experiment_id: int, upto_seq: int) -> dict[int, Period]:
    """Every group of the experiment, with its period as of ``upto_seq`` (their state events in one query)."""
    ids = select(groups.c.id).where(groups.c.experiment_id == experiment_id)
    marks: dict[int, set[str]] = {int(gid): set() for gid in conn.execute(ids).scalars()}
    for gid, value in conn.execute(_state_events(events.c.group_id.in_(ids.scalar_subquery()), upto_seq)):
        if isinstance(value, str) and gid in marks:
            marks[gid].add(value)
    return {gid: _period(seen) for gid, seen in marks.items()}


def _state_events(groups_wanted: Any, upto_seq: int) -> Any:
    """``group_id, value`` of the wanted groups' ``state`` events up to ``upto_seq``.

    The channel's condition is the partial index's own text, not a bound parameter, so the planner
    can see that the index covers the query (see ``seats.last_state_query``).
    """
    return select(events.c.group_id, events.c.value).where(
        and_(groups_wanted, text(STATE_ONLY), events.c.seq <= upto_seq)
    )


def _period(seen: set[str]) -> Period:
    return Period(started=PERIOD_START in seen, ended=PERIOD_END in seen)


def blocks_and_groups_as_of(
    conn: Connection, experiment_id: int, upto_seq: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The experiment's blocks and groups as of ``upto_seq``, in order (the export's JSON document).

    A block: ``index, period_length, num_subperiods, rate_limit, bonus_points, matching, status``.
    A group: ``id, block, index, phase, started_at, ended_at, members`` (codes in member order).
    """
    block_rows = conn.execute(
        select(
            blocks.c.index,
            blocks.c.period_length,
            blocks.c.num_subperiods,
            blocks.c.rate_limit,
            blocks.c.bonus_points,
            blocks.c.matching,
        )
        .where(blocks.c.experiment_id == experiment_id)
        .order_by(blocks.c.index)
    ).mappings().all()
    group_rows = conn.execute(
        select(
            groups.c.id,
            blocks.c.index.label("block"),
            groups.c.index,
            groups.c.phase,
            groups.c.started_at,
            groups.c.ended_at,
            participants.c.code,
        )
        .join(blocks, blocks.c.id == groups.c.block_id)
        .join(memberships, memberships.c.group_id == groups.c.id)
        .join(participants, participants.c.id == memberships.c.participant_id)
        .where(groups.c.experiment_id == experiment_id)
        .order_by(blocks.c.index, groups.c.index, memberships.c.position)
    ).mappings().all()
    periods = experiment_periods_as_of(conn, experiment_id, upto_seq)
    by_id: dict[int, dict[str, Any]] = {}
    by_block: dict[int, list[Period]] = {}
    for g in group_rows:
        entry = by_id.get(g["id"])
        if entry is None:
            period = periods.get(g["id"], Period())
            then = period.group(g)
            entry = by_id[g["id"]] = {
                "id": g["id"],
                "block": g["block"],
                "index": g["index"],
                "phase": then["phase"],
                "started_at": iso(then["started_at"]),
                "ended_at": iso(then["ended_at"]),
                "members": [],
            }
            by_block.setdefault(g["block"], []).append(period)
        entry["members"].append(g["code"])
    return (
        [{**b, "status": block_status(by_block.get(b["index"], []))} for b in block_rows],
        list(by_id.values()),
    )


@dataclass(frozen=True, slots=True)
class Standing:
    """One session as its participant's progress counts it (as of now, or as of a ``seq``)."""

    participant_id: int
    group_id: int
    finished: bool
    #: 0.0 until its period ended, as the database holds it (what it earned once ended without its
    #: game); ``nan`` past a float's range (NULL: :func:`.outcomes.stored_score`)
    final_score: float
    group_ended: bool


def session_standings(conn: Connection, experiment_id: int, upto_seq: int | None = None) -> list[Standing]:
    """Every session of the experiment in participant order, then block order.

    ``upto_seq`` None: as stored now (finished when ``finished_at`` is set, the group ended when
    its phase is ``ended``). Otherwise as of that ``seq`` (see :class:`Period`).
    """
    rows = conn.execute(
        select(
            sessions.c.participant_id,
            sessions.c.group_id,
            sessions.c.finished_at,
            sessions.c.final_score,
            groups.c.phase,
        )
        .join(groups, groups.c.id == sessions.c.group_id)
        .join(blocks, blocks.c.id == sessions.c.block_id)
        .join(participants, participants.c.id == sessions.c.participant_id)
        .where(sessions.c.experiment_id == experiment_id)
        .order_by(participants.c.index, blocks.c.index)
    ).mappings().all()
    if upto_seq is None:
        return [
            Standing(
                r["participant_id"],
                r["group_id"],
                r["finished_at"] is not None,
                stored_score(r["final_score"]),
                r["phase"] == Phase.ENDED.value,
            )
            for r in rows
        ]
    periods = experiment_periods_as_of(conn, experiment_id, upto_seq)
    standings = []
    for r in rows:
        period = periods.get(r["group_id"], Period())
        then = period.session(r)
        standings.append(
            Standing(
                r["participant_id"],
                r["group_id"],
                then["finished_at"] is not None,
                stored_score(then["final_score"]),
                period.ended,
            )
        )
    return standings
