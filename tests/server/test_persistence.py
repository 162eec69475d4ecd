"""Persist before broadcast, nothing lost or duplicated, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, inspect, select, text
from websockets.asyncio.client import connect

from server.exceptions import SchemaError
from server.storage import (
    ConnectionChange,
    GroupSpec,
    GroupUpdate,
    NewBlock,
    NewEvent,
    NewExperiment,
    NewResult,
    NewTick,
    Write,
    commit_writes,
    create_schema,
    insert_experiment,
    last_state_query,
    list_events,
    load_group,
    make_engine,
    new_code,
    to_datetime,
    to_epoch,
)
from server.storage import connections as connections_table
from server.storage import events as events_table
from server.storage import groups as groups_table
from server.storage import results as results_table
from server.storage import ticks as ticks_table
from tests.server.harness import Client, Harness, timeout, until_state
from tests.server.test_blocks import decide
from tests.server.test_cli import run


def _stored_seqs(engine: Engine, seqs: list[int]) -> set[int]:
    with engine.connect() as conn:
        rows = conn.execute(select(events_table.c.seq).where(events_table.c.seq.in_(seqs)))
        return {int(r[0]) for r in rows}


async def _start(harness: Harness, exp: dict[str, Any]) -> list[Client]:
    clients = [await harness.connect(p["code"]) for p in exp["participants"]]
    for client in clients:
        assert (await client.expect("state"))["payload"] == "period_start"
    return clients


async def test_a_receiver_never_sees_a_decision_that_is_not_stored(direct_server: Harness, database_url: str) -> None:
    """Every broadcast a member receives is already in the database when it arrives."""
    exp = await direct_server.create(participants=2, group_size=2)
    a, b = await _start(direct_server, exp)
    engine = make_engine(database_url)
    try:
        for i in range(30):
            await a.send("decisions", (i % 10) / 10)
            await b.send("decisions", ((i + 5) % 10) / 10)
        seen: list[int] = []
        async with asyncio.timeout(timeout(10)):
            while len(seen) < 60:
                frame = await b.expect("group_decisions")
                # checked at once, on the frame's arrival, by another connection
                assert _stored_seqs(engine, [frame["seq"]]) == {frame["seq"]}
                seen.append(frame["seq"])
        assert seen == sorted(seen)
    finally:
        engine.dispose()


async def test_a_failed_commit_broadcasts_nothing_and_answers_with_an_error(
    direct_server: Harness, database_url: str
) -> None:
    """With the events table gone, a decision is refused, nobody hears it, and nothing changes."""
    exp = await direct_server.create(participants=2, group_size=2)
    a, b = await _start(direct_server, exp)
    a_code = exp["participants"][0]["code"]
    await b.expect("group_decisions")
    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE events RENAME TO events_away"))
        await a.send("decisions", 0.9, frame_id="lost")
        refused = await a.expect("error")
        assert refused["payload"]["code"] == "not_persisted"
        assert refused["payload"]["id"] == "lost"
        assert await b.silent(0.5), "the other member heard a decision that was not stored"
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE events_away RENAME TO events"))
        await a.send("decisions", 0.2, frame_id="kept")
        frame = await b.expect("group_decisions")
        assert frame["payload"][a_code] == 0.2
        assert (await a.expect("ack"))["payload"]["id"] == "kept"
        # the refused id may be retried and is stored then
        await a.send("decisions", 0.9, frame_id="lost")
        assert (await b.expect("group_decisions"))["payload"][a_code] == 0.9
    finally:
        engine.dispose()
    stored = await direct_server.events(exp["code"])
    decisions = [e["value"] for e in stored if e["channel"] == "decisions"]
    assert decisions == [0.2, 0.9]
    assert [e["seq"] for e in stored] == list(range(1, len(stored) + 1))


async def test_fifty_participants_deciding_at_once_lose_and_duplicate_nothing(any_server: Harness) -> None:
    """50 participants in groups of 5 send 20 decisions each as fast as they can."""
    n, size, per = 50, 5, 20
    exp = await any_server.create(game="public_goods", participants=n, group_size=size, period_length=600)
    clients = await _start(any_server, exp)
    codes = [p["code"] for p in exp["participants"]]

    async def play(index: int, client: Client) -> None:
        for k in range(per):
            await client.send("decisions", float(k % 10), frame_id=f"{index}-{k}")

    await asyncio.gather(*(play(i, c) for i, c in enumerate(clients)))

    async def collect(client: Client) -> list[int]:
        seqs: list[int] = []
        async with asyncio.timeout(timeout(30)):
            while len(seqs) < size * per + 1:  # +1: the broadcast of period_start
                frame = await client.next()
                if frame["channel"] == "group_decisions" and frame["seq"] > 0:
                    seqs.append(frame["seq"])
                elif frame["channel"] == "error":
                    raise AssertionError(frame)
        return seqs

    received = await asyncio.gather(*(collect(c) for c in clients))
    stored = await any_server.events(exp["code"])
    broadcasts: dict[int, list[int]] = {}
    for e in stored:
        if e["channel"] == "group_decisions":
            broadcasts.setdefault(e["group"], []).append(e["seq"])
    assert len(broadcasts) == n // size
    for g, seqs in enumerate(broadcasts.values()):
        assert len(seqs) == size * per + 1
        for member in received[g * size : (g + 1) * size]:
            assert member == seqs, "a member missed, repeated or reordered a broadcast"

    assert [e["seq"] for e in stored] == list(range(1, len(stored) + 1)), "seq has gaps"
    decisions = [e for e in stored if e["channel"] == "decisions"]
    assert len(decisions) == n * per
    assert Counter(e["participant"] for e in decisions) == {code: per for code in codes}
    runtime = any_server.runtime
    writer = runtime.writer
    # 1000 decisions sent at once: a transaction per write would mean no group commit
    assert writer.batches * 2 < writer.writes, "no group commit happened"


async def test_acks_arrive_for_every_frame_with_an_id(any_server: Harness) -> None:
    """A participant that sends 50 frames with ids gets 50 acks with increasing seqs."""
    exp = await any_server.create(participants=2, group_size=2)
    a, _ = await _start(any_server, exp)
    for k in range(50):
        await a.send("decisions", k / 50, frame_id=f"k{k}")
    acks = []
    async with asyncio.timeout(timeout(10)):
        while len(acks) < 50:
            acks.append((await a.expect("ack"))["payload"])
    assert [x["id"] for x in acks] == [f"k{k}" for k in range(50)]
    seqs = [x["seq"] for x in acks]
    assert seqs == sorted(seqs) and len(set(seqs)) == 50


def test_processes_creating_the_schema_together_all_succeed(database_url: str, tmp_path: Path) -> None:
    """Three processes that start on an empty database at once all come up. On SQLite, one of two
    that switch a new file to WAL together used to fail at once ("database is locked"), about one
    start in thirty: a few new files make that visible."""
    script = "import sys; from server.storage import make_engine, create_schema; create_schema(make_engine(sys.argv[1]))"
    sqlite = database_url.startswith("sqlite")
    urls = [f"sqlite:///{tmp_path / f'race{i}.db'}" for i in range(4)] if sqlite else [database_url]
    for url in urls:
        procs = [
            subprocess.Popen([sys.executable, "-c", script, url], stderr=subprocess.PIPE, text=True)
            for _ in range(3)
        ]
        for proc in procs:
            _, err = proc.communicate(timeout=timeout(60))
            assert proc.returncode == 0, err
        engine = make_engine(url)
        try:
            names = set(inspect(engine).get_table_names())
        finally:
            engine.dispose()
        assert {"experiments", "events", "groups", "sessions", "results", "connections"} <= names


async def test_each_connection_is_stored_with_its_times_and_user_agent(any_server: Harness, database_url: str) -> None:
    """A connection's row has connected/disconnected times, user agent and close code."""
    exp = await any_server.create(participants=2, group_size=2)
    a = await any_server.connect(exp["participants"][0]["code"])
    await a.expect("hello")
    await a.close()
    engine = make_engine(database_url)
    try:
        async with asyncio.timeout(timeout(5)):
            while True:
                with engine.connect() as conn:
                    rows = conn.execute(
                        text("SELECT connected_at, disconnected_at, user_agent, close_code FROM connections")
                    ).all()
                if rows and rows[0][1] is not None:
                    break
                await asyncio.sleep(0.05)
    finally:
        engine.dispose()
    (connected_at, disconnected_at, user_agent, close_code), = rows
    assert connected_at is not None and disconnected_at >= connected_at
    assert "websockets" in user_agent.lower() or "python" in user_agent.lower()
    assert close_code == 1000


async def test_an_address_longer_than_its_column_is_stored_cut_and_its_member_plays(any_server: Harness) -> None:
    """A client on the loopback (a host uvicorn trusts by default, as every host with
    ``FORWARDED_ALLOW_IPS=*``) names its own address in ``X-Forwarded-For``: one of 100 characters
    is stored cut to the column's 64, and its member's arrival with it. On PostgreSQL the column
    refused it: the arrival's write was refused alone (logged as the game's), the member never
    counted, and the period never started."""
    exp = await any_server.create(participants=2, group_size=2)
    a_code, b_code = (p["code"] for p in exp["participants"])
    a = await any_server.connect(a_code)
    far = await connect(f"{any_server.ws_base}/ws/p/{b_code}", additional_headers={"X-Forwarded-For": "h" * 100},
                        open_timeout=timeout(5), close_timeout=timeout(2))
    b = Client(far)
    any_server.clients.append(b)
    for client in (a, b):
        await until_state(client, "period_start", 5)

    def addresses(engine: Engine) -> list[str]:
        with engine.connect() as conn:
            return sorted(conn.execute(select(connections_table.c.address)).scalars())

    assert await any_server.runtime.database.read(addresses) == ["127.0.0.1", "h" * 64]


async def test_a_connection_lost_without_a_close_frame_is_stored_with_1006(any_server: Harness, database_url: str) -> None:
    """A client gone without a close frame (its TCP connection cut) is stored as lost, 1006, not as
    1005 ("no status", what uvicorn tells the app); a close frame's code is kept."""
    exp = await any_server.create(participants=2, group_size=2)
    lost, coded = [await any_server.connect(p["code"]) for p in exp["participants"]]
    for client in (lost, coded):
        await client.expect("hello")
    lost.ws.transport.abort()
    await coded.ws.close(4321, "bye")
    codes = {p["code"]: code for p, code in zip(exp["participants"], (1006, 4321), strict=True)}
    engine = make_engine(database_url)
    try:
        async with asyncio.timeout(timeout(5)):
            while True:
                await any_server.events(exp["code"])  # a read waits for the journal's apply
                with engine.connect() as conn:
                    rows = dict(conn.execute(text(
                        "SELECT p.code, c.close_code FROM connections c JOIN participants p ON p.id = c.participant_id"
                        " WHERE c.disconnected_at IS NOT NULL"
                    )).all())
                if len(rows) == 2:
                    break
                await asyncio.sleep(0.05)
    finally:
        engine.dispose()
    assert rows == codes


async def test_decisions_are_acknowledged_while_an_experiment_is_being_created(
    any_server: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The largest experiment takes seconds to store: meanwhile the decisions of the experiments
    under way are stored and acknowledged as ever (with the journal, and on PostgreSQL), where
    they waited behind the creation on the writer thread. The creation held open here until a
    decision made during it was acknowledged; then it completes."""
    exp = await any_server.create(participants=2, group_size=2, period_length=30)
    row, _col = [await any_server.connect(p["code"]) for p in exp["participants"]]
    await until_state(row, "period_start")
    entered, release = threading.Event(), threading.Event()
    real = insert_experiment

    def held(engine: Engine, spec: Any) -> int:
        entered.set()
        release.wait(timeout(10))
        return real(engine, spec)

    monkeypatch.setattr("server.experimentapi.insert_experiment", held)
    creating = asyncio.ensure_future(any_server.http.post("/api/experiments", json={
        "game": "public_goods", "participants": 8, "group_size": 4}))
    try:
        assert await asyncio.to_thread(entered.wait, timeout(5)), "the creation never began"
        seq = await decide(row, 0.3, "during")
        assert not creating.done()  # acknowledged while the creation was still under way
    finally:
        release.set()
    made = await creating
    assert made.status_code == 201, made.text
    assert [e["seq"] for e in await any_server.events(exp["code"]) if e["channel"] == "decisions"] == [seq]
    assert len((await any_server.http.get(f"/api/experiments/{made.json()['code']}")).json()["participants"]) == 8


def test_a_database_whose_table_was_changed_by_hand_is_refused_with_what_it_lacks(tmp_path: Path) -> None:
    """At the newest revision but missing a column: start-up stops with a message naming both."""
    url = f"sqlite:///{tmp_path}/old.db"
    engine = make_engine(url)
    try:
        create_schema(engine)
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE groups DROP COLUMN clock"))
        with pytest.raises(SchemaError, match=r"'groups' lacks \['clock'\]"):
            create_schema(engine)
    finally:
        engine.dispose()
    result = run(tmp_path, "serve", "--port", "0", DATABASE_URL=url)
    assert result.returncode == 2 and "lacks ['clock']" in result.stderr


def test_the_writers_prepared_statements_store_what_sqlalchemy_reads_back(engine: Engine) -> None:
    """commit_writes runs precompiled SQL on the driver's cursor: every type comes back as written."""
    experiment_id, spec, codes = one_group_of_two(engine)
    a, b = (spec.member_ids[c] for c in codes)
    at = 1_700_000_000.123456
    values: list[Any] = [None, 0.5, "é ✓ \"quoted\"", {"nested": [1, 2.5, None, {"x": True}]}, [], 7]
    write = Write(
        experiment_id,
        [NewEvent("decisions", v, at + i, spec.group_id, a, f"id-{i}") for i, v in enumerate(values)],
        GroupUpdate(spec.group_id, "running", at, at + 60, None, 2, {codes[0]: 0.25, codes[1]: None},
                    {"k": [1, {"y": "z"}]}, {"flow": {codes[0]: 1.5}, "paused_at": None}),
        ConnectionChange("c-1", b, experiment_id, opened=at, user_agent="ua " * 300, address="127.0.0.1"),
        [NewResult(0, spec.session_ids[codes[0]], 1, {"mix": 0.25}, 3.5)],
        [NewTick(spec.group_id, "subperiod", 1, at, at + 0.004, False, {codes[0]: 0.25})],
    )
    closed = Write(experiment_id, [], None, ConnectionChange("c-1", b, experiment_id, closed=at + 9, close_code=4000))
    with engine.connect() as conn:
        commit_writes(conn, [write])
        commit_writes(conn, [closed])
    assert write.seqs == list(range(1, len(values) + 1))
    stored = list_events(engine, experiment_id, 0, 0, 100)
    assert [e["value"] for e in stored] == values
    assert [e["seq"] for e in stored] == write.seqs
    with engine.connect() as conn:
        rows = conn.execute(
            select(events_table.c.timestamp, events_table.c.client_id).order_by(events_table.c.seq)
        ).all()
        group = conn.execute(select(groups_table).where(groups_table.c.id == spec.group_id)).mappings().one()
        conn_row = conn.execute(select(connections_table)).mappings().one()
        result = conn.execute(select(results_table)).mappings().one()
        tick = conn.execute(select(ticks_table)).mappings().one()
    assert [r[1] for r in rows] == [f"id-{i}" for i in range(len(values))]
    assert [to_epoch(r[0]) for r in rows] == pytest.approx([at + i for i in range(len(values))], abs=1e-6)
    assert (group["phase"], group["subperiod"], group["last_seq"]) == ("running", 2, len(values))
    assert group["decisions"] == {codes[0]: 0.25, codes[1]: None}
    assert group["vars"] == {"k": [1, {"y": "z"}]}
    assert group["clock"] == {"flow": {codes[0]: 1.5}, "paused_at": None}
    assert to_epoch(group["ends_at"]) == pytest.approx(at + 60, abs=1e-6) and group["ended_at"] is None
    assert len(conn_row["user_agent"]) == 512 and conn_row["close_code"] == 4000
    assert to_epoch(conn_row["disconnected_at"]) == pytest.approx(at + 9, abs=1e-6)
    assert (result["seq"], result["decision"], result["score"]) == (1, {"mix": 0.25}, 3.5)
    assert (tick["kind"], tick["index"], tick["late"], tick["snapshot"]) == ("subperiod", 1, False, {codes[0]: 0.25})


def one_group_of_two(engine: Engine) -> tuple[int, GroupSpec, list[str]]:
    """A stored bimatrix experiment of one group of two: its id, the group, the member codes."""
    codes = [new_code() for _ in range(2)]
    block = NewBlock(0, 60.0, 3, None, 0.0, "fixed", [[0, 1]])
    experiment_id = insert_experiment(engine, NewExperiment(new_code(), "bimatrix", {}, 2, codes, [block], 1e9))
    with engine.connect() as conn:
        group_id = conn.execute(select(groups_table.c.id).where(groups_table.c.experiment_id == experiment_id)).scalar_one()
    spec = load_group(engine, int(group_id))
    assert spec is not None
    return experiment_id, spec, codes


def test_the_writer_stores_exactly_what_a_sqlalchemy_insert_stores(engine: Engine) -> None:
    """Times and JSON go to the driver already converted (and times remembered): the stored form is SQLAlchemy's."""
    experiment_id, spec, codes = one_group_of_two(engine)
    member = spec.member_ids[codes[0]]
    cases: list[tuple[float, Any]] = [
        (1_700_000_000.1234567, 0.1 + 0.2),  # a time past microseconds; a float that needs 17 digits
        (1_700_000_000.1234567, {"a": [1, None, "✓"]}),  # the same time again: from the writer's memory
        (0.0, None),
        (1_999_999_999.999999, "text"),
    ]
    write = Write(
        experiment_id,
        [NewEvent("decisions", value, at, spec.group_id, member, f"w-{i}") for i, (at, value) in enumerate(cases)],
    )
    with engine.connect() as conn:
        commit_writes(conn, [write])
    with engine.begin() as conn:
        conn.execute(events_table.insert(), [
            {"experiment_id": experiment_id, "seq": 100 + i, "timestamp": to_datetime(at), "group_id": spec.group_id,
             "participant_id": member, "channel": "decisions", "value": value, "client_id": f"sa-{i}"}
            for i, (at, value) in enumerate(cases)
        ])
    raw = "SELECT timestamp, value FROM events WHERE client_id = :id"
    with engine.connect() as conn:  # text(): the values as the database holds them, not read back through types
        for i in range(len(cases)):
            ours = conn.execute(text(raw), {"id": f"w-{i}"}).one()
            theirs = conn.execute(text(raw), {"id": f"sa-{i}"}).one()
            assert tuple(ours) == tuple(theirs)


def test_a_groups_last_state_is_found_through_the_index_of_state_events_only(engine: Engine) -> None:
    """Events are not indexed by group (a page per group in every commit): only ``state`` events are."""
    experiment_id, spec, codes = one_group_of_two(engine)
    member = spec.member_ids[codes[0]]
    at = 1_700_000_000.0
    channels = ["state", "decisions", "state", "decisions", "decisions"]
    values: list[Any] = ["period_start", 1, "paused", 2, 3]
    write = Write(experiment_id, [
        NewEvent(channel, value, at + i, spec.group_id, None if channel == "state" else member)
        for i, (channel, value) in enumerate(zip(channels, values, strict=True))
    ])
    with engine.connect() as conn:
        commit_writes(conn, [write])
    reloaded = load_group(engine, spec.group_id)
    assert reloaded is not None and reloaded.last_state == {"seq": 3, "ts": at + 2, "value": "paused"}
    indexes = {i["name"]: i for i in inspect(engine).get_indexes("events")}
    assert "ix_events_group_state" in indexes and "ix_events_group_id" not in indexes
    index = indexes["ix_events_group_state"]
    assert index["column_names"] == ["group_id", "seq"]
    where = index["dialect_options"][f"{engine.dialect.name}_where"]
    assert "channel" in str(where) and "'state'" in str(where)
    if engine.dialect.name == "sqlite":  # the planner takes it: the query repeats the condition's text
        query = last_state_query(spec.group_id).compile(engine, compile_kwargs={"literal_binds": True})
        with engine.connect() as conn:
            plan = " ".join(str(r[-1]) for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {query}"))
        assert "USING INDEX ix_events_group_state" in plan
