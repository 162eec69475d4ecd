"""The journal's apply stores, value for value and type for type, what one plain SQLAlchemy
statement per row stores: the batch's shortcuts (rows many a statement, a group's state written
once, bools and times converted before the driver) change how, never what."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection

from server.storage import (
    JOURNAL_MARKER,
    ConnectionChange,
    GroupSpec,
    GroupUpdate,
    NewBlock,
    NewEvent,
    NewExperiment,
    NewResult,
    NewTick,
    Write,
    apply_numbered,
    create_schema,
    insert_experiment,
    load_group,
    make_engine,
    new_code,
    to_datetime,
)
from server.storage.frameids import catch_up
from server.storage.groupstates import HeldStates
from server.storage.periods import store_periods
from server.storage.statuses import set_statuses
from server.storage.tables import (
    client_ids,
    connections,
    events,
    experiments,
    groups,
    meta,
    metadata,
    results,
    ticks,
)

#: a time with all six digits of microseconds, and one that rounds into the next second
AT = 1_800_000_000.123457
LATE = 1_800_000_001.9999996


def _experiments(path: Path) -> list[list[GroupSpec]]:
    """Two bimatrix experiments of two groups of two each, stored in a new database at ``path``."""
    engine = make_engine(f"sqlite:///{path}")
    try:
        create_schema(engine)
        made = []
        for _ in range(2):
            codes = [new_code() for _ in range(4)]
            block = NewBlock(0, 60.0, None, None, 1.5, "fixed", [[0, 1], [2, 3]])
            experiment_id = insert_experiment(engine, NewExperiment(new_code(), "bimatrix", {}, 2, codes, [block], AT))
            with engine.connect() as conn:
                ids = conn.execute(
                    select(groups.c.id).where(groups.c.experiment_id == experiment_id).order_by(groups.c.id)
                ).scalars().all()
            specs = [load_group(engine, int(group_id)) for group_id in ids]
            made.append([spec for spec in specs if spec is not None])
        return made
    finally:
        engine.dispose()


def _batches(made: list[list[GroupSpec]]) -> list[list[Write]]:
    """Three applies' writes over both experiments, each event numbered as the journal numbers it."""
    last: dict[int, int] = {}

    def numbered(write: Write) -> Write:
        first = last.get(write.experiment_id, 0) + 1
        write.seqs = list(range(first, first + len(write.events)))
        last[write.experiment_id] = first - 1 + len(write.events)
        return write

    def state(spec: GroupSpec, phase: str, at: float, decisions: dict[str, Any], ended: float | None = None) -> GroupUpdate:
        return GroupUpdate(spec.group_id, phase, AT, AT + 60, ended, 0, decisions, {"n": len(decisions)},
                           {"flow": {code: at * 1e-9 for code in decisions}, "paused_at": None})

    def decision(spec: GroupSpec, member: int, value: float, at: float, client_id: str | None, bot: bool = False) -> Write:
        code = spec.members[member]
        shown = {c: (value if c == code else 0.5) for c in spec.members}
        return numbered(Write(spec.experiment_id, [
            NewEvent("decisions", value, at, spec.group_id, spec.member_ids[code], client_id, bot),
            NewEvent("group_decisions", shown, at, spec.group_id),
        ], state(spec, "running", at, shown)))

    (a1, a2), (b1, b2) = made
    start = [
        numbered(Write(spec.experiment_id, [NewEvent("state", "period_start", AT, spec.group_id)],
                       state(spec, "running", AT, {c: 0.5 for c in spec.members})))
        for spec in (a1, a2, b1)
    ]
    plain = [
        decision(a1, 0, 0.25, AT + 0.5, "c-1"),
        decision(b1, 1, 1.0, AT + 0.5, None, bot=True),
        decision(a1, 1, 0.0, AT + 0.75, "c-2"),  # a1 twice: its last state is stored
        numbered(Write(b1.experiment_id, [], state(b1, "running", AT + 0.8, {"x": None}))),  # no event: last_seq kept
        decision(a2, 0, 0.125, LATE, ""),
        numbered(Write(a1.experiment_id, [], None, ConnectionChange(
            "conn-1", a1.member_ids[a1.members[0]], a1.experiment_id, opened=AT + 0.1,
            user_agent="agent " * 200, address="203.0.113.9, " * 10, route="redwood"))),
        numbered(Write(b2.experiment_id, [NewEvent("ping", {"t": [1, 2.5, "✓", True, None]}, AT + 1)], None,
                       ConnectionChange("conn-2", b2.member_ids[b2.members[1]], b2.experiment_id, opened=AT + 1))),
        numbered(Write(b2.experiment_id, statuses=[(b2.member_ids[b2.members[0]], "dropped")])),  # a status alone
    ]
    code = a1.members[0]
    end = [
        decision(a1, 0, 0.5, AT + 2, "c-3"),
        numbered(Write(a1.experiment_id, [], None, ConnectionChange(
            "conn-1", a1.member_ids[code], a1.experiment_id, closed=AT + 59.5, close_code=1006))),
        numbered(Write(
            a1.experiment_id,
            [NewEvent("state", "period_end", AT + 60, a1.group_id), NewEvent("result", {"score": 2.5}, AT + 60, a1.group_id)],
            state(a1, "done", AT + 60, {code: 0.5}, ended=AT + 60),
            None,
            [NewResult(1, a1.session_ids[code], None, 0.5, 2.5), NewResult(1, a1.session_ids[a1.members[1]], None, 0.0, 1e-3)],
            [NewTick(a1.group_id, "subperiod", 3, AT + 60, AT + 60.004, True, None),
             NewTick(a1.group_id, "rate", 4, AT + 60, AT + 60, False, {code: 0.5})],
            [(a1.member_ids[m], "finished") for m in a1.members],
        )),
        decision(b1, 0, 0.75, AT + 61, "c-4"),
    ]
    # the rows-only batches apart: an apply holds their groups' states for its commit
    return [start, plain[:-1], plain[-1:], end[:2], end[2:3], end[3:]]


def _row_by_row(conn: Connection, writes: Sequence[Write], marker: tuple[str, str]) -> None:
    """The writes stored one SQLAlchemy statement per row, in their order, through SQLAlchemy's
    types; the period's and statuses' changes as the apply makes them (not what is compared here)."""
    with conn.begin():
        for write in writes:
            if write.events:
                conn.execute(update(experiments).where(experiments.c.id == write.experiment_id)
                             .values(last_seq=experiments.c.last_seq + len(write.events)))
            for ev, seq in zip(write.events, write.seqs, strict=True):
                conn.execute(insert(events).values(
                    experiment_id=write.experiment_id, seq=seq, timestamp=to_datetime(ev.timestamp), group_id=ev.group_id,
                    participant_id=ev.participant_id, channel=ev.channel, value=ev.value, client_id=ev.client_id, bot=ev.bot,
                ))
                if ev.client_id is not None and ev.participant_id is not None:
                    conn.execute(insert(client_ids).values(
                        participant_id=ev.participant_id, client_id=ev.client_id, experiment_id=write.experiment_id, seq=seq,
                    ))
            if write.group is not None:
                g = write.group
                values: dict[str, Any] = {
                    "phase": g.phase, "subperiod": g.subperiod, "decisions": g.decisions, "vars": g.vars, "clock": g.clock,
                    **{name: None if at is None else to_datetime(at)
                       for name, at in (("started_at", g.started_at), ("ends_at", g.ends_at), ("ended_at", g.ended_at))},
                }
                if write.seqs:
                    values["last_seq"] = write.seqs[-1]
                conn.execute(update(groups).where(groups.c.id == g.group_id).values(values))
            c = write.connection
            if c is not None and c.opened is not None:
                conn.execute(insert(connections).values(
                    id=c.id, participant_id=c.participant_id, experiment_id=c.experiment_id,
                    connected_at=to_datetime(c.opened), user_agent=(c.user_agent or "")[:512] or None,
                    address=(c.address or "")[:64] or None, route=c.route, worker=c.worker,
                ))
            if c is not None and c.closed is not None:
                conn.execute(update(connections).where(connections.c.id == c.id)
                             .values(disconnected_at=to_datetime(c.closed), close_code=c.close_code))
            for r in write.results:
                conn.execute(insert(results).values(
                    session_id=r.session_id, experiment_id=write.experiment_id, seq=write.seqs[r.event],
                    subperiod=r.subperiod, decision=r.decision, score=r.score,
                ))
            for t in write.ticks:
                conn.execute(insert(ticks).values(
                    experiment_id=write.experiment_id, group_id=t.group_id, kind=t.kind, index=t.index,
                    scheduled_at=to_datetime(t.scheduled_at), actual_at=to_datetime(t.actual_at), late=t.late,
                    snapshot=t.snapshot,
                ))
        store_periods(conn, writes)
        set_statuses(conn, [s for w in writes for s in w.statuses])
        key, value = marker
        conn.execute(sqlite_insert(meta).values(key=key, value=value)
                     .on_conflict_do_update(index_elements=[meta.c.key], set_={"value": value}))


def _held(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every table's rows, each value as SQLite's ``quote()`` writes it (its type shows: 1, 1.0, '1')."""
    with sqlite3.connect(path) as raw:
        held = {}
        for table in sorted(metadata.tables):
            columns = [row[1] for row in raw.execute(f'PRAGMA table_info("{table}")')]
            quoted = ", ".join(f'quote("{c}")' for c in columns)
            order = "participant_id, client_id" if table == "client_ids" else "rowid"  # (its key: no row id)
            held[table] = raw.execute(f'SELECT {quoted} FROM "{table}" ORDER BY {order}').fetchall()
    return held


def _held_apply(held: HeldStates) -> Callable[[Connection, Sequence[Write], tuple[str, str]], None]:
    """``apply_numbered`` as the apply thread calls it: the transaction left open, the groups' states held."""

    def store(conn: Connection, writes: Sequence[Write], marker: tuple[str, str]) -> None:
        apply_numbered(conn, writes, marker, commit=False, held=held)

    return store


@pytest.mark.parametrize("commits", ["each apply", "once, the states held"])
def test_the_journal_s_apply_stores_what_one_sqlalchemy_statement_per_row_stores(tmp_path: Path, commits: str) -> None:
    """Six applies over two experiments (events with and without participant, client id and
    bot, a group's state twice in one apply and once without an event, connections opened, cut
    to their columns and closed, results, ticks late or not, a period's start and end, statuses):
    the database the apply made and the one made row by row hold the same rows, value for value.
    So too when the applies' transaction stays open and their groups' states are held for its
    commit, as the apply thread's are (:mod:`server.storage.groupstates`): a batch that starts or
    ends a period or sets a status writes those held before it first."""
    made = _experiments(tmp_path / "apply.db")
    with sqlite3.connect(tmp_path / "apply.db") as source, sqlite3.connect(tmp_path / "row by row.db") as copy:
        source.backup(copy)
    held = HeldStates()
    how: dict[str, Callable[[Connection, Sequence[Write], tuple[str, str]], None]] = {
        "apply": apply_numbered if commits == "each apply" else _held_apply(held), "row by row": _row_by_row,
    }
    for name, store in how.items():
        engine = make_engine(f"sqlite:///{tmp_path / (name + '.db')}")
        try:
            with engine.connect() as conn:
                for n, writes in enumerate(_batches(made)):
                    store(conn, writes, (JOURNAL_MARKER, f"1:{n}:{n * 100}"))
                if name == "apply" and commits != "each apply":
                    assert set(held.latest) == {made[1][0].group_id}  # the last apply's group, not written yet
                    raw: Any = conn.connection.dbapi_connection
                    cursor = raw.cursor()
                    held.store(cursor, engine)
                    cursor.close()
                    raw.commit()
                    assert not held.latest
            if name == "apply":
                assert catch_up(engine) == 5  # the client ids, added as a start adds what the apply left
        finally:
            engine.dispose()
    applied, by_row = _held(tmp_path / "apply.db"), _held(tmp_path / "row by row.db")
    assert len(applied["events"]) == 18 and len(applied["ticks"]) == 2 and len(applied["results"]) == 2
    assert len(applied["client_ids"]) == 5
    assert {"'finished'", "'dropped'"} <= {row[-1] for row in applied["participants"]}
    for table in by_row:
        assert applied[table] == by_row[table], table
