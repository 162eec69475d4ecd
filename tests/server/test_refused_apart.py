"""A write the database refuses for a reason of its own (a NUL character in a text column on
PostgreSQL, a client id already stored, an integer past a column's range) is refused alone: the
batch it failed is stored in parts, in its order, without it and its group's later writes; the
other groups' writes are stored and acknowledged. A failure of the database itself (a lock not
given) still fails the writes it met, and everything queued behind them, as any failed batch."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from sqlalchemy import Engine, select

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
)
from server.storage import events as events_table
from server.storage import groups as groups_table
from server.storage import participants as participants_table
from tests.server.harness import (
    Client,
    Harness,
    eventually,
    running_server,
    timeout,
    until_queued,
    until_state,
)

#: a client's frame id with a NUL character: PostgreSQL's text columns cannot hold one, SQLite's can
NUL_ID = "nul\x00id"


async def answer(client: Client, frame_id: str) -> dict[str, Any]:
    """The ``ack`` or ``error`` that answers the client's frame ``frame_id``."""
    async with asyncio.timeout(timeout(10)):
        while True:
            frame = await client.next(10)
            if frame["channel"] in ("ack", "error") and frame["payload"].get("id") == frame_id:
                return frame


@pytest.fixture
async def any_server(database_url: str) -> AsyncIterator[Harness]:
    """A real server on SQLite (with the journal, its default) and on PostgreSQL."""
    async with running_server(database_url) as harness:
        yield harness


async def test_a_frame_id_the_database_refuses_fails_that_frame_alone_and_the_other_group_s_are_stored(
    any_server: Harness, database_url: str
) -> None:
    """One batch: both groups' decisions and one whose client id holds a NUL character. On
    PostgreSQL that frame alone is refused (``game_error``, naming what the database said) with
    its group's decision computed on top of it (``not_persisted``: sent again, it is stored); the
    other group's are acknowledged and stored, ``seq`` without a gap. SQLite stores the id as it
    came (the journal's apply too). Before, on PostgreSQL every write of the batch was refused
    ``not_persisted``, and the page sent the frame again for ever."""
    server = any_server
    exp = await server.create(participants=4, group_size=2, period_length=600)
    clients = [await server.connect(p["code"]) for p in exp["participants"]]
    hellos = [await c.expect("hello") for c in clients]
    by_group: dict[int, list[Client]] = {}
    for client, hello in zip(clients, hellos, strict=True):
        by_group.setdefault(hello["payload"]["group"], []).append(client)
    (_, (a1, a2)), (_, (b1, b2)) = sorted(by_group.items())
    for client in clients:
        await until_state(client, "period_start")

    db = server.runtime.database
    gate = threading.Event()
    held = db.writer.call(lambda: gate.wait(timeout(10)))  # the writer thread waits while the batch gathers
    await until_queued(db, 0)
    for queued, (client, value, frame_id) in enumerate([
        (a1, 0.1, "a1-before"), (b1, 0.2, "b1"), (a1, 0.3, NUL_ID), (a2, 0.4, "a2-after"), (b2, 0.5, "b2"),
    ], start=1):
        await client.send("decisions", value, frame_id)
        await until_queued(db, queued)
    gate.set()
    assert await asyncio.wait_for(held, timeout(10)) is True

    for client, frame_id in [(a1, "a1-before"), (b1, "b1"), (b2, "b2")]:
        assert (await answer(client, frame_id))["channel"] == "ack", frame_id
    refused = await answer(a1, NUL_ID)
    if database_url.startswith("sqlite"):
        assert refused["channel"] == "ack", refused
        assert (await answer(a2, "a2-after"))["channel"] == "ack"
        expected = [0.1, 0.2, 0.3, 0.4, 0.5]
    else:
        assert refused["payload"]["code"] == "game_error", refused
        assert "the database refused it" in refused["payload"]["message"] and "NUL" in refused["payload"]["message"]
        assert (await answer(a2, "a2-after"))["payload"]["code"] == "not_persisted"
        await a2.send("decisions", 0.4, "a2-after")  # the page sends it again: its group was rolled back
        assert (await answer(a2, "a2-after"))["channel"] == "ack"
        expected = [0.1, 0.2, 0.5, 0.4]
    assert (await server.http.get("/healthz")).json() == {"status": "ok"}
    stored = await server.events(exp["code"])
    assert [e["seq"] for e in stored] == list(range(1, len(stored) + 1)), "seq has no gap"
    assert [e["value"] for e in stored if e["channel"] == "decisions"] == expected


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
    again), as before: nothing of it is tried apart. One that fails on a NUL character and then,
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

        job: list[asyncio.Future[str]] = []

        def behind() -> None:  # a job, and a write behind it: of the next batch
            job.append(w.db.writer.call(lambda: "ran"))
            w.submit("queued", w.write(g1, 8))

        await w.one_batch([
            ("a", w.write(g1, 3)),
            ("stale", w.write(g3, 4, epoch=1)),
            ("nul", w.write(g2, 5, channel="nul\x00channel")),
            ("locked", w.write(g3, 6, channel="locked")),
            ("a-after", w.write(g1, 7)),
        ], behind)
        assert w.outcomes["a"] == [1]
        assert isinstance(w.outcomes["stale"], NotAuthority), w.outcomes
        assert isinstance(w.outcomes["nul"], Unstorable) and "NUL" in w.outcomes["nul"].reason, w.outcomes
        for name in ("locked", "a-after", "queued"):
            assert type(w.outcomes[name]) is NotPersisted, (name, w.outcomes[name])
            assert "LockNotAvailable" in str(w.outcomes[name]), w.outcomes[name]
        with pytest.raises(NotPersisted):
            await job[0]
        w.submit("again", w.write(g1, 7))
        await eventually(lambda: "again" in w.outcomes, 10)
        assert w.outcomes["again"] == [2]
        assert await w.stored() == [(1, 3), (2, 7)]
    finally:
        await w.writer.close()
        w.db.close()
