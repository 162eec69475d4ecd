"""A game's write that cannot be stored (a value that is no JSON) is refused alone: the other
groups' writes of its batch and of the queue are stored and acknowledged, its own client gets
``game_error`` (not sent again), its group rolls back, and the log names the game and the group."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import Engine, select

from groups import DecisionGroup, Event
from server import hooks
from server.cluster.requests import error_of, exception_of
from server.exceptions import NotPersisted, Unstorable
from server.experiments import parse_request, plan
from server.storage import (
    Database,
    EventWriter,
    GroupUpdate,
    NewEvent,
    Write,
    create_schema,
    insert_experiment,
)
from server.storage import events as events_table
from server.storage import groups as groups_table
from server.storage.unstorable import unstorable
from tests.server.harness import (
    Client,
    Harness,
    eventually,
    running_server,
    timeout,
    until_queued,
    until_state,
)


class Hoarder(DecisionGroup):
    """A game author's slip: a frame on ``hoard`` keeps its items in the group's vars as a set,
    which is no JSON (found by its import path)."""

    channels = frozenset({"hoard"})

    def on_hoard(self, participant: str, payload: Any) -> None:
        self.state.vars["hoard"] = set(payload)


class TickHoarder(DecisionGroup):
    """A game author's slip at every tick: its payoff remembers the decisions it saw as a set."""

    def payoff(self, participant: str, decisions: Any) -> float:
        self.state.vars["seen"] = set(decisions)
        return 1.0


class EndHoarder(DecisionGroup):
    """A game whose own end (an override of the core's) keeps a set: its end's write cannot be stored."""

    def end(self, now: float) -> list[Event]:
        self.state.vars["ended"] = {now}
        return super().end(now)


#: the three writers: SQLite with the journal (the default), SQLite without it, PostgreSQL
WRITERS = ["sqlite-journal", "sqlite-direct", "postgres"]


@pytest.fixture(params=WRITERS)
def writer_setup(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    """A database URL and the server's settings for one of :data:`WRITERS`."""
    if request.param == "postgres":
        return str(request.getfixturevalue("postgres_url")), {}
    return str(request.getfixturevalue("sqlite_url")), {"journal": "on" if request.param == "sqlite-journal" else "off"}


@pytest.fixture
async def any_writer_server(writer_setup: tuple[str, dict[str, Any]]) -> AsyncIterator[Harness]:
    url, settings = writer_setup
    async with running_server(url, **settings) as harness:
        yield harness


async def answer(client: Client, frame_id: str) -> dict[str, Any]:
    """The ``ack`` or ``error`` that answers the client's frame ``frame_id``."""
    async with asyncio.timeout(timeout(10)):
        while True:
            frame = await client.next(10)
            if frame["channel"] in ("ack", "error") and frame["payload"].get("id") == frame_id:
                return frame


async def test_an_unstorable_write_is_refused_alone_and_the_other_group_s_writes_are_stored(
    any_writer_server: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """One batch: both groups' decisions and one group's frame whose write holds a set; behind it
    in the queue a job and both groups' decisions. Only that frame is refused (``game_error``) with
    its group's writes computed on top of it (``not_persisted``: sent again, they are stored); every
    write of the other group is acknowledged and stored, the job runs, ``seq`` has no gap, one log
    line names the game, the group and the set, and the server serves on."""
    caplog.set_level(logging.WARNING)
    server = any_writer_server
    exp = await server.create(game=f"{__name__}:Hoarder", participants=4, group_size=2, period_length=600)
    clients = [await server.connect(p["code"]) for p in exp["participants"]]
    hellos = [await c.expect("hello") for c in clients]
    by_group: dict[int, list[Client]] = {}
    for client, hello in zip(clients, hellos, strict=True):
        by_group.setdefault(hello["payload"]["group"], []).append(client)
    (bad_group, (a1, a2)), (_, (b1, b2)) = sorted(by_group.items())
    for client in clients:
        await until_state(client, "period_start")

    db = server.runtime.database
    gate = threading.Event()
    held = db.writer.call(lambda: gate.wait(timeout(10)))  # the writer thread waits while the batch gathers
    await until_queued(db, 0)
    queued = 0
    for client, channel, payload, frame_id in [
        (a1, "decisions", 0.1, "a1-before"),
        (b1, "decisions", 0.2, "b1-1"),
        (a1, "hoard", [1, 2], "bad"),
        (a2, "decisions", 0.3, "a2-after"),
        (b2, "decisions", 0.4, "b2-1"),
    ]:
        await client.send(channel, payload, frame_id)
        queued += 1
        await until_queued(db, queued)
    job = db.writer.call(lambda: "ran")  # a job behind the batch: it rests on nothing refused
    await a2.send("decisions", 0.5, "a2-queued")
    await b1.send("decisions", 0.6, "b1-2")
    await until_queued(db, queued + 3)
    gate.set()
    assert await asyncio.wait_for(held, timeout(10)) is True
    assert await asyncio.wait_for(job, timeout(10)) == "ran"

    assert (await answer(a1, "a1-before"))["channel"] == "ack"
    refused = (await answer(a1, "bad"))["payload"]
    assert refused["code"] == "game_error" and "set" in refused["message"], refused
    for frame_id in ("a2-after", "a2-queued"):  # computed on top of it: may be sent again
        assert (await answer(a2, frame_id))["payload"]["code"] == "not_persisted"
    acks = {fid: (await answer(c, fid))["payload"]["seq"] for c, fid in [(b1, "b1-1"), (b2, "b2-1"), (b1, "b1-2")]}

    # the group rolled back to what is stored: the same frames sent again are stored, and it plays on
    await a2.send("decisions", 0.3, "a2-after")
    assert (await answer(a2, "a2-after"))["channel"] == "ack"
    await a1.send("decisions", 0.7, "a1-later")
    assert (await answer(a1, "a1-later"))["channel"] == "ack"
    assert (await server.http.get("/healthz")).json() == {"status": "ok"}

    stored = await server.events(exp["code"])
    assert [e["seq"] for e in stored] == list(range(1, len(stored) + 1)), "seq has no gap"
    decisions = [(e["value"], e["group"]) for e in stored if e["channel"] == "decisions"]
    assert [v for v, _ in decisions] == [0.1, 0.2, 0.4, 0.6, 0.3, 0.7]
    assert not [e for e in stored if e["channel"] == "hoard"]
    by_seq = {e["seq"]: e["value"] for e in stored}
    assert [by_seq[acks[fid]] for fid in ("b1-1", "b2-1", "b1-2")] == [0.2, 0.4, 0.6]

    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(lines) == 1, lines
    assert f"group {bad_group}: a write of the game Hoarder cannot be stored" in lines[0]
    assert "the group's vars: " in lines[0] and "set" in lines[0]
    assert not [r for r in caplog.records if r.exc_info], "no traceback"


async def test_a_member_s_frames_refused_one_after_another_are_logged_once_then_counted(
    server: Harness, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A member whose every frame makes a write that cannot be stored (the game keeps a set) gets
    ``game_error`` at each; the log has a line for the first, then at most one line every
    :data:`server.hooks.REFUSED_LOG_EVERY` s (1.5 here) for the group, counting those since.
    Before, an error line per frame: a client sending such frames flooded the log at its rate."""
    monkeypatch.setattr(hooks, "REFUSED_LOG_EVERY", 1.5)
    caplog.set_level(logging.WARNING)
    exp = await server.create(game=f"{__name__}:Hoarder", participants=2, group_size=2, period_length=600)
    a, b = [await server.connect(p["code"]) for p in exp["participants"]]
    group = (await a.expect("hello"))["payload"]["group"]
    await until_state(a, "period_start")

    def refused_lines() -> list[str]:
        return [r.getMessage() for r in caplog.records
                if r.levelno >= logging.ERROR and "cannot be stored" in r.getMessage()]

    for i in range(6):
        await a.send("hoard", [i], f"bad{i}")
        assert (await answer(a, f"bad{i}"))["payload"]["code"] == "game_error"
    lines = refused_lines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"group {group}: a write of the game Hoarder cannot be stored") and "set" in lines[0]
    assert "more such" not in lines[0]
    await asyncio.sleep(1.6)
    await a.send("hoard", [9], "bad-later")
    assert (await answer(a, "bad-later"))["payload"]["code"] == "game_error"
    lines = refused_lines()
    assert len(lines) == 2, lines
    assert lines[1].startswith(f"group {group}: a write of the game Hoarder cannot be stored"), lines[1]
    assert lines[1].endswith("(5 more such writes refused since the last line)"), lines[1]
    await b.send("decisions", 0.5, "fine")
    assert (await answer(b, "fine"))["channel"] == "ack"


async def test_a_tick_whose_write_cannot_be_stored_backs_off_while_the_other_group_plays_on(
    writer_setup: tuple[str, dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    """A period's end whose write holds a set is refused and tried again 0.5, 1, 2 s later (one log
    line each), not every 0.5 s; the other experiment's decisions meanwhile are all stored."""
    caplog.set_level(logging.WARNING)
    url, settings = writer_setup
    async with running_server(url, **settings) as server:
        bad = await server.create(game=f"{__name__}:TickHoarder", participants=2, group_size=2,
                                  period_length=0.5, num_subperiods=1)
        good = await server.create(participants=2, group_size=2, period_length=60)
        for client in [await server.connect(p["code"]) for p in bad["participants"]]:
            await until_state(client, "period_start")
        row, col = [await server.connect(p["code"]) for p in good["participants"]]
        await until_state(row, "period_start")
        started = time.monotonic()
        sent = 0
        while time.monotonic() - started < timeout(4.2):  # the end was due at 0.5 s: tried then and at 1, 2, 4 s
            for client in (row, col):
                await client.send("decisions", sent % 2, f"d{sent}")
                assert (await answer(client, f"d{sent}"))["channel"] == "ack"
                sent += 1
            await asyncio.sleep(0.05)
        tries = [r.getMessage() for r in caplog.records if "the game TickHoarder failed on a tick" in r.getMessage()]
        assert (await server.http.get(f"/api/experiments/{bad['code']}")).json()["status"] == "running"
        stored = await server.events(good["code"])
        assert len([e for e in stored if e["channel"] == "decisions"]) == sent
    assert 3 <= len(tries) <= 5, tries  # every 0.5 s would be 8
    assert all("the group's vars: " in t and "set" in t for t in tries), tries
    assert "(3 in a row), tried again in 2 s" in tries[2], tries
    assert not [r for r in caplog.records if "late" in r.getMessage()], "a tick is reported late once stored, not at each try"


async def test_the_experimenter_s_end_of_a_group_whose_end_cannot_be_stored_ends_it_without_the_game(
    any_writer_server: Harness,
) -> None:
    """The end's write holds a set: it is refused, and the period is ended without the game (no
    hook, the state as stored), as when the game raises on the end; a ``game_fault`` records it."""
    server = any_writer_server
    exp = await server.create(game=f"{__name__}:EndHoarder", participants=2, group_size=2, period_length=60)
    a, b = [await server.connect(p["code"]) for p in exp["participants"]]
    group = (await a.expect("hello"))["payload"]["group"]
    await until_state(a, "period_start")
    ended = await server.http.post(f"/api/experiments/{exp['code']}/end")
    assert ended.status_code == 200 and ended.json()["groups"] == [group], ended.text
    for client in (a, b):
        await until_state(client, "period_end")
    stored = await server.events(exp["code"])
    faults = [e["value"] for e in stored if e["channel"] == "game_fault"]
    assert [(f["error"], f["ended"]) for f in faults] == [("Unstorable", True)], faults
    assert "the group's vars" in faults[0]["message"]
    assert (await server.http.get(f"/api/experiments/{exp['code']}")).json()["status"] == "cancelled"


# ---------------------------------------------------------------------------- the writer alone


def _group_ids(engine: Engine, experiment_id: int) -> list[int]:
    with engine.connect() as conn:
        rows = conn.execute(select(groups_table.c.id).where(groups_table.c.experiment_id == experiment_id).order_by(groups_table.c.id))
        return [int(r[0]) for r in rows]


def _stored(engine: Engine, experiment_id: int) -> list[tuple[int, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(select(events_table.c.seq, events_table.c.value)
                            .where(events_table.c.experiment_id == experiment_id).order_by(events_table.c.seq))
        return [(int(s), v) for s, v in rows]


@pytest.fixture
async def database(writer_setup: tuple[str, dict[str, Any]], tmp_path: Path) -> AsyncIterator[Database]:
    url, settings = writer_setup
    # with the journal, applied only when a read needs it: the counters must not be read again from
    # the database meanwhile (it lags the journal)
    db = Database(url, journal=settings.get("journal") == "on", journal_size=1 << 20, apply_every=3600)
    try:
        await db.write(create_schema)
        yield db
    finally:
        db.close()


async def test_a_mixed_batch_stores_all_but_the_unstorable_write_and_its_group_s_later_ones(database: Database) -> None:
    """Through the real writer: a batch of two groups' writes, one of them holding a set and one
    without a group holding a dict keyed by numbers. Those two fail (:class:`Unstorable`) and so
    does the later write of the first's group (:class:`NotPersisted`, not Unstorable); the others
    are stored, numbered without a gap, and the experiment's next write follows on (with the
    journal, its counters put back exactly while what it took before is still to be applied)."""
    db = database
    experiment_id = await db.write(insert_experiment, plan(parse_request({"game": "bimatrix", "participants": 4, "group_size": 2})))
    g1, g2 = await db.read(_group_ids, experiment_id)
    writer = EventWriter(db)
    writer.start()
    outcomes: dict[str, Any] = {}

    def write(group: int | None, value: Any, held: dict[Any, Any] | None = None) -> Write:
        update = None if group is None else GroupUpdate(group, "running", 1e9, 1e9 + 60, None, 0, {}, held or {})
        return Write(experiment_id, [NewEvent("decisions", value, 1e9 + 1, group)], update)

    def submit(name: str, w: Write) -> None:
        writer.submit(w, lambda stored: outcomes.__setitem__(name, stored.seqs), lambda exc: outcomes.__setitem__(name, exc))

    try:
        submit("first", write(g1, 0))
        await eventually(lambda: "first" in outcomes, 10)
        gate = threading.Event()
        held = db.writer.call(lambda: gate.wait(timeout(10)))
        await until_queued(db, 0)
        submit("g1-a", write(g1, 1))
        submit("g2-set", write(g2, 2, {"seen": {1, 2}}))
        submit("g1-b", write(g1, 3))
        submit("g2-behind", write(g2, 4))
        submit("keys", write(None, {1: "one"}))
        submit("g1-c", write(g1, 5))
        gate.set()
        await asyncio.wait_for(held, timeout(10))
        await eventually(lambda: len(outcomes) == 7, 10)
        assert isinstance(outcomes["g2-set"], Unstorable) and "the group's vars" in outcomes["g2-set"].reason
        assert "set" in outcomes["g2-set"].reason
        assert isinstance(outcomes["keys"], Unstorable) and "str" in outcomes["keys"].reason
        assert type(outcomes["g2-behind"]) is NotPersisted
        assert [outcomes[n] for n in ("first", "g1-a", "g1-b", "g1-c")] == [[1], [2], [3], [4]]
        submit("after", write(g2, 6))
        await eventually(lambda: "after" in outcomes, 10)
        assert outcomes["after"] == [5]
        assert await db.read(_stored, experiment_id) == [(1, 0), (2, 1), (3, 3), (4, 5), (5, 6)]
    finally:
        await writer.close()


@pytest.mark.parametrize(
    ("value", "named"),
    [
        pytest.param({1, 2}, "set", id="set"),
        pytest.param(b"bytes", "bytes", id="bytes"),
        pytest.param(object(), "object", id="object"),
        pytest.param({1: "one"}, "str", id="int-keys"),
        pytest.param(2**70, "64-bit", id="big-int"),
    ],
)
def test_why_a_write_cannot_be_stored_names_the_value(value: Any, named: str) -> None:
    """Each kind of value that is no JSON is found, where it is named; a storable write passes."""
    write = Write(1, [NewEvent("chat", {"fine": [1, 0.5, None]}, 1e9, 7)],
                  GroupUpdate(7, "running", 1e9, None, None, 0, {}, {"x": value}))
    why = unstorable(write)
    assert why is not None and why.startswith("the group's vars: ") and named in why, why
    write.group.vars = {"x": [value is None]}  # type: ignore[union-attr]
    assert unstorable(write) is None
    write.events[0].value = value
    assert (unstorable(write) or "").startswith("the value on 'chat': ")


def test_a_refusal_for_an_unstorable_write_crosses_the_cluster_as_itself() -> None:
    """A frame sent to another worker's group: the refusal comes back as :class:`Unstorable` (the
    experimenter's action skips the group, the page does not send it again), not as ``unavailable``."""
    back = exception_of(orjson.loads(orjson.dumps(error_of(Unstorable("cannot be stored: set", "set")))))
    assert isinstance(back, Unstorable) and back.code == "game_error" and back.reason == "set"
    assert str(back) == "cannot be stored: set"


# ---------------------------------------------------------------------------- channels too long to store


class Shouter(DecisionGroup):
    """A game whose ``shout`` sends on a channel as long as the frame says (found by its import path)."""

    channels = frozenset({"shout"})

    def on_shout(self, participant: str, payload: Any) -> None:
        self.send("s" * int(payload), "heard")


async def test_a_send_on_a_channel_too_long_to_store_is_refused_at_once_and_its_batch_is_stored(
    postgres_url: str,
) -> None:
    """PostgreSQL refuses a channel past the events table's column (SQLite does not look). The
    game's send on such a channel raises in the core: that frame alone gets ``game_error`` at once,
    while the writer is still busy, and the other group's writes gathered in the batch meanwhile
    (one a send on the longest channel that can be stored) are stored. The whole batch failed:
    every write of both groups was refused ``not_persisted``."""
    async with running_server(postgres_url) as server:
        exp = await server.create(game=f"{__name__}:Shouter", participants=4, group_size=2, period_length=600)
        clients = [await server.connect(p["code"]) for p in exp["participants"]]
        hellos = [await c.expect("hello") for c in clients]
        by_group: dict[int, list[Client]] = {}
        for client, hello in zip(clients, hellos, strict=True):
            by_group.setdefault(hello["payload"]["group"], []).append(client)
        (_, (a1, _a2)), (_, (b1, b2)) = sorted(by_group.items())
        for client in clients:
            await until_state(client, "period_start")

        db = server.runtime.database
        gate = threading.Event()
        held = db.writer.call(lambda: gate.wait(timeout(10)))
        await until_queued(db, 0)
        for queued, (client, channel, payload, frame_id) in enumerate([
            (a1, "decisions", 0.1, "a1-before"),
            (b1, "decisions", 0.2, "b1"),
            (b2, "shout", 64, "b2-longest"),
        ], start=1):
            await client.send(channel, payload, frame_id)
            await until_queued(db, queued)
        await a1.send("shout", 65, "a1-too-long")
        refusal = asyncio.ensure_future(answer(a1, "a1-too-long"))
        await eventually(lambda: refusal.done() or db.writer.queued() == 4, 5)  # refused, or queued (before)
        answered_while_held = refusal.done()
        gate.set()
        assert await asyncio.wait_for(held, timeout(10)) is True
        refused = (await refusal)["payload"]
        assert refused["code"] == "game_error", refused
        assert answered_while_held  # refused at its source, not by the database
        for client, frame_id in [(a1, "a1-before"), (b1, "b1"), (b2, "b2-longest")]:
            assert (await answer(client, frame_id))["channel"] == "ack", frame_id
        stored = await server.events(exp["code"])
        assert [e["value"] for e in stored if e["channel"] == "decisions"] == [0.1, 0.2]
        assert [e["value"] for e in stored if e["channel"] == "s" * 64] == ["heard"]
        assert not [e for e in stored if len(e["channel"]) > 64]


async def test_the_writer_refuses_alone_a_write_on_a_channel_too_long_to_store(postgres_url: str) -> None:
    """The last guard, through the real writer on PostgreSQL: a write on a channel past the column
    (which the core does not make) is :class:`Unstorable`, naming the channel; the other group's
    write of its batch is stored. The batch failed whole: both were refused."""
    db = Database(postgres_url)
    try:
        await db.write(create_schema)
        experiment_id = await db.write(insert_experiment, plan(parse_request({"game": "bimatrix", "participants": 4, "group_size": 2})))
        g1, g2 = await db.read(_group_ids, experiment_id)
        writer = EventWriter(db)
        writer.start()
        outcomes: dict[str, Any] = {}
        try:
            gate = threading.Event()
            held = db.writer.call(lambda: gate.wait(timeout(10)))
            await until_queued(db, 0)
            for name, group, channel in [("long", g1, "c" * 65), ("fine", g2, "decisions")]:
                write = Write(experiment_id, [NewEvent(channel, 1, 1e9 + 1, group)],
                              GroupUpdate(group, "running", 1e9, 1e9 + 60, None, 0, {}, {}))
                writer.submit(write, lambda stored, n=name: outcomes.__setitem__(n, stored.seqs),
                              lambda exc, n=name: outcomes.__setitem__(n, exc))
            gate.set()
            await asyncio.wait_for(held, timeout(10))
            await eventually(lambda: len(outcomes) == 2, 10)
            assert isinstance(outcomes["long"], Unstorable), outcomes
            assert "a channel the database cannot store: expected a channel name of 1 to 64" in outcomes["long"].reason
            assert outcomes["fine"] == [1]
            assert await db.read(_stored, experiment_id) == [(1, 1)]
        finally:
            await writer.close()
    finally:
        db.close()


def test_why_a_write_cannot_be_stored_names_a_channel_too_long() -> None:
    write = Write(1, [NewEvent("c" * 65, 1, 1e9, 7)])
    assert (unstorable(write) or "").startswith("a channel the database cannot store: expected a channel name")
    write.events[0].channel = "c" * 64
    assert unstorable(write) is None


class DeclaresLong(DecisionGroup):
    """A game declaring a client channel whose frames could not be stored (found by its import path)."""

    channels = frozenset({"c" * 65})


async def test_a_game_declaring_a_channel_too_long_to_store_is_refused_at_creation(server: Harness) -> None:
    """A 400 naming the game and the limit; a client's frame on it could never have been stored."""
    made = await server.http.post("/api/experiments", json={
        "game": f"{__name__}:DeclaresLong", "participants": 2, "group_size": 2,
    })
    assert made.status_code == 400, made.text
    assert "DeclaresLong declares a channel it cannot take: expected a channel name of 1 to 64" in made.text
