"""A write the database refuses for a reason of its own (a client id already stored, an integer
past a column's range) is refused alone: the batch it failed is stored in parts, in its order,
without it and its group's later writes; the other groups' writes are stored and acknowledged. A
failure of the database itself (a lock not given) still fails the writes it met, and everything
queued behind them, as any failed batch. (A NUL character in a frame's id or a channel's name,
which PostgreSQL's text columns refuse, is refused where it comes in: see
``tests/server/test_participant_socket.py`` and ``tests/groups/test_group.py``.)"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from sqlalchemy import Engine, event, select

from server.exceptions import NotAuthority, NotPersisted, Unstorable
from server.experiments import parse_request, plan
from server.storage import (
    Database,
    EventWriter,
    GroupUpdate,
    NewEvent,
    Write,
    claim_group,
    create_schema,
    insert_experiment,
    make_engine,
    unstorable,
)
from server.storage import events as events_table
from server.storage import experiments as experiments_table
from server.storage import groups as groups_table
from server.storage import participants as participants_table
from tests.server.harness import (
    eventually,
    timeout,
    until_queued,
)

# ---------------------------------------------------------------------------- the writer alone


def _ids(engine: Engine, experiment_id: int) -> tuple[list[int], list[int]]:
    """The experiment's group ids and participant ids, in order."""
    with engine.connect() as conn:
        gids = conn.execute(select(groups_table.c.id).where(groups_table.c.experiment_id == experiment_id)
                            .order_by(groups_table.c.id)).scalars()
        pids = conn.execute(select(participants_table.c.id).where(participants_table.c.experiment_id == experiment_id)
                            .order_by(participants_table.c.index)).scalars()
        return [int(g) for g in gids], [int(p) for p in pids]


def _stored(engine: Engine, experiment_id: int) -> list[tuple[int, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(select(events_table.c.seq, events_table.c.value)
                            .where(events_table.c.experiment_id == experiment_id).order_by(events_table.c.seq))
        return [(int(s), v) for s, v in rows]


class Writing:
    """A database with an experiment of ``groups`` groups of two, its writer started, and each
    submitted write's outcome by name: its ``seqs`` once stored, else the exception it failed with."""

    def __init__(self, db: Database, experiment_id: int, groups: list[int], participants: list[int]) -> None:
        self.db, self.experiment_id, self.groups, self.participants = db, experiment_id, groups, participants
        self.writer = EventWriter(db)
        self.outcomes: dict[str, Any] = {}

    def write(self, group: int | None, value: Any, *, participant: int | None = None, client_id: str | None = None,
              channel: str = "decisions", subperiod: int = 0, epoch: int | None = None) -> Write:
        update = None if group is None else GroupUpdate(group, "running", 1e9, 1e9 + 60, None, subperiod, {}, {})
        event = NewEvent(channel, value, 1e9 + 1, group, participant, client_id)
        return Write(self.experiment_id, [event], update, epoch=epoch)

    def submit(self, name: str, write: Write) -> None:
        self.writer.submit(write, lambda stored: self.outcomes.__setitem__(name, stored.seqs),
                           lambda exc: self.outcomes.__setitem__(name, exc))

    async def one_batch(self, writes: list[tuple[str, Write]], behind: Callable[[], None] = lambda: None) -> None:
        """``writes`` committed in one batch (the writer thread held while they are queued), and
        ``behind()`` called once they are; until every outcome is in."""
        gate = threading.Event()
        held = self.db.writer.call(lambda: gate.wait(timeout(10)))
        await until_queued(self.db, 0)
        for name, write in writes:
            self.submit(name, write)
        behind()
        gate.set()
        await asyncio.wait_for(held, timeout(10))
        await eventually(lambda: all(name in self.outcomes for name, _ in writes), 10)

    async def stored(self) -> list[tuple[int, Any]]:
        return await self.db.read(_stored, self.experiment_id)


async def writing(url: str, *, journal: bool = False, groups: int = 2) -> Writing:
    db = Database(url, journal=journal, journal_size=1 << 20)
    await db.write(create_schema)
    experiment_id = await db.write(insert_experiment, plan(parse_request(
        {"game": "bimatrix", "participants": 2 * groups, "group_size": 2})))
    gids, pids = await db.read(_ids, experiment_id)
    setup = Writing(db, experiment_id, gids, pids)
    setup.writer.start()
    return setup


@pytest.fixture
async def direct(database_url: str) -> AsyncIterator[Writing]:
    """The direct writer (PostgreSQL's, and SQLite's with ``SYNCLAB_JOURNAL=off``) on each database."""
    setup = await writing(database_url)
    try:
        yield setup
    finally:
        await setup.writer.close()
        setup.db.close()


async def test_a_client_id_already_stored_fails_its_write_alone(direct: Writing) -> None:
    """A unique index refuses two writes of one batch (client ids their participants stored
    before), one of a group and one of none: those two fail (:class:`Unstorable`, naming the
    index) and so does the later write of the first's group (:class:`NotPersisted`); the others
    are stored in the batch's order, numbered without a gap, and the next batch follows on.
    Before, every write of the batch failed ``not_persisted``."""
    w = direct
    (g1, g2), (p1, _, p3, _) = w.groups, w.participants
    w.submit("first", w.write(g2, 0, participant=p3, client_id="taken"))
    w.submit("other", w.write(None, 0, participant=p1, client_id="mine"))
    await eventually(lambda: len(w.outcomes) == 2, 10)
    await w.one_batch([
        ("g1-a", w.write(g1, 1)),
        ("g2-taken", w.write(g2, 2, participant=p3, client_id="taken")),
        ("g1-b", w.write(g1, 3)),
        ("mine-again", w.write(None, 4, participant=p1, client_id="mine")),
        ("g2-behind", w.write(g2, 5)),
        ("g1-c", w.write(g1, 6)),
    ])
    for name in ("g2-taken", "mine-again"):
        refused = w.outcomes[name]
        assert isinstance(refused, Unstorable), (name, refused)
        assert refused.reason.startswith("the database refused it: ") and "client_id" in refused.reason, refused.reason
    assert type(w.outcomes["g2-behind"]) is NotPersisted
    assert [w.outcomes[n] for n in ("first", "other", "g1-a", "g1-b", "g1-c")] == [[1], [2], [3], [4], [5]]
    w.submit("after", w.write(g2, 7))
    await eventually(lambda: "after" in w.outcomes, 10)
    assert w.outcomes["after"] == [6]
    assert await w.stored() == [(1, 0), (2, 0), (3, 1), (4, 3), (5, 6), (6, 7)]


async def test_a_nul_character_inside_a_json_value_is_stored_on_either_database(direct: Writing) -> None:
    """PostgreSQL's ``json`` (not ``jsonb``) keeps ``\\u0000`` as it came: a value and a group's vars
    holding a NUL character are stored and read back whole."""
    w = direct
    g1 = w.groups[0]
    write = w.write(g1, "a\x00b")
    assert write.group is not None
    write.group.vars = {"said": "\x00"}
    await w.one_batch([("nul", write)])
    assert w.outcomes["nul"] == [1]
    assert await w.stored() == [(1, "a\x00b")]

    def group_vars(engine: Engine) -> Any:
        with engine.connect() as conn:
            return conn.execute(select(groups_table.c.vars).where(groups_table.c.id == g1)).scalar_one()

    assert await w.db.read(group_vars) == {"said": "\x00"}


@pytest.mark.parametrize("writer", ["sqlite-journal", "sqlite-direct", "postgres"])
async def test_an_integer_past_64_bits_is_refused_alone_before_the_journal_takes_it(
    request: pytest.FixtureRequest, writer: str
) -> None:
    """A group's subperiod past 2**63 - 1, which no integer column holds (SQLite's driver refuses it,
    PostgreSQL's range): that write is refused alone, named, and with the journal before it is
    appended, so the apply never meets it. Before, the direct writer failed the batch whole, and
    the journal acknowledged it and then halted storage for good (its apply failed at every try)."""
    url = str(request.getfixturevalue("postgres_url" if writer == "postgres" else "sqlite_url"))
    w = await writing(url, journal=writer == "sqlite-journal")
    try:
        (g1, g2) = w.groups
        await w.one_batch([("big", w.write(g1, 1, subperiod=2**63)), ("fine", w.write(g2, 2))])
        assert isinstance(w.outcomes["big"], Unstorable), w.outcomes
        assert "an integer the database cannot store: 9223372036854775808" in w.outcomes["big"].reason
        assert w.outcomes["fine"] == [1]
        w.submit("after", w.write(g1, 3))  # (with the journal: numbered on from its counter, put back exactly)
        await eventually(lambda: "after" in w.outcomes, 10)
        assert w.outcomes["after"] == [2]
        assert await w.stored() == [(1, 2), (2, 3)]  # (with the journal: applied, storage not halted)
    finally:
        await w.writer.close()
        w.db.close()


#: PostgreSQL: a trigger that fails the insert of an event on the channel ``locked`` as a lock not
#: given in time does (SQLSTATE 55P03, psycopg's OperationalError): a failure of the database, not of the write
_LOCKED_TRIGGER = """
CREATE FUNCTION refuse_locked() RETURNS trigger AS $$
BEGIN
    IF NEW.channel = 'locked' THEN
        RAISE EXCEPTION 'canceling statement due to lock timeout' USING ERRCODE = 'lock_not_available';
    END IF;
    RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER refuse_locked BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION refuse_locked();
"""


async def test_a_failure_of_the_database_still_fails_the_batch_and_what_is_queued_behind(postgres_url: str) -> None:
    """On PostgreSQL, a batch that meets a lock timeout is refused whole (``not_persisted``, sent
    again), as before: nothing of it is tried apart. One that fails on a client id stored before and then,
    while stored apart, meets a lock timeout: what was stored before is acknowledged, the write
    the database refuses is :class:`Unstorable`, a fenced write :class:`NotAuthority`, and the
    rest of the batch, the writes queued behind it (any group's) and a job behind them are
    refused ``not_persisted``, as behind any failed batch."""
    w = await writing(postgres_url, groups=3)
    try:
        g1, g2, g3 = w.groups
        engine = make_engine(postgres_url)
        try:
            with engine.begin() as conn:
                conn.exec_driver_sql(_LOCKED_TRIGGER)
            assert claim_group(engine, g3, 2)
        finally:
            engine.dispose()
        await w.one_batch([("whole-a", w.write(g1, 1)), ("whole-locked", w.write(g2, 2, channel="locked"))])
        assert [type(w.outcomes[n]) for n in ("whole-a", "whole-locked")] == [NotPersisted, NotPersisted]
        assert await w.stored() == []

        p3 = w.participants[2]  # (a member of g2)
        w.submit("taken", w.write(g2, 0, participant=p3, client_id="taken"))
        await eventually(lambda: "taken" in w.outcomes, 10)
        job: list[asyncio.Future[str]] = []

        def behind() -> None:  # a job, and a write behind it: of the next batch
            job.append(w.db.writer.call(lambda: "ran"))
            w.submit("queued", w.write(g1, 8))

        await w.one_batch([
            ("a", w.write(g1, 3)),
            ("stale", w.write(g3, 4, epoch=1)),
            ("taken-again", w.write(g2, 5, participant=p3, client_id="taken")),
            ("locked", w.write(g3, 6, channel="locked")),
            ("a-after", w.write(g1, 7)),
        ], behind)
        assert w.outcomes["a"] == [2]
        assert isinstance(w.outcomes["stale"], NotAuthority), w.outcomes
        refused = w.outcomes["taken-again"]
        assert isinstance(refused, Unstorable) and "client_id" in refused.reason, w.outcomes
        for name in ("locked", "a-after", "queued"):
            assert type(w.outcomes[name]) is NotPersisted, (name, w.outcomes[name])
            assert "LockNotAvailable" in str(w.outcomes[name]), w.outcomes[name]
        with pytest.raises(NotPersisted):
            await job[0]
        w.submit("again", w.write(g1, 7))
        await eventually(lambda: "again" in w.outcomes, 10)
        assert w.outcomes["again"] == [3]
        assert await w.stored() == [(1, 0), (2, 3), (3, 7)]
    finally:
        await w.writer.close()
        w.db.close()


async def refused_often(w: Writing, total: int, refused: int) -> list[tuple[str, Write]]:
    """A batch of ``total`` writes of which every ``total // refused``-th is refused by the database
    (``dup{k}``: a client id its participant stored before, stored here first; of no group), the
    others (``ok{i}``) of the experiment's groups in turn."""
    p1 = w.participants[0]
    await w.one_batch([(f"first{k}", w.write(None, 0, participant=p1, client_id=f"id{k}")) for k in range(refused)])
    every = total // refused
    return [
        (f"dup{i // every}", w.write(None, i, participant=p1, client_id=f"id{i // every}"))
        if i % every == 0 and i // every < refused
        else (f"ok{i}", w.write(w.groups[i % len(w.groups)], i))
        for i in range(total)
    ]


async def test_a_batch_stored_apart_leaves_psycopg_nothing_to_warn_of(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """On PostgreSQL, a batch of 200 writes of which 50 are refused by the database is stored apart
    without a line of psycopg's: the statements a refused row left unrun in the pipeline are
    answered before its error is raised. Before, psycopg warned "error ignored terminating
    <Pipeline>: pipeline aborted" for many of the failed parts (12 of them in a run). So does a
    batch with a period's start, whose first try goes statement by statement: before, its
    ``executemany`` of the events made a pipeline of its own, and psycopg warned once."""
    for period in (False, True):
        w = await writing(postgres_url)
        try:
            batch = await refused_often(w, 200, 50)
            if period:
                batch[101] = ("ok101", w.write(w.groups[1], "period_start", channel="state"))
            caplog.clear()
            caplog.set_level(logging.WARNING, logger="psycopg")
            await w.one_batch(batch)
            assert sum(isinstance(w.outcomes[f"dup{k}"], Unstorable) for k in range(50)) == 50
            assert [w.outcomes[name] for name, _ in batch if name.startswith("ok")] == [[i] for i in range(51, 201)]
            assert [r.getMessage() for r in caplog.records if r.name.startswith("psycopg")] == [], period
        finally:
            await w.writer.close()
            w.db.close()


async def test_a_batch_with_many_refused_writes_is_stored_apart_on_its_connection_in_few_tries(direct: Writing) -> None:
    """A batch of 200 writes of which 50 are refused by the database (a client id stored before,
    every fourth write), one of them a period's start: the 150 others are stored in the batch's
    order, numbered without a gap, and the period's start did what it does (the experiment
    running); the 50 are :class:`Unstorable`. It takes no new connection to the database (the
    parts are savepoints in a few transactions on the writer's own) and 230 parts tried (halved down
    to 16 writes, then write by write), at most :data:`unstorable.MOST_TRIES`. Before, each part
    was a transaction of its own, on a new connection after each one refused: about 200
    connections opened (on a loaded machine, 3.6 s of the writer's time on PostgreSQL, 0.3 now)."""
    w = direct
    batch = await refused_often(w, 200, 50)
    start = w.write(w.groups[1], "period_start", channel="state")
    batch[101] = ("ok101", start)  # (the experiment's first period: it starts running)
    opened = [0]

    def connected(*_: object) -> None:  # (the writer's: a checkpoint of SQLite's may open one meanwhile)
        if threading.current_thread().name == "synclab-writer":
            opened[0] += 1

    event.listen(w.db.engine, "connect", connected)
    try:
        await w.one_batch(batch)
    finally:
        event.remove(w.db.engine, "connect", connected)
    assert opened == [0]
    assert 0 < w.writer.parts_tried <= 230 <= unstorable.MOST_TRIES
    for k in range(50):
        refused = w.outcomes[f"dup{k}"]
        assert isinstance(refused, Unstorable) and "client_id" in refused.reason, refused
    stored = [name for name, _ in batch if name.startswith("ok")]
    assert [w.outcomes[name] for name in stored] == [[i] for i in range(51, 201)]
    assert [seq for seq, _ in await w.stored()] == list(range(1, 201))

    def status(engine: Engine) -> str:
        with engine.connect() as conn:
            return str(conn.execute(select(experiments_table.c.status)
                                    .where(experiments_table.c.id == w.experiment_id)).scalar_one())

    assert await w.db.read(status) == "running"
    w.submit("after", w.write(w.groups[0], "after"))
    await eventually(lambda: "after" in w.outcomes, 10)
    assert w.outcomes["after"] == [201]


async def test_a_batch_whose_parts_take_too_many_tries_fails_the_rest_as_a_failed_batch(
    direct: Writing, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Past :data:`unstorable.MOST_TRIES` parts tried (20 here), the rest of a batch stored apart
    is not tried: what was stored is acknowledged, what was refused is :class:`Unstorable`, and
    the rest, the write and the job queued behind it fail ``not_persisted``, as behind a failed
    batch, with one error line that says so; the next write is stored, numbered on. Before, the
    parts went on whatever their number (each a new transaction on a new connection)."""
    w = direct
    monkeypatch.setattr(unstorable, "MOST_TRIES", 20)
    batch = await refused_often(w, 60, 30)
    job: list[asyncio.Future[str]] = []

    def behind() -> None:
        job.append(w.db.writer.call(lambda: "ran"))
        w.submit("queued", w.write(w.groups[0], "queued"))

    caplog.set_level(logging.ERROR, logger="synclab.writer")
    await w.one_batch(batch, behind)
    assert w.writer.parts_tried == 20
    outcomes = [w.outcomes[name] for name, _ in batch]
    settled = [not isinstance(o, NotPersisted) or isinstance(o, Unstorable) for o in outcomes]
    assert False in settled, "every part was tried"
    first_unsettled = settled.index(False)
    assert first_unsettled > 0 and not any(settled[first_unsettled:]), outcomes  # settled, then not
    for (name, _), outcome in zip(batch[:first_unsettled], outcomes, strict=False):
        assert isinstance(outcome, Unstorable if name.startswith("dup") else list), (name, outcome)
    stored = [o for o in outcomes if isinstance(o, list)]
    assert stored == [[30 + i] for i in range(1, len(stored) + 1)]
    for outcome in [*outcomes[first_unsettled:], w.outcomes["queued"]]:
        assert type(outcome) is NotPersisted and "GaveUp" in str(outcome), outcome
    with pytest.raises(NotPersisted):
        await job[0]
    lines = [r.getMessage() for r in caplog.records if r.name == "synclab.writer"]
    assert len(lines) == 1 and "the batch stored in parts took 20 tries" in lines[0], lines
    w.submit("after", w.write(w.groups[0], "after"))
    await eventually(lambda: "after" in w.outcomes, 10)
    assert w.outcomes["after"] == [31 + len(stored)]


#: PostgreSQL: each event's insert logs its transaction (the top one: ``txid_current`` in a
#: savepoint is its transaction's); the log's row has the id of the subtransaction it was written
#: in (``xmin``), which PostgreSQL keeps in the session's cache until the transaction ends
#: (64 at most before it overflows) unless it is rolled back
_PARTS_LOG = """
CREATE TABLE parts_log (xact bigint);
CREATE FUNCTION log_part() RETURNS trigger AS $$
BEGIN
    INSERT INTO parts_log VALUES (txid_current());
    RETURN NULL;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER log_part AFTER INSERT ON events FOR EACH ROW EXECUTE FUNCTION log_part();
"""


async def test_the_parts_commit_on_their_way_another_writer_of_the_experiment_waits_little(postgres_url: str) -> None:
    """On PostgreSQL, a batch of 100 writes of which 25 are refused, stored in parts while another
    writer (another worker's, on its own connection) stores writes of the same experiment one
    after another: the parts' transaction is committed and another begun every
    :data:`unstorable.MOST_SAVEPOINTS` parts stored or :data:`unstorable.MOST_HELD` seconds, so
    no transaction of the parts keeps more subtransactions than PostgreSQL's cache holds (64), and
    the other writer, which waits for the experiment's counter, gets in between them (its writes
    numbered among the batch's), not after all the parts; every write is stored, numbered without
    a gap, the refused ones refused alone. Before, the parts were one transaction: 75
    subtransactions kept in it, and the other writer's write waited through all the parts (0.5 s
    of 0.5 here on a loaded machine; now its waits are mostly under 0.1 s, the longest a commit's
    own, its disk busy)."""
    w = await writing(postgres_url)
    other = Database(postgres_url)
    other_writer = EventWriter(other)
    other_writer.start()
    try:
        run_sql(postgres_url, _PARTS_LOG)
        batch = await refused_often(w, 100, 25)
        parts = asyncio.ensure_future(w.one_batch(batch))
        waits: list[float] = []
        stored: list[list[int]] = []
        loop = asyncio.get_running_loop()
        began = loop.time()
        while not parts.done():
            done: asyncio.Future[list[int]] = loop.create_future()
            event = NewEvent("other", len(waits), 1e9 + 2, None, w.participants[1], None)
            sent = loop.time()
            other_writer.submit(Write(w.experiment_id, [event], None), lambda s, d=done: d.set_result(s.seqs),
                                done.set_exception)
            stored.append(await asyncio.wait_for(done, timeout(10)))
            waits.append(loop.time() - sent)
        took = loop.time() - began
        await parts
        assert sum(isinstance(w.outcomes[f"dup{k}"], Unstorable) for k in range(25)) == 25
        ours = [w.outcomes[name] for name, _ in batch if name.startswith("ok")]
        assert all(isinstance(o, list) for o in ours), ours
        assert sorted(s for o in [*ours, *stored] for s in o) == list(range(26, 26 + 75 + len(stored)))

        def kept(engine: Engine) -> int:
            """The most subtransactions a transaction kept (its own id not counted)."""
            with engine.connect() as conn:
                return int(conn.exec_driver_sql(
                    "SELECT coalesce(max(n), 0) FROM (SELECT count(DISTINCT xmin::text) FILTER "
                    "(WHERE xmin::text::bigint <> mod(xact, 4294967296)) AS n FROM parts_log GROUP BY xact) AS t").scalar_one())

        subtransactions = await w.db.read(kept)
        assert 0 < subtransactions <= unstorable.MOST_SAVEPOINTS < 64, subtransactions
        first, last = ours[0][0], ours[-1][0]
        between = [seqs[0] for seqs in stored if first < seqs[0] < last]  # (the parts' commits let them in)
        # (how many get in depends on how fast the parts go: on a quiet machine they take 0.1-0.2 s,
        # two or three commits; before, none got in: the other writer waited through all of them)
        assert between, (between, [round(t, 3) for t in waits], took)
    finally:
        await other_writer.close()
        other.close()
        await w.writer.close()
        w.db.close()


def run_sql(url: str, sql: str) -> None:
    """``sql`` (a trigger, a table) run on the database, in a transaction of its own."""
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(sql)
    finally:
        engine.dispose()


#: PostgreSQL: a slow database, each event's insert taking 10 ms more
_SLOW_INSERTS = """
CREATE FUNCTION slow_insert() RETURNS trigger AS $$
BEGIN
    PERFORM pg_sleep(0.01);
    RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER slow_insert BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION slow_insert();
"""


async def test_a_batch_whose_parts_take_too_long_fails_the_rest_as_a_failed_batch(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """On a slow PostgreSQL, past :data:`unstorable.MOST_SECONDS` (0.3 s here) the rest of a batch
    stored apart is not tried, however few its parts so far: what was stored is acknowledged,
    what was refused is :class:`Unstorable`, the rest fails ``not_persisted`` (``GaveUp``) with
    one error line that says so, and the next write is stored, numbered on. Before, only the
    count of parts bounded them (:data:`unstorable.MOST_TRIES`), whatever they took."""
    w = await writing(postgres_url)
    try:
        monkeypatch.setattr(unstorable, "MOST_SECONDS", 0.3)
        batch = await refused_often(w, 60, 30)
        run_sql(postgres_url, _SLOW_INSERTS)
        caplog.set_level(logging.ERROR, logger="synclab.writer")
        await w.one_batch(batch)
        assert 0 < w.writer.parts_tried < unstorable.MOST_TRIES
        outcomes = [w.outcomes[name] for name, _ in batch]
        settled = [not isinstance(o, NotPersisted) or isinstance(o, Unstorable) for o in outcomes]
        first_unsettled = settled.index(False)  # (raises if every part was tried)
        assert not any(settled[first_unsettled:]), outcomes  # settled, then not
        for (name, _), outcome in zip(batch[:first_unsettled], outcomes, strict=False):
            assert isinstance(outcome, Unstorable if name.startswith("dup") else list), (name, outcome)
        stored = [o for o in outcomes if isinstance(o, list)]
        assert stored == [[30 + i] for i in range(1, len(stored) + 1)]
        for outcome in outcomes[first_unsettled:]:
            assert type(outcome) is NotPersisted and "GaveUp" in str(outcome), outcome
        lines = [r.getMessage() for r in caplog.records if r.name == "synclab.writer"]
        assert len(lines) == 1 and "the batch stored in parts took" in lines[0], lines
        w.submit("after", w.write(w.groups[0], "after"))
        await eventually(lambda: "after" in w.outcomes, 10)
        assert w.outcomes["after"] == [31 + len(stored)]
    finally:
        await w.writer.close()
        w.db.close()


#: PostgreSQL: each event numbered from ``{seq}`` on waits, in its transaction, for the advisory
#: lock ``{key}`` that the test holds until it lets the inserts go on
_GATED_INSERTS = """
CREATE FUNCTION gated_insert() RETURNS trigger AS $$
BEGIN
    IF NEW.seq >= {seq} THEN
        PERFORM pg_advisory_xact_lock_shared({key});
    END IF;
    RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER gated_insert BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION gated_insert();
"""


def _waiting_on(engine: Engine, key: int) -> int | None:
    """The backend waiting for the advisory lock ``key``, if one is."""
    with engine.connect() as conn:
        pid = conn.exec_driver_sql(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
            "AND ((classid::bigint << 32) | objid::bigint) = %(key)s", {"key": key}).scalar()
        return None if pid is None else int(pid)


def _held_back_by(engine: Engine, pid: int) -> int:
    """How many backends wait for a lock that backend ``pid`` holds."""
    with engine.connect() as conn:
        return int(conn.exec_driver_sql(
            "SELECT count(*) FROM pg_stat_activity WHERE %(pid)s = ANY(pg_blocking_pids(pid))", {"pid": pid}).scalar_one())


async def test_a_group_taken_over_between_the_parts_transactions_is_fenced_in_the_next(postgres_url: str) -> None:
    """On PostgreSQL, a group taken over by another worker while a batch is stored in parts (its
    claim waits for the group's row, which the parts' transaction holds, and gets it at one of
    their commits): its writes stored before the claim are acknowledged, those after are
    :class:`NotAuthority` (fenced anew by the next transaction), and what is stored of the group
    is exactly what was acknowledged; the other group's writes are all stored.

    The parts are held at a known place (an insert waits for an advisory lock the test holds)
    until the claim waits for them or is through; before, the claim raced the parts, and in one
    CI run they were all stored before it."""
    w = await writing(postgres_url)
    engine = make_engine(postgres_url)
    key = secrets.randbits(62)
    try:
        g1 = w.groups[0]
        assert claim_group(engine, g1, 1)
        batch = await refused_often(w, 100, 25)
        for _, write in batch:
            if write.group is not None and write.group.group_id == g1:
                write.epoch = 1
        run_sql(postgres_url, _GATED_INSERTS.format(seq=26 + 20, key=key))  # (25 stored before the batch)
        with engine.connect() as gate:
            gate.exec_driver_sql("SELECT pg_advisory_lock(%(key)s)", {"key": key})
            parts = asyncio.ensure_future(w.one_batch(batch))
            await eventually(lambda: _waiting_on(engine, key) is not None, 10)
            parts_session = _waiting_on(engine, key)  # (held there until the gate opens)
            assert parts_session is not None
            claiming = asyncio.ensure_future(asyncio.to_thread(claim_group, engine, g1, 2))
            await eventually(lambda: claiming.done() or _held_back_by(engine, parts_session) > 0, 10)
            assert not parts.done()
            gate.exec_driver_sql("SELECT pg_advisory_unlock(%(key)s)", {"key": key})
            claimed = await claiming
            await parts
        assert claimed
        ours = [(name, w.outcomes[name]) for name, write in batch if write.epoch == 1]
        acknowledged = [o[0] for _, o in ours if isinstance(o, list)]
        assert acknowledged and acknowledged == sorted(acknowledged), ours
        kinds = [isinstance(o, list) for _, o in ours]
        assert kinds == sorted(kinds, reverse=True) and False in kinds, ours  # stored, then fenced
        assert all(isinstance(o, NotAuthority) for _, o in ours[kinds.index(False):]), ours
        others = [w.outcomes[name] for name, write in batch if name.startswith("ok") and write.epoch is None]
        assert all(isinstance(o, list) for o in others), others

        def stored_of(engine: Engine) -> list[int]:
            with engine.connect() as conn:
                return [int(s) for s in conn.execute(select(events_table.c.seq).where(events_table.c.group_id == g1)
                                                     .order_by(events_table.c.seq)).scalars()]

        assert await w.db.read(stored_of) == acknowledged
    finally:
        engine.dispose()
        await w.writer.close()
        w.db.close()
