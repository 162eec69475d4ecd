"""What ``synclab verify`` (:mod:`server.verify`) reads: one experiment's stored event log, groups,
sessions and results, in one read transaction, after checking the tables and columns it reads."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, inspect, select
from sqlalchemy.engine import Connection

from groups import Timing

from .exceptions import SchemaError
from .findings import UnknownExperiment
from .storage import (
    blocks,
    events,
    experiments,
    groups,
    memberships,
    participants,
    results,
    sessions,
    stored_score,
    to_epoch,
)

#: the tables and columns this module reads (checked before reading, without writing anything)
_READS = (experiments, blocks, participants, groups, memberships, events, sessions, results)


@dataclass(frozen=True, slots=True)
class StoredEvent:
    seq: int
    at: float
    group_id: int | None
    participant_id: int | None
    channel: str
    value: Any


@dataclass(slots=True)
class StoredGroup:
    id: int
    block_index: int
    phase: str
    timing: Timing
    bonus: float
    #: member codes in member order, and participant id -> code
    members: list[str] = field(default_factory=list)
    codes: dict[int, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StoredSession:
    id: int
    code: str
    group_id: int
    started: bool
    finished: bool
    #: ``nan`` past a float's range (stored NULL: ``storage.stored_score``)
    final_score: float


@dataclass(frozen=True, slots=True)
class StoredResult:
    session_id: int
    seq: int
    subperiod: int | None
    decision: Any
    score: float


@dataclass(slots=True)
class StoredLog:
    experiment: dict[str, Any]
    events: list[StoredEvent]
    groups: list[StoredGroup]
    sessions: list[StoredSession]
    results: list[StoredResult]


@contextlib.contextmanager
def snapshot(engine: Engine) -> Iterator[Connection]:
    """One read transaction, so a running experiment is read at one point in time."""
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        elif engine.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN")  # pysqlite opens no transaction for reads by itself
        yield conn


def check_schema(conn: Connection) -> None:
    """Raise :class:`SchemaError` when a table or column this module reads is missing."""
    stored = inspect(conn)
    for table in _READS:
        if not stored.has_table(table.name):
            raise SchemaError(f"the database has no table {table.name!r}: is DATABASE_URL a synclab database?")
        have = {c["name"] for c in stored.get_columns(table.name)}
        missing = [c.name for c in table.columns if c.name not in have]
        if missing:
            raise SchemaError(f"table {table.name!r} lacks {missing}: the database was made by an older synclab")


def load_log(conn: Connection, code: str) -> StoredLog:
    experiment = conn.execute(select(experiments).where(experiments.c.code == code)).mappings().first()
    if experiment is None:
        raise UnknownExperiment(f"no experiment with code {code!r}")
    eid = experiment["id"]
    logged = [
        StoredEvent(int(e["seq"]), to_epoch(e["timestamp"]) or 0.0, e["group_id"], e["participant_id"], e["channel"],
               e["value"])
        for e in conn.execute(
            select(events.c.seq, events.c.timestamp, events.c.group_id, events.c.participant_id,
                   events.c.channel, events.c.value)
            .where(events.c.experiment_id == eid)
            .order_by(events.c.seq)
        ).mappings()
    ]
    by_id: dict[int, StoredGroup] = {}
    for g in conn.execute(
        select(groups.c.id, groups.c.phase, blocks.c.index.label("block_index"), blocks.c.period_length,
               blocks.c.num_subperiods, blocks.c.rate_limit, blocks.c.bonus_points)
        .join(blocks, blocks.c.id == groups.c.block_id)
        .where(groups.c.experiment_id == eid)
        .order_by(blocks.c.index, groups.c.index)
    ).mappings():
        timing = Timing(g["period_length"], g["num_subperiods"], g["rate_limit"])
        by_id[g["id"]] = StoredGroup(g["id"], g["block_index"], g["phase"], timing, float(g["bonus_points"] or 0.0))
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
        StoredSession(s["id"], s["code"], s["group_id"], s["started_at"] is not None, s["finished_at"] is not None,
                 stored_score(s["final_score"]))
        for s in conn.execute(
            select(sessions.c.id, participants.c.code, sessions.c.group_id, sessions.c.started_at,
                   sessions.c.finished_at, sessions.c.final_score)
            .join(participants, participants.c.id == sessions.c.participant_id)
            .where(sessions.c.experiment_id == eid)
            .order_by(sessions.c.group_id, participants.c.index)
        ).mappings()
    ]
    scored = [
        StoredResult(r["session_id"], int(r["seq"]), r["subperiod"], r["decision"], float(r["score"]))
        for r in conn.execute(
            select(results.c.session_id, results.c.seq, results.c.subperiod, results.c.decision, results.c.score)
            .join(sessions, sessions.c.id == results.c.session_id)
            .where(results.c.experiment_id == eid)
            .order_by(results.c.seq)
        ).mappings()
    ]
    return StoredLog(dict(experiment), logged, list(by_id.values()), people, scored)

