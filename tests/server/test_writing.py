"""The writer thread: jobs and batches in queue order; a failed batch halts it until the loop resumes it."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import Engine

from server.exceptions import NotPersisted
from server.experiments import parse_request, plan
from server.storage import (
    Database,
    EventWriter,
    NewEvent,
    Write,
    WriterThread,
    create_schema,
    insert_experiment,
    make_engine,
)
from tests.server.harness import eventually, holding_writes, timeout, until_queued


@dataclass(eq=False)
class Item:
    write: Write


def item(n: int, events: int = 1) -> Item:
    return Item(Write(1, [NewEvent("decisions", n, 0.0, None, None, None) for _ in range(events)]))


class Recorder:
    """The thread's commit function: records each batch, can be held and made to fail."""

    def __init__(self) -> None:
        self.batches: list[list[Any]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.fail_next = False

    def commit(self, writes: list[Write]) -> None:
        self.gate.wait(timeout(5))
        self.batches.append([w.events[0].value for w in writes])
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("disk gone")


class CommitTimes(list[float]):
    """When each batch of ``thread`` was committed (``time.monotonic``), with the group commit's ``delay``."""

    def __init__(self, thread: WriterThread, delay: float) -> None:
        super().__init__()
        self._another = asyncio.Event()
        thread.batches_to(asyncio.get_running_loop(), self._done, 100, delay)

    def _done(self, batch: list[Any], exc: BaseException | None) -> None:
        self.append(time.monotonic())
        self._another.set()

    async def until(self, count: int) -> None:
        """Until ``count`` batches in all have been committed."""
        async with asyncio.timeout(timeout(5)):
            while len(self) < count:
                self._another.clear()
                await self._another.wait()


def timed_thread(delay: float) -> tuple[Recorder, WriterThread, CommitTimes]:
    """A writer thread committing through a :class:`Recorder`, its commits timed, with the group commit's ``delay``."""
    rec = Recorder()
    thread = WriterThread(rec.commit, lambda: None)
    return rec, thread, CommitTimes(thread, delay)


async def test_writes_queued_while_a_batch_commits_go_together_and_jobs_keep_their_place() -> None:
    rec = Recorder()
    thread = WriterThread(rec.commit, lambda: None)
    done: list[tuple[list[Any], BaseException | None]] = []
    finished = asyncio.Event()

    def on_done(batch: list[Any], exc: BaseException | None) -> None:
        done.append(([i.write.events[0].value for i in batch], exc))
        if sum(len(b) for b, _ in done) == 6:
            finished.set()

    thread.batches_to(asyncio.get_running_loop(), on_done, max_batch=3)
    try:
        rec.gate.clear()
        thread.submit(item(1))  # taken at once, held at the gate
        await asyncio.sleep(0.05)
        for n in (2, 3, 4):
            thread.submit(item(n))
        job = thread.call(lambda: len(rec.batches))
        thread.submit(item(5))
        thread.submit(item(6, events=3))  # would make 4 events with 5: a batch of its own
        rec.gate.set()
        assert await asyncio.wait_for(job, timeout(5)) == 2, "the job ran after 2-4 were committed, before 5"
        await asyncio.wait_for(finished.wait(), timeout(5))
        assert rec.batches == [[1], [2, 3, 4], [5], [6]]
        assert [b for b, _ in done] == rec.batches and all(exc is None for _, exc in done)
    finally:
        thread.stop()


async def test_an_idle_thread_is_woken_after_the_loops_turn_so_the_writes_of_one_turn_go_together() -> None:
    rec = Recorder()
    thread = WriterThread(rec.commit, lambda: None)
    committed = asyncio.Event()
    thread.batches_to(asyncio.get_running_loop(), lambda batch, exc: committed.set(), max_batch=100)
    try:
        thread.submit(item(0))  # starts the thread; let it commit and go idle
        await asyncio.wait_for(committed.wait(), timeout(5))
        await asyncio.sleep(0.05)
        committed.clear()
        thread.submit(item(1))
        time.sleep(0.1)  # noqa: ASYNC251 - the rest of this turn, GIL released: a woken thread would commit 1 alone now
        thread.submit(item(2))
        assert rec.batches == [[0]], "the thread started a batch before the loop's turn ended"
        await asyncio.wait_for(committed.wait(), timeout(5))
        assert rec.batches == [[0], [1, 2]]
    finally:
        thread.stop()


async def test_while_writes_stream_in_a_batch_waits_the_group_commits_delay_and_a_lone_write_does_not() -> None:
    """The group commit: after a batch with company, the next waits ``delay`` and takes what came
    meanwhile (from later turns of the loop); after a lone write, the next is committed at once."""
    delay = timeout(0.5)
    rec, thread, committed = timed_thread(delay)
    commits = committed.until
    try:
        thread.submit(item(0))  # alone: at once, and the stream is off
        await commits(1)
        sent = time.monotonic()
        thread.submit(item(1))
        await commits(2)
        assert committed[1] - sent < delay, "a lone write waited for company"
        thread.submit(item(2))
        thread.submit(item(3))  # one turn: a batch with company, the stream is on
        await commits(3)
        thread.submit(item(4))
        await asyncio.sleep(delay / 5)  # later turns of the loop, within the delay
        thread.submit(item(5))
        await commits(4)
        assert rec.batches == [[0], [1], [2, 3], [4, 5]]
        thread.submit(item(6))  # after a batch of two: waits, then alone, so the stream is off again
        await commits(5)
        sent = time.monotonic()
        thread.submit(item(7))
        await commits(6)
        assert committed[5] - sent < delay
        assert rec.batches[4:] == [[6], [7]]
    finally:
        thread.stop()


async def test_writes_queued_behind_a_slow_commit_have_waited_already_so_their_batch_goes_at_once() -> None:
    """A commit that took twice the group commit's ``delay`` or more (the disk stalled) is followed
    at once: what queued behind it waited through it, and is not held back ``delay`` more."""
    delay = timeout(0.3)
    rec, thread, committed = timed_thread(delay)
    commits = committed.until
    try:
        thread.submit(item(0))
        await commits(1)
        rec.gate.clear()  # the next commit waits for the disk
        thread.submit(item(1))
        thread.submit(item(2))  # one turn: a batch with company, the stream is on
        await until_queued(SimpleNamespace(writer=thread), 0)  # 1 and 2 taken, held at the gate
        thread.submit(item(3))
        await asyncio.sleep(2.5 * delay)
        released = time.monotonic()
        rec.gate.set()
        await commits(3)
        assert rec.batches == [[0], [1, 2], [3]]
        assert committed[2] - released < delay, "a write that waited through a slow commit waited the delay again"
        thread.submit(item(4))
        thread.submit(item(5))
        await commits(4)
        sent = time.monotonic()
        thread.submit(item(6))  # after an ordinary commit of a stream: the whole delay, for company
        await commits(5)
        assert committed[4] - sent >= delay * 0.9, "after an ordinary commit the batch did not wait for company"
    finally:
        thread.stop()


async def test_a_failed_batch_holds_back_what_was_queued_behind_it_until_the_loop_resumes() -> None:
    """Writes behind a failed batch are handed back, a job behind it is refused unrun; what comes after runs."""
    rec = Recorder()
    thread = WriterThread(rec.commit, lambda: None)
    loop = asyncio.get_running_loop()
    outcome: asyncio.Future[tuple[list[Any], list[Any]]] = loop.create_future()
    later = asyncio.Event()

    def on_done(batch: list[Any], exc: BaseException | None) -> None:
        values = [i.write.events[0].value for i in batch]
        if exc is not None:
            withdrawn = [i.write.events[0].value for i in thread.withdraw()]
            outcome.set_result((values, withdrawn))
            thread.resume()
        elif values == [9]:
            later.set()

    thread.batches_to(loop, on_done, max_batch=100)
    ran: list[str] = []
    try:
        rec.gate.clear()
        rec.fail_next = True
        thread.submit(item(1))
        await asyncio.sleep(0.05)
        thread.submit(item(2))
        job = thread.call(lambda: ran.append("behind"))
        thread.submit(item(3))
        rec.gate.set()
        failed, withdrawn = await asyncio.wait_for(outcome, timeout(5))
        assert failed == [1]
        assert withdrawn == [2, 3], "the writes behind the failed batch are handed back, never committed"
        with pytest.raises(NotPersisted, match="queued behind a batch that could not be stored"):
            await asyncio.wait_for(job, timeout(5))
        after = thread.call(lambda: ran.append("after"))
        thread.submit(item(9))
        await asyncio.wait_for(after, timeout(5))
        await asyncio.wait_for(later.wait(), timeout(5))
        assert rec.batches == [[1], [9]]
        assert ran == ["after"], "the job behind the failed batch never ran; the one queued after the resume did"
    finally:
        thread.stop()


async def test_stop_runs_what_is_queued_then_the_last_function() -> None:
    rec = Recorder()
    thread = WriterThread(rec.commit, lambda: None)
    thread.batches_to(asyncio.get_running_loop(), lambda batch, exc: None, max_batch=100)
    rec.gate.clear()
    thread.submit(item(1))
    thread.submit(item(2))
    last: list[int] = []
    rec.gate.set()
    thread.stop(lambda: last.append(len(rec.batches)))
    assert sum(len(b) for b in rec.batches) == 2 and last == [len(rec.batches)]
    thread.stop(lambda: last.append(-1))  # stopped already: runs here
    assert last[-1] == -1


async def test_stop_waits_for_the_queue_and_past_its_timeout_refuses_what_is_left_after_the_commit_under_way(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """stop(timeout): the held commit finishes and is reported; the writes and jobs behind it get NotPersisted.

    Each step waited for, not slept through: on a busy CI machine the stop's thread had not said
    it within 0.5 s."""
    rec = Recorder()
    thread = WriterThread(rec.commit, lambda: None)
    loop = asyncio.get_running_loop()
    outcomes: list[tuple[list[Any], BaseException | None]] = []
    thread.batches_to(loop, lambda batch, exc: outcomes.append(([i.write.events[0].value for i in batch], exc)), 100)
    ran: list[str] = []
    rec.gate.clear()
    thread.submit(item(1))
    await eventually(lambda: thread.queued() == 0)  # taken: its commit waits at the gate
    thread.submit(item(2))
    job = thread.call(lambda: ran.append("job"))
    thread.submit(item(3))
    stopping = asyncio.ensure_future(asyncio.to_thread(thread.stop, lambda: ran.append("last"), timeout=0.2))
    await eventually(lambda: "were left unstored" in caplog.text)
    assert "2 writes (2 events) were left unstored after 0.2 s" in caplog.text
    assert not stopping.done(), "stop waits for the commit under way, past its timeout too"
    rec.gate.set()
    assert await asyncio.wait_for(stopping, timeout(5)) == 2
    with pytest.raises(NotPersisted, match="not run: the server stopped before it could be stored"):
        await asyncio.wait_for(job, timeout(5))
    await asyncio.sleep(0.05)  # the outcomes posted to the loop
    assert rec.batches == [[1]]
    assert outcomes[0] == ([1], None)
    assert outcomes[1][0] == [2, 3] and isinstance(outcomes[1][1], NotPersisted)
    assert str(outcomes[1][1]) == "the event could not be stored: the server stopped before it could be stored"
    assert ran == ["last"], "the refused job never ran; stop's last function did"


async def test_stop_called_while_a_failed_batch_holds_the_thread_refuses_what_is_behind_it_unstored() -> None:
    """stop() on a thread halted by a failed batch, with the loop blocked in it: nothing behind is committed."""
    rec = Recorder()
    thread = WriterThread(rec.commit, lambda: None)
    outcomes: list[tuple[list[Any], BaseException | None]] = []
    thread.batches_to(
        asyncio.get_running_loop(),
        lambda batch, exc: outcomes.append(([i.write.events[0].value for i in batch], exc)),
        max_batch=100,
    )
    ran: list[str] = []
    rec.gate.clear()
    rec.fail_next = True
    thread.submit(item(1))
    await asyncio.sleep(0.05)
    thread.submit(item(2))
    job = thread.call(lambda: ran.append("job"))
    rec.gate.set()
    # as Database.close() called on the loop: the loop cannot withdraw what is behind the failure
    stopper = threading.Thread(target=thread.stop, args=(lambda: ran.append("last"),), daemon=True)
    stopper.start()
    stopper.join(timeout(5))
    assert not stopper.is_alive(), "stop returned without the loop's help"
    with pytest.raises(NotPersisted, match="queued behind a batch that could not be stored"):
        await asyncio.wait_for(job, timeout(5))
    await asyncio.sleep(0.05)
    assert rec.batches == [[1]], "the write behind the failed batch was never committed"
    assert [values for values, _ in outcomes] == [[1], [2]]
    assert isinstance(outcomes[0][1], RuntimeError) and isinstance(outcomes[1][1], NotPersisted)
    assert ran == ["last"]


async def test_the_writer_thread_is_not_a_daemon() -> None:
    """The interpreter waits for the writer thread: a process never ends in the middle of a commit."""
    thread = WriterThread(Recorder().commit, lambda: None)
    try:
        assert await asyncio.wait_for(thread.call(lambda: threading.current_thread().daemon), timeout(5)) is False
    finally:
        thread.stop()


def _ran(engine: Engine, ran: list[str], name: str) -> str:
    ran.append(name)
    return name


async def test_database_jobs_queued_behind_a_failed_batch_are_refused_and_the_writers_close_still_returns(
    database_url: str,
) -> None:
    """Through the real Database: jobs behind a batch the database fails (its events table gone)
    get NotPersisted unrun; close returns. (A write the database refuses alone, one that breaks a
    foreign key say, fails alone: tests/server/test_refused_apart.py.)"""
    db = Database(database_url)
    try:
        await db.write(create_schema)
        spec = plan(parse_request({"game": "bimatrix", "participants": 2, "group_size": 2}))
        experiment_id = await db.write(insert_experiment, spec)
        writer = EventWriter(db)
        writer.start()
        failures: list[NotPersisted] = []
        committed: list[Write] = []
        ran: list[str] = []
        engine = make_engine(database_url)
        try:
            with engine.begin() as conn:
                conn.exec_driver_sql("ALTER TABLE events RENAME TO events_away")
        finally:
            engine.dispose()
        broken = Write(experiment_id, [NewEvent("decisions", 1, time.time())])
        with holding_writes(database_url):  # the batch waits in the database while the jobs queue up
            writer.submit(broken, committed.append, failures.append)
            behind = asyncio.ensure_future(db.write(_ran, ran, "behind"))
            closing = asyncio.ensure_future(writer.close())
            await until_queued(db, 2)
        with pytest.raises(NotPersisted, match="queued behind a batch that could not be stored"):
            await asyncio.wait_for(behind, timeout(10))
        await asyncio.wait_for(closing, timeout(10))  # refused too, but close does not raise
        assert committed == [] and len(failures) == 1
        assert ran == [], "a job queued behind the failed batch never runs"
        assert await asyncio.wait_for(db.write(_ran, ran, "after"), timeout(10)) == "after"
        assert ran == ["after"]
    finally:
        db.close()
