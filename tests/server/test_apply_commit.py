"""The journal's apply keeps one transaction open over its applies (:mod:`server.storage.applying`).

It commits once :data:`~server.storage.applying.COMMIT_EVERY` has passed since the transaction
began, or at once when a read waits for it, a job or a write beside the batches needs the
database, or the thread stops; only a commit counts a record as applied. What the transaction
holds is never lost: a refusal of a repeated client id, or a failed apply, rolls it all back and
it all goes again. Each test looks from another connection (``sqlite3``), which sees only what
was committed.
"""

from __future__ import annotations

import asyncio
import gc
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from server.storage import NewEvent, Write, insert_experiment
from server.storage import applying as applying_module
from tests.server.harness import timeout
from tests.server.test_durability import schema_and_spec
from tests.server.test_journaled import SMALL, Storing, client_ids, decisions, storing, submitted

#: a commit that never comes by itself within a test
NEVER = 3600.0


def _until(done: Callable[[], bool], why: str, wait: float = 10) -> float:
    """Poll ``done`` until it holds (the seconds it took), else fail with ``why``."""
    started = time.monotonic()
    deadline = started + timeout(wait)
    while not done():
        assert time.monotonic() < deadline, why
        time.sleep(0.01)
    return time.monotonic() - started


async def _applied_open(first: Storing, records: int) -> None:
    """Until the apply thread has stored ``records`` records in its open transaction."""
    journaled = first.db.journaled
    assert journaled is not None
    await asyncio.to_thread(_until, lambda: len(journaled._open) >= records, "the apply never stored them")


async def _stored_once_it_goes_on(first: Storing, path: Path) -> dict[int, float]:
    """The decisions stored, read once the apply's next try has succeeded (a read is refused,
    "storage halted", until then)."""
    async with asyncio.timeout(timeout(10)):
        while True:
            try:
                return await first.stored(path)
            except Exception as exc:  # halted until the next try
                assert "storage halted" in str(exc), exc
                await asyncio.sleep(0.1)


async def test_stored_in_a_transaction_left_open_until_a_read_asks_then_committed_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(applying_module, "COMMIT_EVERY", NEVER)
    path = tmp_path / "o.db"
    async with storing(path, journal=True, journal_size=SMALL) as first:
        acked = {(await first.decide(float(i)))[0]: float(i) for i in range(3)}
        await _applied_open(first, 3)
        assert decisions(path) == {}, "another connection saw what the open transaction holds"
        assert first.db.journaled is not None and first.db.journaled.applied < first.db.journaled.appended
        assert await first.stored(path) == acked  # the read waited for the commit
        assert decisions(path) == acked


async def test_an_open_transaction_is_committed_once_due_though_nothing_asks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(applying_module, "COMMIT_EVERY", 0.3)
    path = tmp_path / "d.db"
    async with storing(path, journal=True, journal_size=SMALL) as first:
        assert await first.decide(1.0) == [1]
        await asyncio.to_thread(_until, lambda: decisions(path) == {1: 1.0}, "never committed by itself")
        assert await first.decide(2.0) == [2]  # the next transaction, the same way
        await asyncio.to_thread(_until, lambda: decisions(path) == {1: 1.0, 2: 2.0}, "the second never committed")


@pytest.mark.parametrize("how", ["aside", "job"])
async def test_a_write_of_another_connection_has_the_open_transaction_committed_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str,
) -> None:
    """A new experiment (a write beside the batches) and a job of the writer thread run on other
    connections of the database, which SQLite would keep waiting for the open transaction (its busy
    timeout is 30 s, then "database is locked"): they have it committed first."""
    monkeypatch.setattr(applying_module, "COMMIT_EVERY", NEVER)
    path = tmp_path / "w.db"
    async with storing(path, journal=True, journal_size=SMALL) as first:
        spec = await schema_and_spec(first.db)  # (it reads: before the decision, not to commit it)
        assert await first.decide(1.0) == [1]
        await _applied_open(first, 1)

        def count(engine: Engine) -> int:
            with engine.connect() as conn:
                return int(conn.exec_driver_sql("SELECT count(*) FROM experiments").scalar_one())

        started = time.monotonic()
        write = first.db.write_aside if how == "aside" else first.db.write
        await asyncio.wait_for(write(insert_experiment, spec), timeout(10))
        assert time.monotonic() - started < 5, "the write waited for the open transaction"
        assert decisions(path) == {1: 1.0}  # committed before the write
        assert await first.db.read(count) == 2
        assert await first.decide(2.0) == [2]
        assert await first.stored(path) == {1: 1.0, 2: 2.0}


async def test_a_repeated_client_id_in_the_open_transaction_is_stored_and_loses_its_id_when_the_ids_are_added(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The second frame of one id while the first is in the open transaction: nothing refuses it
    (the apply adds the ids to ``client_ids`` later), all three are committed, and the addition
    at the apply's end stores the repeat without its id. (The unique index of events refused it
    until 0016_client_ids, and the rollback took the first with it.)"""
    monkeypatch.setattr(applying_module, "COMMIT_EVERY", NEVER)
    path = tmp_path / "r.db"
    async with storing(path, journal=True, journal_size=SMALL) as first:
        assert await first.decide(1.0, "same") == [1]
        assert await first.decide(2.0, "other") == [2]
        await _applied_open(first, 2)
        assert await first.decide(3.0, "same") == [3]  # past the live group's look: the writer alone
        await _applied_open(first, 3)
        assert decisions(path) == {}
        assert await first.stored(path) == {1: 1.0, 2: 2.0, 3: 3.0}
        assert client_ids(path) == {1: "same", 2: "other", 3: "same"}  # not added yet
    assert client_ids(path) == {1: "same", 2: "other", 3: None}


def _add_participant(path: Path, like: int, new_id: int) -> None:
    """A participant ``new_id`` made from another connection, a copy of ``like`` under new names."""
    conn = sqlite3.connect(path, timeout=timeout(10))
    try:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(participants)")]
        row = dict(zip(columns, conn.execute("SELECT * FROM participants WHERE id = ?", (like,)).fetchone(), strict=True))
        row.update(id=new_id, code=f"late{new_id}", label=f"late{new_id}", completion_code=None)
        names = ", ".join(f'"{column}"' for column in row)  # quoted: a column is named "index"
        conn.execute(f"INSERT INTO participants ({names}) VALUES ({', '.join('?' for _ in row)})", list(row.values()))
        conn.commit()
    finally:
        conn.close()


async def test_a_failed_apply_loses_the_open_transaction_and_what_it_held_is_stored_on_the_next_try(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A decision in the open transaction, then an event of a participant the database does not
    have yet: the apply fails (its foreign key), the transaction is rolled back and storage halts.
    Once the participant is there, the next try (a second later) stores both, in their order."""
    monkeypatch.setattr(applying_module, "COMMIT_EVERY", NEVER)
    path = tmp_path / "f.db"
    async with storing(path, journal=True, journal_size=SMALL) as first:
        assert await first.decide(1.0) == [1]
        await _applied_open(first, 1)
        late = NewEvent("decisions", 2.0, 1e9, first.group_id, 999_999)
        assert (await submitted(first.writer, Write(first.experiment_id, [late]))).seqs == [2]
        journaled = first.db.journaled
        assert journaled is not None
        await asyncio.to_thread(_until, lambda: journaled.failed is not None, "the apply never failed")
        assert decisions(path) == {}  # the first decision rolled back with the transaction
        _add_participant(path, first.participant_id, 999_999)
        held = await _stored_once_it_goes_on(first, path)
        assert held == {1: 1.0, 2: 2.0}
        assert await first.decide(3.0) == [3]
        assert await first.stored(path) == {1: 1.0, 2: 2.0, 3: 3.0}


async def test_the_apply_thread_s_end_commits_what_is_open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(applying_module, "COMMIT_EVERY", NEVER)
    path = tmp_path / "e.db"
    async with storing(path, journal=True, journal_size=SMALL) as first:
        acked = {(await first.decide(float(i)))[0]: float(i) for i in range(4)}
        await _applied_open(first, 4)
        assert decisions(path) == {}
    assert decisions(path) == acked  # the database closed: its apply thread committed, then ended


async def test_the_open_transaction_keeps_its_records_not_their_writes_as_objects(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A second of applied writes kept as objects (some 15 a decision) had the collector run three
    times a second at 2,000 decisions/s and its older generation's pauses reach 30 ms: the writes
    are let go once applied, and read again from the records' payloads only when they go again."""
    monkeypatch.setattr(applying_module, "COMMIT_EVERY", NEVER)
    path = tmp_path / "k.db"
    async with storing(path, journal=True, journal_size=SMALL) as first:
        acked = {(await first.decide(float(i)))[0]: float(i) for i in range(40)}
        await _applied_open(first, 40)  # (counted as the apply begins: its writes are let go once it ends)
        for _ in range(int(timeout(5) / 0.05)):
            alive = [o for o in gc.get_objects() if isinstance(o, Write)]
            if not alive:
                break
            await asyncio.sleep(0.05)
        assert alive == [], f"{len(alive)} writes kept alive by the open transaction"
        assert first.db.journaled is not None and len(first.db.journaled._open) == 40  # (still open)
        assert await first.stored(path) == acked


class _RefusingOnce:
    """An engine whose next ``connect`` fails, as a database file that cannot be opened
    (out of file descriptors, a directory gone); then the engine's own."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.refused = 0

    def connect(self) -> Any:
        if not self.refused:
            self.refused += 1
            raise sqlite3.OperationalError("unable to open database file")
        return self._engine.connect()


async def test_an_apply_whose_connection_cannot_be_opened_halts_and_stores_the_batch_on_the_next_try(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The apply's connection is opened for its first batch, and again after a failure: when
    that fails, the batch it took is kept for the next try with the rest. It was dropped: the
    journal held it, but the reads of this process waited for it for ever."""
    monkeypatch.setattr(applying_module, "RETRY_EVERY", 0.2)
    path = tmp_path / "c.db"
    async with storing(path, journal=True, journal_size=SMALL) as first:
        assert await first.decide(1.0) == [1]
        assert await first.stored(path) == {1: 1.0}
        journaled = first.db.journaled
        assert journaled is not None
        with journaled._writing:  # as after a failure: the next batch opens a connection
            applying_module._dropped(journaled._connection)
            journaled._connection = None
            refusing = _RefusingOnce(journaled._engine)
            journaled._engine = refusing  # type: ignore[assignment]
        assert await first.decide(2.0) == [2]
        held = await _stored_once_it_goes_on(first, path)
        assert refusing.refused == 1
        assert held == {1: 1.0, 2: 2.0}
        assert await first.decide(3.0) == [3]
        assert await first.stored(path) == {1: 1.0, 2: 2.0, 3: 3.0}


async def test_the_batch_that_fills_the_journal_stands_when_its_start_over_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The batch that fills the journal was appended, synced and queued, then the journal started
    over once all of it was applied. With the apply failing (its table renamed away) that start
    over failed, and the batch was answered as not stored all the same, though the journal held it
    and stored it once the apply could. Now the start over comes before the next batch is taken:
    the batch that filled the journal stands, and a start over that fails refuses a batch the
    journal never held."""
    monkeypatch.setattr(applying_module, "RETRY_EVERY", 0.2)
    path = tmp_path / "s.db"
    async with storing(path, journal=True, journal_size=SMALL) as first:
        journaled = first.db.journaled
        assert journaled is not None
        journal = journaled.journal
        padding = "x" * 2000
        acked = {}
        for i in range(100):  # the journal filled to less than a record of this size from its end
            if journal.size - journal.offset <= 2200:
                break
            acked[(await first.decide(float(i), f"{i}-{padding}"))[0]] = float(i)
        assert await first.stored(path) == acked
        look = sqlite3.connect(path, timeout=timeout(10))
        try:
            look.execute("ALTER TABLE events RENAME TO events_away")
            look.commit()
            pass_ = journal.pass_
            [seq] = await first.decide(100.0, f"filling-{padding}{padding}")  # not refused
            acked[seq] = 100.0
            assert journal.pass_ == pass_ and journal.offset >= journal.size  # not started over
            await asyncio.to_thread(_until, lambda: journaled.failed is not None, "the apply never failed")
            look.execute("ALTER TABLE events_away RENAME TO events")
            look.commit()
        finally:
            look.close()
        held = await _stored_once_it_goes_on(first, path)
        assert held == acked
        [seq] = await first.decide(101.0)
        acked[seq] = 101.0
        assert journal.pass_ == pass_ + 1, "the journal did not start over with the next batch"
        assert await first.stored(path) == acked
