"""``SYNCLAB_JOURNAL=on``: a batch acknowledged once the journal holds it synced, applied to SQLite
after, recovered from the journal whenever a run ended before it was applied.

The in-process tests copy a database with its journal while acknowledged batches wait for the
apply (an apply every hour, nothing that reads), which is what a power loss leaves; the real
server is stopped with SIGKILL, and the commands that read (``verify``, ``export``) and the next
start recover what it acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import re
import shutil
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from groups import PublicGoods
from server.exceptions import NotPersisted, SettingsError
from server.settings import Settings, journal_supported
from server.storage import (
    Database,
    EventWriter,
    GroupUpdate,
    NewEvent,
    Write,
    applying,
    check_startable,
    client_seq,
    insert_experiment,
)
from server.storage import client_ids as client_stored_ids
from server.storage.journal import HEADER_SIZE, Journal, scan
from server.storage.recovery import decode, encode, lock_database
from tests.server.harness import eventually, running_server, timeout, until_state
from tests.server.test_checkpoint import first_group_and_member
from tests.server.test_cli import free_port, run, started, wait_until_healthy
from tests.server.test_durability import TOKEN, killed_after_acks, schema_and_spec
from tests.server.test_shutdown import LOAD, RATE, Participant, under_load
from tests.server.test_shutdown import TOKEN as LOAD_TOKEN

#: small, so that a test fills it and the journal starts new passes
SMALL = 64 * 1024


def test_the_journal_is_on_by_default_for_one_process_on_a_sqlite_file_and_only_there() -> None:
    assert Settings.from_env({}).journaled is True
    assert Settings().journaled is True  # by hand as from the environment: sqlite:///./synclab.db
    for env in (
        {"DATABASE_URL": "sqlite://"},  # in memory: nothing to recover, nobody else to read
        {"DATABASE_URL": "sqlite:///file:x?mode=memory&uri=true"},
        {"DATABASE_URL": "postgresql://127.0.0.1/test"},
        {"DATABASE_URL": "postgresql://127.0.0.1/test", "REDIS_URL": "redis://127.0.0.1:6379/0"},
        {"SYNCLAB_DURABILITY": "crash"},
        {"SYNCLAB_JOURNAL": "off"},
        {"SYNCLAB_JOURNAL": "0"},
    ):
        settings = Settings.from_env(env)
        settings.check()
        assert settings.journaled is False, env
    on = Settings.from_env({"SYNCLAB_JOURNAL": "on", "SYNCLAB_APPLY_EVERY": "0.05"})
    assert (on.journal, on.journaled, on.apply_every) == ("on", True, 0.05)
    on.check()
    with pytest.raises(SettingsError, match=r"SYNCLAB_JOURNAL: expected one of auto, on, off, got 'maybe'"):
        Settings.from_env({"SYNCLAB_JOURNAL": "maybe"})
    with pytest.raises(SettingsError, match=r"SYNCLAB_JOURNAL: expected one of auto, on, off, got 'yes please'"):
        Settings(journal="yes please").check()
    for env in (
        {"DATABASE_URL": "postgresql://127.0.0.1/test"},
        {"DATABASE_URL": "postgresql://127.0.0.1/test", "REDIS_URL": "redis://127.0.0.1:6379/0"},
        {"SYNCLAB_DURABILITY": "crash"},
    ):
        with pytest.raises(SettingsError, match=r"SYNCLAB_JOURNAL=on is for one process on a SQLite file"):
            Settings.from_env({"SYNCLAB_JOURNAL": "on", **env}).check()


def test_a_system_without_the_journal_s_calls_keeps_the_direct_commit(monkeypatch: pytest.MonkeyPatch) -> None:
    """macOS has no ``os.fdatasync``: ``auto`` is off there, and ``on`` is refused saying why."""
    monkeypatch.delattr(os, "fdatasync")
    assert Settings.from_env({}).journaled is False
    Settings.from_env({}).check()
    with pytest.raises(SettingsError, match=r"SYNCLAB_JOURNAL=on needs os.fdatasync and os.preadv"):
        Settings.from_env({"SYNCLAB_JOURNAL": "on"}).check()


def test_a_record_holds_the_writes_as_they_were_numbered() -> None:
    write = Write(7, [NewEvent("decisions", {"x": [1, 0.5]}, 1.25, 3, 4, "c1", True)], statuses=[(4, "dropped")])
    write.seqs = [12]
    (back,) = decode(encode([write]))
    assert dataclasses.asdict(back) == dataclasses.asdict(write) and back.seqs == [12] and back.events[0].value == {"x": [1, 0.5]}


def test_a_record_keeps_a_tips_recipient_and_one_written_before_recipients_reads_as_naming_none() -> None:
    """An event's ``recipient_id`` comes back from its record; a record a server wrote before
    events had one (no such field: a journal left by a crash, applied after ``synclab db upgrade``)
    reads as naming no recipient."""
    write = Write(7, [NewEvent("tip", "psst", 1.25, 3, recipient_id=5), NewEvent("tip", "all", 1.25, 3)])
    write.seqs = [12, 13]
    assert [e.recipient_id for e in decode(encode([write]))[0].events] == [5, None]
    version, (old,) = orjson.loads(encode([write]))
    for event in old["events"]:
        del event["recipient_id"]
    (back,) = decode(orjson.dumps([version, [old]]))
    assert [(e.channel, e.value, e.recipient_id) for e in back.events] == [("tip", "psst", None), ("tip", "all", None)]


async def test_a_batch_s_writes_are_numbered_in_a_row_whatever_their_number_of_events(tmp_path: Path) -> None:
    """The journal numbers each write's events after the last of its experiment's, in the order
    they were queued, one, two (a decision's) or more: each write's ``seqs`` the next
    ``len(events)`` numbers; a write without events gets none."""
    async with storing(tmp_path / "db.sqlite") as s:
        first = await s.decide(0.5)
        sizes = [2, 1, 0, 3, 2, 5, 1, 2]
        batch = [
            Write(s.experiment_id, [NewEvent("decisions", k / 10, 1e9, s.group_id, s.participant_id) for k in range(n)])
            for n in sizes
        ]
        done = [asyncio.get_running_loop().create_future() for _ in batch]
        for write, stored in zip(batch, done, strict=True):  # (queued at once: committed in one or a few batches)
            s.writer.submit(write, stored.set_result, stored.set_exception)
        await asyncio.wait_for(asyncio.gather(*done), timeout(5))
        expected, last = [], first[-1]
        for n in sizes:
            expected.append(list(range(last + 1, last + 1 + n)))
            last += n
        assert [w.seqs for w in batch] == expected
        assert await s.decide(0.6) == [last + 1]


async def submitted(writer: EventWriter, write: Write) -> Write:
    done: asyncio.Future[Write] = asyncio.get_running_loop().create_future()
    writer.submit(write, done.set_result, done.set_exception)
    return await asyncio.wait_for(done, timeout(5))


def decisions(path: Path) -> dict[int, float]:
    """The decisions a SQLite file holds, read by another connection (not the server's)."""
    conn = sqlite3.connect(path)
    try:
        return {int(s): float(v) for s, v in conn.execute("SELECT seq, value FROM events WHERE channel = 'decisions'")}
    finally:
        conn.close()


def copy_database(source: Path, target: Path) -> None:
    """The database, its log and its journal as they are on the disk now (a power loss's leftovers)."""
    target.mkdir()
    for suffix in ("", "-wal", ".synclab-journal"):
        if Path(f"{source}{suffix}").exists():
            shutil.copyfile(f"{source}{suffix}", f"{target / source.name}{suffix}")


@dataclass
class Storing:
    """A database and its writer, with an experiment of one group of two in it."""

    db: Database
    writer: EventWriter
    experiment_id: int
    group_id: int
    participant_id: int

    async def decide(self, value: float, client_id: str | None = None) -> list[int]:
        """One decision of the group's first member stored: its ``seq``."""
        event = NewEvent("decisions", value, 1e9, self.group_id, self.participant_id, client_id)
        return (await submitted(self.writer, Write(self.experiment_id, [event]))).seqs

    async def stored(self, path: Path) -> dict[int, float]:
        """The decisions in the file once the apply caught up (a read waits for it)."""
        return await self.db.read(lambda engine: decisions(path))


@contextlib.asynccontextmanager
async def storing(path: Path, of: Storing | None = None, **options: Any) -> AsyncIterator[Storing]:
    """A :class:`Database` on ``path`` (the options given) with its writer; the experiment made
    (or ``of``'s, already in the database)."""
    db = Database(f"sqlite:///{path}", **options)
    try:
        if of is None:
            experiment_id = await db.write(insert_experiment, await schema_and_spec(db))
            group_id, participant_id = await db.read(first_group_and_member, experiment_id)
        else:
            experiment_id, group_id, participant_id = of.experiment_id, of.group_id, of.participant_id
        writer = EventWriter(db)
        writer.start()
        try:
            yield Storing(db, writer, experiment_id, group_id, participant_id)
        finally:
            await writer.close()
    finally:
        db.close()


async def test_an_acknowledged_batch_is_read_back_at_once_and_survives_in_the_journal_until_applied(
    tmp_path: Path,
) -> None:
    path = tmp_path / "j.db"
    async with storing(path, journal=True, journal_size=SMALL, apply_every=3600) as first:
        acked = {(await first.decide(float(i), f"c{i}"))[0]: float(i) for i in range(5)}
        assert sorted(acked) == [1, 2, 3, 4, 5]
        # acknowledged, in the journal, not in the database: the apply waits an hour
        assert decisions(path) == {}
        copy_database(path, tmp_path / "lost")
        copy_database(path, tmp_path / "lost-direct")
        copy_database(path, tmp_path / "lost-upgrade")
        # a read waits for them (it has them applied at once)
        assert await first.stored(path) == acked
    # what a power loss before the apply leaves: the next start applies it from the journal, with
    # the journal or (a server started without it after one that ran with it) without
    for where, journal in (("lost", True), ("lost-direct", False)):
        copy = tmp_path / where / "j.db"
        assert decisions(copy) == {}
        async with storing(copy, first, journal=journal, journal_size=SMALL) as again:
            assert await again.db.recover() == 5
            assert await again.stored(copy) == acked
            assert await again.decide(9.0, "after") == [6]
        # applied and synced: a further start has nothing to apply
        async with storing(copy, first, journal=True, journal_size=SMALL) as third:
            assert await third.db.recover() == 0
            assert await third.stored(copy) == {**acked, 6: 9.0}
    # and synclab db upgrade, once the schema is this synclab's
    copy = tmp_path / "lost-upgrade" / "j.db"
    upgraded = run(tmp_path, "db", "upgrade", DATABASE_URL=f"sqlite:///{copy}")
    assert upgraded.returncode == 0, upgraded.stderr
    assert "applied 5 writes a server had acknowledged from its journal" in upgraded.stdout
    assert decisions(copy) == acked


#: how a header is damaged, and what the warning says of it
DAMAGES = {
    "changed": "the header is damaged (checksum or values)",  # the pass number, under its checksum
    "zeroed": "the header is zeroed, records follow it",  # the whole first page
}


def damage_header(database: Path, how: str) -> None:
    """Damage the header of ``database``'s journal (see :data:`DAMAGES`)."""
    with open(f"{database}.synclab-journal", "r+b") as file:
        if how == "zeroed":
            file.write(bytes(HEADER_SIZE))
        else:
            file.seek(10)
            file.write(b"\x09")


@pytest.mark.parametrize("how", sorted(DAMAGES))
async def test_a_damaged_journal_header_is_rebuilt_and_nothing_acknowledged_is_lost_or_applied_twice(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    """A torn, damaged or zeroed header is rebuilt from the records' salt and the database's marker,
    at a server's start and before a command reads: until 2026-12-04 it was refused until an
    operator looked (a zeroed one until the session after)."""
    path = tmp_path / "j.db"
    async with storing(path, journal=True, journal_size=SMALL, apply_every=3600) as first:
        # a pass the database holds nothing of: every record is applied
        acked = {(await first.decide(float(i), f"c{i}"))[0]: float(i) for i in range(3)}
        copy_database(path, tmp_path / "none-applied")
        copy_database(path, tmp_path / "none-applied-command")
        # part of the pass applied (a read applies what came before it): the rest only
        assert await first.stored(path) == acked
        acked |= {(await first.decide(float(i), f"c{i}"))[0]: float(i) for i in range(3, 5)}
        assert sorted(acked) == [1, 2, 3, 4, 5]
        copy_database(path, tmp_path / "some-applied")
        copy_database(path, tmp_path / "served")
    for where, before in (("none-applied", {}), ("some-applied", {1: 0.0, 2: 1.0, 3: 2.0})):
        copy = tmp_path / where / "j.db"
        assert decisions(copy) == before
        damage_header(copy, how)
        with caplog.at_level("WARNING", logger="synclab.journal"):
            async with storing(copy, first, journal=True, journal_size=SMALL) as again:
                expected = {seq: value for seq, value in acked.items() if where == "some-applied" or seq <= 3}
                assert await again.db.recover() == len(expected) - len(before)  # as a server's start does
                assert await again.stored(copy) == expected
                assert await again.decide(9.0, "after") == [max(expected) + 1]
        assert f"{DAMAGES[how]}; rebuilt as pass" in caplog.text
        caplog.clear()
    # and a command's read of a database no server holds
    copy = tmp_path / "none-applied-command" / "j.db"
    damage_header(copy, how)
    look = sqlite3.connect(copy)
    try:
        (code,) = look.execute("SELECT code FROM experiments").fetchone()
    finally:
        look.close()
    exported = run(tmp_path, "export", code, "--table", "events", DATABASE_URL=f"sqlite:///{copy}")
    assert exported.returncode == 0, exported.stderr
    assert decisions(copy) == {1: 0.0, 2: 1.0, 3: 2.0}
    assert "rebuilt as pass" in exported.stderr
    # and a real server's start (its check before the start lets a damaged header by)
    copy = tmp_path / "served" / "j.db"
    damage_header(copy, how)
    port = free_port()
    with started(tmp_path, "serve", "--port", str(port), DATABASE_URL=f"sqlite:///{copy}") as server:
        assert wait_until_healthy(f"http://127.0.0.1:{port}", server=server).status_code == 200
        assert "rebuilt as pass" in server.stderr()
        assert "applied 2 writes" in server.stderr()
    assert decisions(copy) == acked


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a thread has a priority of its own on Linux only")
async def test_the_apply_thread_runs_at_the_priority_of_the_loop_and_the_writer(tmp_path: Path) -> None:
    """The apply thread keeps the process's priority, as the event loop and the writer do: at a
    lower one, the loop that hands it the interpreter waited for the kernel to run it, which on a
    busy machine took hundreds of milliseconds (bench/README.md, "The apply thread back at the
    process's priority")."""
    def nice(thread: threading.Thread | None) -> int:
        assert thread is not None and thread.native_id is not None
        return os.getpriority(os.PRIO_PROCESS, thread.native_id)

    own = nice(threading.current_thread())
    async with storing(tmp_path / "j.db", journal=True, journal_size=SMALL) as first:
        acked = await first.decide(1.0, "c1")
        assert await first.stored(tmp_path / "j.db") == {acked[0]: 1.0}  # applied: its thread runs
        journaled = first.db.journaled
        assert journaled is not None
        assert nice(journaled._thread) == own
        writer = first.db.writer._thread
        assert nice(writer) == own
        assert nice(threading.current_thread()) == own


async def test_a_torn_last_record_is_dropped_and_the_rest_applied(tmp_path: Path) -> None:
    """A crash in the middle of an append: that batch was never acknowledged, the ones before were."""
    path = tmp_path / "t.db"
    async with storing(path, journal=True, journal_size=SMALL, apply_every=3600) as first:
        for i in range(3):
            await first.decide(float(i))
        copy_database(path, tmp_path / "torn")
    copy = tmp_path / "torn" / "t.db"
    tear_last_record(f"{copy}.synclab-journal")
    async with storing(copy, first, journal=True, journal_size=SMALL) as again:
        assert await again.db.recover() == 2
        assert await again.stored(copy) == {1: 0.0, 2: 1.0}


def tear_last_record(journal_file: str) -> None:
    """The last record's second half never reached the disk."""
    with Journal.open(journal_file) as journal:
        last = journal.records()[-1]
    with open(journal_file, "r+b") as f:
        f.seek(last.offset + (last.end - last.offset) // 2)
        f.write(bytes(last.end - last.offset))


def file_size(path: str) -> int:
    return os.path.getsize(path)


def group_row(path: Path, group_id: int) -> tuple[Any, ...]:
    """A group's phase, decisions, vars and ``last_seq`` as the file holds them (another connection)."""
    conn = sqlite3.connect(path)
    try:
        phase, decided, held, last = conn.execute(
            "SELECT phase, decisions, vars, last_seq FROM groups WHERE id = ?", (group_id,)
        ).fetchone()
        return phase, orjson.loads(decided), orjson.loads(held), last
    finally:
        conn.close()


def stated(s: Storing, i: int, *, event: bool = True) -> Write:
    """A write of ``s``'s group: its first member's decision ``i`` (unless not ``event``) and the state ``x: i``."""
    state = GroupUpdate(s.group_id, "running", 1e9, 1e9 + 60, None, 0, {"x": i}, {"n": i})
    events = [NewEvent("decisions", float(i), 1e9 + i, s.group_id, s.participant_id, f"s{i}")] if event else []
    return Write(s.experiment_id, events, state)


async def test_the_apply_writes_a_group_s_last_state_at_its_commit_and_a_read_sees_it(tmp_path: Path) -> None:
    """The apply holds each group's state over its open transaction and writes the last one before
    the commit (``server/storage/groupstates.py``): a read, which has the apply commit, sees the
    group's last state and its last event's ``seq``, also after a write without an event; and a
    power loss before the apply leaves it to the next start, from the journal."""
    path = tmp_path / "states.db"
    async with storing(path, journal=True, journal_size=SMALL, apply_every=0.002) as first:
        seqs = []
        for i in range(20):  # several applies, each in the transaction the first began
            seqs += (await submitted(first.writer, stated(first, i))).seqs
            await asyncio.sleep(0.003)
        await submitted(first.writer, stated(first, 20, event=False))  # no event: its seq kept
        assert await first.db.read(lambda engine: group_row(path, first.group_id)) == (
            "running", {"x": 20}, {"n": 20}, seqs[-1]
        )
    path = tmp_path / "lost.db"
    async with storing(path, journal=True, journal_size=SMALL, apply_every=3600) as second:
        seqs = [seq for i in range(3) for seq in (await submitted(second.writer, stated(second, i))).seqs]
        copy_database(path, tmp_path / "lost")
    copy = tmp_path / "lost" / "lost.db"
    async with storing(copy, second, journal=True, journal_size=SMALL) as third:
        assert await third.db.recover() == 3
        assert await third.db.read(lambda engine: group_row(copy, second.group_id)) == (
            "running", {"x": 2}, {"n": 2}, seqs[-1]
        )


async def test_writes_jobs_and_reads_interleaved_keep_every_experiment_s_seq_gapless(tmp_path: Path) -> None:
    """Batches of two experiments stream in while jobs run between them (a third experiment made,
    which the writer's counters are read again after) and reads wait for the apply: every event is
    stored once, each experiment's ``seq`` 1..n without a gap, its counter at n."""
    path = tmp_path / "mixed.db"
    async with storing(path, journal=True, journal_size=SMALL, apply_every=0.005) as first:
        second_id = await first.db.write(insert_experiment, await schema_and_spec(first.db))
        ids = {first.experiment_id: 0, second_id: 0}
        pending = []
        for i in range(300):
            experiment_id = first.experiment_id if i % 3 else second_id
            event = NewEvent("decisions", float(i), 1e9 + i, None, None, f"m{i}")
            pending.append(asyncio.ensure_future(submitted(first.writer, Write(experiment_id, [event]))))
            ids[experiment_id] += 1
            if i % 50 == 25:
                await first.db.write(insert_experiment, await schema_and_spec(first.db))
            if i % 40 == 0:
                await asyncio.sleep(0)
        await asyncio.gather(*pending)

        def counters(engine: Any) -> dict[int, tuple[list[int], int]]:
            with engine.connect() as conn:
                return {
                    eid: (
                        [int(r[0]) for r in conn.exec_driver_sql(
                            "SELECT seq FROM events WHERE experiment_id = ? ORDER BY seq", (eid,))],
                        int(conn.exec_driver_sql("SELECT last_seq FROM experiments WHERE id = ?", (eid,)).scalar_one()),
                    )
                    for eid in ids
                }

        stored = await first.db.read(counters)
    assert stored == {eid: (list(range(1, n + 1)), n) for eid, n in ids.items()}


async def test_a_receiver_never_sees_a_decision_the_journal_does_not_hold(sqlite_url: str) -> None:
    """With the journal, stored first means in the journal, synced: every broadcast a member
    receives is there when it arrives (read from the file by itself). The database has it once
    a read asks (the events API), though the apply waits 30 s by itself."""
    async with running_server(sqlite_url, journal="on", apply_every=30) as server:
        exp = await server.create(participants=2, group_size=2)
        a, b = [await server.connect(p["code"]) for p in exp["participants"]]
        for client in (a, b):
            await until_state(client, "period_start")
        journal_file = server.runtime.database.journal_path
        assert journal_file is not None
        for i in range(20):
            await a.send("decisions", (i % 10) / 10)
            await b.send("decisions", ((i + 5) % 10) / 10)
        seen: list[int] = []
        async with asyncio.timeout(timeout(10)):
            while len(seen) < 40:
                frame = await b.expect("group_decisions")
                assert frame["seq"] in journaled_seqs(journal_file)  # checked at once, on its arrival
                seen.append(frame["seq"])
        stored = {e["seq"]: e["channel"] for e in await server.events(exp["code"])}
        assert {stored.get(seq) for seq in seen} == {"group_decisions"}


def journaled_seqs(journal_file: str) -> set[int]:
    """The ``seq`` of every event in the journal's current pass."""
    found = scan(journal_file)
    assert found is not None
    return {seq for record in found[1] for write in decode(record.payload) for seq in write.seqs}


async def test_a_full_journal_starts_over_once_applied_and_nothing_is_applied_twice(tmp_path: Path) -> None:
    path = tmp_path / "f.db"
    async with storing(path, journal=True, journal_size=SMALL) as first:
        padding = "x" * 2000
        for i in range(100):  # 200 kB of records in a 64 kB journal
            await first.decide(float(i), f"{i}-{padding}")
        assert first.db.journaled is not None and first.db.journaled.journal.pass_ >= 3
    assert file_size(f"{path}.synclab-journal") < 2 * SMALL
    async with storing(path, first, journal=True, journal_size=SMALL) as again:
        assert await again.db.recover() == 0
        assert sorted(await again.stored(path)) == list(range(1, 101))


async def test_one_process_per_database_with_a_journal(tmp_path: Path) -> None:
    """Its counters are the database's only while nothing else writes to it."""
    url = f"sqlite:///{tmp_path / 'one.db'}"
    db = Database(url, journal=True, journal_size=SMALL)
    try:
        for journal in (True, False):
            with pytest.raises(SettingsError, match=r"another synclab process has the database .* open"):
                Database(url, journal=journal, journal_size=SMALL, lock_wait=0.1)
    finally:
        db.close()
    with pytest.raises(SettingsError, match=r"DATABASE_URL: cannot open the SQLite file .*missing"):
        Database(f"sqlite:///{tmp_path / 'missing' / 'x.db'}")
    direct = Database(url)
    try:
        with pytest.raises(SettingsError, match=r"another synclab process has the database"):
            Database(url, journal=True, journal_size=SMALL, lock_wait=0.1)
        Database(url).close()  # direct writers share it
    finally:
        direct.close()


async def test_a_failed_apply_halts_storage_and_keeps_the_journal(tmp_path: Path) -> None:
    """Acknowledged and then not storable (an event of a group that does not exist): nothing more
    is taken or read, and the next start applies nothing and says why, the journal kept."""
    path = tmp_path / "h.db"
    async with storing(path, journal=True, journal_size=SMALL) as first:
        orphan = NewEvent("decisions", 1.0, 1e9, 999_999, None)
        await submitted(first.writer, Write(first.experiment_id, [orphan]))
        with pytest.raises(Exception, match=r"storage halted"):
            await first.stored(path)
        with pytest.raises(Exception, match=r"storage halted|could not be stored"):
            await first.decide(2.0)
    again = Database(f"sqlite:///{path}", journal=True, journal_size=SMALL)
    try:
        with pytest.raises(Exception, match=r"FOREIGN KEY"):
            await again.recover()
    finally:
        again.close()
    with Journal.open(f"{path}.synclab-journal") as journal:
        assert len(journal.records()) == 1


def client_ids(path: Path) -> dict[int, str | None]:
    """Each decision's client id, by ``seq``, read by another connection."""
    conn = sqlite3.connect(path)
    try:
        return {int(s): c for s, c in conn.execute("SELECT seq, client_id FROM events WHERE channel = 'decisions'")}
    finally:
        conn.close()


def added_ids(path: Path) -> tuple[dict[str, int], int | None]:
    """The client ids ``client_ids`` holds (id: seq), and where the journal's additions stand
    (the ``meta`` row ``client_ids_after``; ``None``: none left to add)."""
    conn = sqlite3.connect(path)
    try:
        held = {str(c): int(s) for c, s in conn.execute("SELECT client_id, seq FROM client_ids")}
        after = conn.execute("SELECT value FROM meta WHERE key = 'client_ids_after'").fetchall()
        return held, int(after[0][0]) if after else None
    finally:
        conn.close()


async def test_a_journaled_frame_repeating_a_stored_client_id_is_stored_without_it_not_halting_storage(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """The live group answers a repeated client id before the writer sees it; should a write the
    journal acknowledged repeat one all the same, the apply keeps the event, under the seq it was
    answered with, and once it adds the events' ids to ``client_ids`` (every few seconds, and
    at its end) the repeat is stored without its id, logged, and storage goes on (it used to
    halt for good: the apply was refused by the unique index at every try). Until then a
    look-up answers the first's ``seq``. The same for two such writes in one apply, and for the
    apply of a start after a power loss."""
    path = tmp_path / "r.db"
    caplog.set_level(logging.ERROR, logger="synclab.journal")
    async with storing(path, journal=True, journal_size=SMALL) as first:
        assert await first.decide(1.0, "same") == [1]
        assert await first.stored(path) == {1: 1.0}
        assert await first.decide(2.0, "same") == [2]  # past the live group's look: the writer alone
        assert await first.stored(path) == {1: 1.0, 2: 2.0}
        assert await first.db.read(client_seq, first.participant_id, "same") == 1
        assert await first.db.read(client_stored_ids, first.participant_id) == [("same", 1)]
        assert await first.decide(3.0, "next") == [3]
        assert await first.stored(path) == {1: 1.0, 2: 2.0, 3: 3.0}
    assert client_ids(path) == {1: "same", 2: None, 3: "next"}
    assert added_ids(path) == ({"same": 1, "next": 3}, 3)
    assert "repeats the client id 'same' stored already (seq 1)" in caplog.text
    # two in one apply, and again at a start's recovery (the apply held back for an hour)
    async with storing(path, first, journal=True, journal_size=SMALL, apply_every=3600) as second:
        assert await second.decide(4.0, "twice") == [4]
        assert await second.decide(5.0, "twice") == [5]
        assert await second.decide(6.0, "next") == [6]
        copy_database(path, tmp_path / "lost")
        assert await second.stored(path) == {1: 1.0, 2: 2.0, 3: 3.0, 4: 4.0, 5: 5.0, 6: 6.0}
    assert client_ids(path) == {1: "same", 2: None, 3: "next", 4: "twice", 5: None, 6: None}
    copy = tmp_path / "lost" / "r.db"
    assert added_ids(copy) == ({"same": 1, "next": 3}, 3)  # the journal held the rest
    async with storing(copy, first, journal=True, journal_size=SMALL) as again:
        assert await again.db.recover() == 3
        assert client_ids(copy) == {1: "same", 2: None, 3: "next", 4: "twice", 5: None, 6: None}
        assert added_ids(copy) == ({"same": 1, "next": 3, "twice": 4}, None)
        assert await again.decide(7.0, "new") == [7]


async def test_a_journal_server_adds_its_events_client_ids_every_few_seconds_and_a_start_adds_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The apply stores events without their ``client_ids`` rows and adds them in bulk every
    ``ADD_EVERY`` seconds (here an hour, then 0.5 s): look-ups find an id at once all the same. A
    power loss before an addition leaves the ids to the next start, which adds them, with the
    journal or without it; a server without the journal then refuses a repeat of one as it
    refuses any."""
    monkeypatch.setattr(applying, "ADD_EVERY", 3600.0)  # (0.5 s from the start: a busy machine's first commit came later)
    path = tmp_path / "a.db"
    async with storing(path, journal=True, journal_size=SMALL) as first:
        assert await first.decide(1.0, "one") == [1]
        assert await first.stored(path) == {1: 1.0}
        held, after = added_ids(path)
        assert after is not None and "one" not in held  # committed, not added yet
        assert await first.db.read(client_seq, first.participant_id, "one") == 1
        journaled = first.db.journaled
        assert journaled is not None
        monkeypatch.setattr(applying, "ADD_EVERY", 0.5)
        journaled._ids_due = time.monotonic() + 0.5  # the next addition half a second from now
        deadline = time.monotonic() + timeout(10)
        while added_ids(path)[0] != {"one": 1}:
            assert time.monotonic() < deadline, "the client id was not added"
            await first.decide(0.0)  # (a commit adds them once they are due)
            await first.stored(path)
            await asyncio.sleep(0.1)
        count = len(decisions(path))
        assert await first.decide(2.0, "two") == [count + 1]
        await first.stored(path)
        copy_database(path, tmp_path / "lost")
        copy_database(path, tmp_path / "lost-direct")
    for where, journal in (("lost", True), ("lost-direct", False)):
        copy = tmp_path / where / "a.db"
        assert "two" not in added_ids(copy)[0]
        async with storing(copy, first, journal=journal, journal_size=SMALL) as again:
            await again.db.recover()
            assert added_ids(copy) == ({"one": 1, "two": count + 1}, None)
            if not journal:  # the id added with its event: a repeat is refused
                with pytest.raises(NotPersisted):
                    await again.decide(3.0, "two")
                assert await again.decide(3.0, "three") == [count + 2]
                assert added_ids(copy)[0]["three"] == count + 2


async def test_storage_halted_by_a_failed_apply_goes_on_once_the_apply_succeeds(sqlite_url: str) -> None:
    """The events table renamed away under a journal server: a decision is acknowledged and heard
    (it is stored: the journal holds it synced), its apply fails, and storage halts. A REST call
    is a 503 that says why, the next decision is answered ``not_persisted`` and heard by nobody.
    The table back, the apply's next try (every second) stores what the journal held, and
    storage goes on: the refused decision sent again is stored, nothing twice."""
    async with running_server(sqlite_url, journal="on") as server:
        exp = await server.create(participants=2, group_size=2)
        a, b = [await server.connect(p["code"]) for p in exp["participants"]]
        for client in (a, b):
            await until_state(client, "period_start")
        a_code = exp["participants"][0]["code"]
        events_url = f"/api/experiments/{exp['code']}/events"
        # what the period's start wrote is applied first (a read waits for it): else, its apply
        # delayed past the rename on a busy machine, storage halts before the decision is taken
        # and the decision is refused, not acknowledged
        await server.events(exp["code"])
        look = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), timeout=timeout(10))
        try:
            look.execute("ALTER TABLE events RENAME TO events_away")
            look.commit()
            await a.send("decisions", 0.3, frame_id="journaled")
            assert (await a.expect("ack"))["payload"]["id"] == "journaled"
            await heard(b, a_code, 0.3)
            halted = await server.http.get(events_url)  # waits for the apply, which fails
            assert halted.status_code == 503, halted.text
            assert halted.json()["error"].startswith("storage halted: the journal could not be applied")
            assert halted.headers["retry-after"] == "5"
            health = await server.http.get("/healthz")  # what a load balancer or a watchdog asks
            assert health.status_code == 503, health.text
            assert health.json()["reason"].startswith("storage halted: the journal could not be applied")
            await a.send("decisions", 0.9, frame_id="lost")
            refused = await a.expect("error")
            assert (refused["payload"]["code"], refused["payload"]["id"]) == ("not_persisted", "lost")
            assert await b.silent(0.5), "the other member heard a decision that was not stored"
            look.execute("ALTER TABLE events_away RENAME TO events")
            look.commit()
        finally:
            look.close()
        answered: list[int] = []

        async def events_answer() -> None:
            answered.append((await server.http.get(events_url)).status_code)

        async with asyncio.timeout(timeout(10)):
            while not answered or answered[-1] != 200:
                await asyncio.sleep(0.1)
                await events_answer()
        assert set(answered) <= {200, 503}, answered
        assert (await server.http.get("/healthz")).json() == {"status": "ok"}
        await a.send("decisions", 0.9, frame_id="lost")
        assert (await a.expect("ack"))["payload"]["id"] == "lost"
        await heard(b, a_code, 0.9)
        stored = await server.events(exp["code"])
        assert [e["value"] for e in stored if e["channel"] == "decisions"] == [0.3, 0.9]
        assert [e["seq"] for e in stored] == list(range(1, len(stored) + 1))


async def heard(client: Any, member: str, value: float) -> None:
    """Until ``client`` is sent a ``group_decisions`` with ``member``'s decision at ``value``."""
    async with asyncio.timeout(timeout(5)):
        while (await client.expect("group_decisions"))["payload"][member] != value:
            pass


async def test_a_killed_server_s_acknowledged_decisions_are_verified_exported_and_kept(tmp_path: Path) -> None:
    """A real ``synclab serve`` with the journal, an apply every 30 s, SIGKILL after the last ack:
    the database does not hold them; ``synclab verify`` applies the journal first and finds every
    one, ``export`` lists them, and the next start applies nothing twice."""
    database = tmp_path / "synclab.db"
    env = {"SYNCLAB_JOURNAL": "on", "SYNCLAB_APPLY_EVERY": "30"}
    killed = await killed_after_acks(tmp_path, 20, **env)
    assert killed.status["journal"] is True
    acked = killed.acked
    assert not set(acked) <= set(decisions(database)), "the apply was not supposed to have run yet"
    verified = run(tmp_path, "verify", killed.code)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert {seq: decisions(database).get(seq) for seq in acked} == acked
    header = journal_header(tmp_path / "synclab.db.synclab-journal")
    exported = run(tmp_path, "export", killed.code, "--table", "events")
    assert exported.returncode == 0, exported.stderr
    # nothing left to apply: a command's look writes nothing (no new pass)
    assert journal_header(tmp_path / "synclab.db.synclab-journal") == header
    assert sum(1 for line in exported.stdout.splitlines() if ",decisions," in line) == len(acked)
    port = free_port()
    with started(tmp_path, "serve", "--port", str(port), SYNCLAB_ADMIN_TOKEN=TOKEN, **env) as again:
        assert wait_until_healthy(f"http://127.0.0.1:{port}", server=again).status_code == 200
        assert not re.search(r"applied \d+ writes", again.stderr())


def test_a_second_server_on_a_journal_s_database_is_refused_in_one_line(tmp_path: Path) -> None:
    """Before it starts (after a wait of 2 s for a command's recovery to end): the first
    holds the database alone; a direct writer is refused as another journal's would be (in process above)."""
    port = free_port()
    with started(tmp_path, "serve", "--port", str(port), SYNCLAB_JOURNAL="on") as first:
        wait_until_healthy(f"http://127.0.0.1:{port}", server=first)
        second = run(tmp_path, "serve", "--port", str(free_port()))
        assert second.returncode == 2, second.stderr
        assert second.stderr.startswith("synclab: another synclab process has the database"), second.stderr
        assert "Traceback" not in second.stderr


@pytest.mark.skipif(not journal_supported(), reason="auto journals only where the journal's calls exist")
def test_the_refusal_of_a_second_server_says_which_journal_setting_is_in_force(tmp_path: Path) -> None:
    """Both left at SYNCLAB_JOURNAL=auto, the refusal said "with SYNCLAB_JOURNAL=on", which nobody
    had set: it says what is in force and why. This process holds the file as a journal server
    does; a server at the default would journal, one at SYNCLAB_DURABILITY=crash would share it."""
    held = lock_database(str(tmp_path / "synclab.db"), exclusive=True, wait=0)
    try:
        with ThreadPoolExecutor(2) as both:  # at once: each waits 2 s for the lock
            started_journaling = both.submit(run, tmp_path, "serve", "--port", str(free_port()))
            sharing = run(tmp_path, "serve", "--port", str(free_port()), SYNCLAB_DURABILITY="crash")
            journaling = started_journaling.result()
    finally:
        os.close(held)
    for second in (journaling, sharing):
        assert second.returncode == 2, second.stdout + second.stderr
        assert second.stderr.startswith("synclab: another synclab process "), second.stderr
        assert "with SYNCLAB_JOURNAL=on" not in second.stderr  # the old words, both ways
        assert "stop the other first" in second.stderr and "token" not in second.stdout
    assert ("this one would journal, and with the journal one process serves a SQLite database, alone "
            "(SYNCLAB_JOURNAL=auto, the default: the journal, for one process on a SQLite file at "
            "SYNCLAB_DURABILITY=power-loss)") in journaling.stderr
    assert ("open, alone, as one with the journal does" in sharing.stderr and "this one would share it (SYNCLAB_JOURNAL=auto, "
            "the default: the direct commit, with SYNCLAB_DURABILITY=crash)") in sharing.stderr


async def test_another_process_reading_the_database_beside_a_journal_server_sees_what_it_stores(tmp_path: Path) -> None:
    """Another process opens the database while a journal server runs (``synclab export``, a
    look with ``sqlite3``) and closes it. Until 2026-12-04 the server's start synced the
    database through a descriptor opened and closed for it, which dropped every ``fcntl`` lock of
    its SQLite connections: that process's close then took itself for the last connection,
    checkpointed and deleted the write-ahead log under the server, whose later writes nobody
    else saw, and whose reads failed with "disk I/O error"."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    database = tmp_path / "synclab.db"
    with started(tmp_path, "serve", "--port", str(port), SYNCLAB_JOURNAL="on", SYNCLAB_ADMIN_TOKEN=TOKEN) as server:
        wait_until_healthy(base, server=server)
        async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"},
                                     timeout=timeout(5)) as http:
            for made in range(1, 4):
                look = sqlite3.connect(database)
                try:
                    assert look.execute("SELECT count(*) FROM experiments").fetchone() == (made - 1,)
                finally:
                    look.close()  # the last connection anywhere, if the server's locks were gone
                created = await http.post("/api/experiments", json={"game": "bimatrix", "participants": 2, "group_size": 2})
                assert created.status_code == 201, created.text
                listed = await http.get("/api/experiments")
                assert listed.status_code == 200, listed.text
            exported = run(tmp_path, "export", created.json()["code"], "--table", "participants")
            assert exported.returncode == 0, exported.stderr
            assert len(exported.stdout.splitlines()) == 3  # the header and both participants
            assert (await http.get(f"/api/experiments/{created.json()['code']}")).status_code == 200
        assert (tmp_path / "synclab.db-wal").exists(), "the server's log was deleted under it"
        assert "disk I/O error" not in server.stderr()


def test_a_server_keeps_the_lock_it_checked_so_a_second_started_meanwhile_makes_no_token(tmp_path: Path) -> None:
    """``synclab serve`` checks the database's lock before it prepares the schema and makes the first
    start's token, and keeps it until its runtime takes it over: here this process is a server in
    that window, and another started then is refused before it makes a token (until 2026-12-04 it
    made one, and whichever of the two lost the lock later had shown it)."""
    url = f"sqlite:///{tmp_path}/synclab.db"
    check_startable(url, True, keep=True)
    second = run(tmp_path, "serve", "--port", str(free_port()), SYNCLAB_JOURNAL="on")
    assert second.returncode == 2, second.stdout + second.stderr
    assert second.stderr.startswith("synclab: another synclab process has the database"), second.stderr
    assert "token" not in second.stdout, second.stdout
    # the server of this process takes the lock over, without a wait, and holds it alone
    db = Database(url, journal=True, journal_size=SMALL, lock_wait=0)
    try:
        with pytest.raises(SettingsError, match="another synclab process has the database"):
            Database(url, journal=True, journal_size=SMALL, lock_wait=0)
    finally:
        db.close()
    again = Database(url, journal=True, journal_size=SMALL, lock_wait=0)
    again.close()


async def test_a_server_killed_under_load_keeps_every_acknowledged_write_once_the_journal_is_applied(
    tmp_path: Path,
) -> None:
    """Eight participants sending 40 decisions a second each, SIGKILL in the middle (the apply
    every 5 s: most of it in the journal alone); ``synclab verify`` applies the journal and finds
    the experiment whole; every acknowledged id is stored once, with the ``seq`` its ack gave, and
    the ``seq`` runs 1..last_seq without a gap."""
    port = free_port()
    env = {"SYNCLAB_ADMIN_TOKEN": LOAD_TOKEN, "SYNCLAB_JOURNAL": "on", "SYNCLAB_APPLY_EVERY": "5"}
    people: list[Participant] = []
    with started(tmp_path, "serve", "--port", str(port), **env) as running:
        code, readers, senders = await under_load(port, people)
        running.process.send_signal(signal.SIGKILL)
        running.process.wait(timeout(5))
        await asyncio.wait_for(asyncio.gather(*senders, *readers), timeout(20))
    acked = {frame_id: seq for p in people for frame_id, seq in p.acked.items()}
    assert len(acked) >= RATE * LOAD * len(people) / 2, f"too little load before the kill: {len(acked)} acks"
    applied_before = stored_ids(tmp_path / "synclab.db")
    assert len(applied_before) < len(acked), "the apply was not supposed to have caught up"
    verified = run(tmp_path, "verify", code)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    stored = stored_ids(tmp_path / "synclab.db")
    assert {i: stored.get(i) for i in acked} == acked, "every acknowledged id is stored once, with its seq"
    conn = sqlite3.connect(tmp_path / "synclab.db")
    try:
        seqs = [int(r[0]) for r in conn.execute("SELECT seq FROM events ORDER BY seq")]
        (last_seq,) = conn.execute("SELECT last_seq FROM experiments").fetchone()
    finally:
        conn.close()
    assert seqs == list(range(1, int(last_seq) + 1))


def journal_header(path: Path) -> bytes:
    with path.open("rb") as f:
        return f.read(4096)


def stored_ids(path: Path) -> dict[str, int]:
    """Each stored decision's client id and ``seq`` (an id stored twice would fail: the ids are unique)."""
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("SELECT client_id, seq FROM events WHERE client_id IS NOT NULL").fetchall()
    finally:
        conn.close()
    found = {str(i): int(s) for i, s in rows}
    assert len(found) == len(rows), "an id stored twice"
    return found


async def test_a_time_the_database_cannot_store_is_refused_before_the_journal_takes_it(sqlite_url: str) -> None:
    """An experiment whose period ends past the year 9999 (a period_length of 1e12 s, as an
    earlier release took it): its start is refused and nothing of it is journaled, where it was
    acknowledged and then could never be applied, halting storage for good, every start after it
    too. The group is left as it was (not retried: it would fail again), the answer a 500 that
    lists no group started and names the one it failed in. Another experiment plays on meanwhile, and the server starts again."""
    async with running_server(sqlite_url, journal="on") as server:
        huge, fine = await server.create(participants=2, group_size=2), await server.create(participants=2, group_size=2)
        look = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), timeout=timeout(10))
        try:
            look.execute("UPDATE blocks SET period_length = 1e12 WHERE experiment_id ="
                         " (SELECT id FROM experiments WHERE code = ?)", (huge["code"],))
            look.commit()
        finally:
            look.close()
        started = await server.http.post(f"/api/experiments/{huge['code']}/start")
        assert started.status_code == 500, started.text
        answer = started.json()
        assert (answer["action"], answer["groups"], len(answer["failed"])) == ("start", [], 1), answer
        assert "a time the database cannot store" in answer["error"], answer
        assert (await server.http.get("/healthz")).json() == {"status": "ok"}
        a, b = [await server.connect(p["code"]) for p in fine["participants"]]
        for client in (a, b):
            await until_state(client, "period_start")
        await a.send("decisions", 0.4, frame_id="after")
        assert (await a.expect("ack"))["payload"]["id"] == "after"
    async with running_server(sqlite_url, journal="on") as again:
        stored = await again.events(fine["code"])
        assert [e["value"] for e in stored if e["channel"] == "decisions"] == [0.4]
        assert await again.events(huge["code"]) == []


class NaNPayoff(PublicGoods):
    """A game author's slip: a payoff of NaN once anybody contributes (found by its import path)."""

    def payoffs(self, decisions: Any) -> dict[str, float]:
        return {p: self.payoff(p, decisions) for p in self.members}

    def payoff(self, participant: str, decisions: Any) -> float:
        return float("nan") if any(decisions.values()) else 1.0


async def test_a_game_whose_payoff_is_nan_stops_its_own_group_not_the_server(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A score of NaN was stored as NULL, its apply failed, and storage halted for the whole
    server, every start after it too. Now the core refuses the payoff before anything of the tick
    changed: that group's period waits (its tick tried again less and less often, logged naming
    the game), while another experiment plays and stores on, and the server starts again."""
    caplog.set_level(logging.WARNING)
    async with running_server(sqlite_url, journal="on") as server:
        bad = await server.create(game="tests.server.test_journaled:NaNPayoff", participants=2, group_size=2,
                                  period_length=0.5, num_subperiods=1)
        good = await server.create(participants=2, group_size=2, period_length=30)
        a, _b = [await server.connect(p["code"]) for p in bad["participants"]]
        await until_state(a, "period_start")
        await a.send("decisions", 3, frame_id="nan")
        assert (await a.expect("ack"))["payload"]["id"] == "nan"
        row, _col = [await server.connect(p["code"]) for p in good["participants"]]
        await until_state(row, "period_start")
        # the period's end was due at 0.5 s: tried then, 0.5 and 1 s later (and 2 s after that)
        await eventually(lambda: len([r for r in caplog.records if "failed on a tick" in r.getMessage()]) >= 3)
        await row.send("decisions", 0.4, frame_id="meanwhile")
        assert (await row.expect("ack"))["payload"]["id"] == "meanwhile"
        assert (await server.http.get("/healthz")).json() == {"status": "ok"}
        assert (await server.http.get(f"/api/experiments/{bad['code']}")).json()["status"] == "running"
        failures = [r for r in caplog.records if "failed on a tick" in r.getMessage()]
        assert 2 <= len(failures) <= 5, [r.getMessage() for r in failures]  # not thousands a second
        assert "NaNPayoff.payoff gave nan" in caplog.text
    async with running_server(sqlite_url, journal="on") as again:  # nothing poisoned the journal
        stored = await again.events(good["code"])
        assert [e["value"] for e in stored if e["channel"] == "decisions"] == [0.4]
