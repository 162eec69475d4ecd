"""The process's one writing thread: jobs and batches of writes, run in the order they were queued.

The event loop only appends to a queue. The thread takes whatever writes are queued when it is
free, commits them as one batch, and posts the outcome back to the loop with one
``call_soon_threadsafe``. Under load it sleeps only for the group commit's wait (:meth:`WriterThread._gather`),
while the loop sends the last batch out. An idle thread is woken once the loop
has run what was ready when the first write came (``call_soon``), not at each write: the frames
that arrive together are committed together, and the thread does not take the core from the
loop in the middle of its turn to commit one write while the next ones wait for a batch of their own.

A failed batch halts the thread until the loop has withdrawn what was queued behind it
(:meth:`WriterThread.withdraw`) and called :meth:`WriterThread.resume`. None of the writes,
computed on top of the lost one, is ever committed, and none of the jobs (:meth:`WriterThread.call`)
is run: each is refused with :class:`~server.exceptions.NotPersisted`, as the writes are, since it
was asked for after writes that are now lost and may rest on them (an experiment's status set from
what its groups' lost events did, say). Jobs queued once the loop has resumed the thread run as
usual; the last function of :meth:`WriterThread.stop` always runs.

The thread is not a daemon: the process does not end in the middle of a commit, nor with writes
still queued, and :meth:`WriterThread.stop` bounds the wait for them. The commit under way is
bounded only by the database driver: on SQLite by ``busy_timeout`` (30 s, see
:func:`.engine.make_engine`) while another process holds the write lock; on PostgreSQL by the
server's ``lock_timeout`` and ``statement_timeout``, off unless the database or its URL sets them.
Should the interpreter exit without :meth:`stop` (uvicorn's forced exit skips the app's
shutdown), the idle thread sees within :data:`WATCH_EVERY` seconds that the main thread has
ended, commits what is queued, and ends.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from ..exceptions import NotPersisted
from .wakeup import Wakeup
from .writes import Write

log = logging.getLogger("synclab.writer")
T = TypeVar("T")
#: the upper bounds (ms) of the buckets of :attr:`WriterThread.commit_ms`; the last bucket is beyond
COMMIT_BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
#: the buckets' names, as ``GET /api/server`` gives them
COMMIT_BUCKET_NAMES = (*(str(bound) for bound in COMMIT_BUCKETS_MS), "more")
#: why what was queued behind a failed batch is refused
BEHIND_FAILURE = "it was queued behind a batch that could not be stored"
#: why what was still queued when :meth:`WriterThread.stop`'s timeout passed is refused
STOPPED_FIRST = "the server stopped before it could be stored"
#: seconds between the idle thread's looks at whether the main thread has ended (see :meth:`WriterThread._wait`)
WATCH_EVERY = 0.5


class Queued(Protocol):
    """A write waiting for its batch."""

    write: Write


@dataclass(slots=True, eq=False)
class _Job:
    fn: Callable[[], Any]
    #: where the result goes; ``None`` for the last function of :meth:`WriterThread.stop`
    loop: asyncio.AbstractEventLoop | None = None
    future: asyncio.Future[Any] | None = None


#: ``done(batch, exc)``: ``exc`` is ``None`` (committed), the commit's exception, or a
#: :class:`NotPersisted` for writes refused without being tried (see :meth:`WriterThread.stop`)
Done = Callable[[list[Any], BaseException | None], None]


class WriterThread:
    """Runs ``commit(writes)`` for batches and any function given to :meth:`call`, one at a time.

    ``between()`` runs on the thread after each committed batch (the SQLite log's restart).
    """

    def __init__(self, commit: Callable[[list[Write]], None], between: Callable[[], None], *, name: str = "synclab-writer") -> None:
        self._commit = commit
        self._between = between
        self._name = name
        self._items: deque[Any] = deque()
        self._wakeup = Wakeup(threading.Lock())  # a Condition's wait and notify, lighter
        self._lock = self._wakeup.lock
        self._halted = False
        self._stopping = False
        #: past :meth:`stop`'s timeout: refuse whatever is queued after the commit under way
        self._dropping = False
        self._thread: threading.Thread | None = None
        self._done: Done | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._max_batch, self._idle = 2000, False
        #: seconds a batch waits for company while writes come in a stream (see :meth:`_gather`)
        self._delay = 0.0
        #: whether the last batch had company (more than one write): the stream is on
        self._streaming = False
        #: about when the writes queued now came (``time.perf_counter``): not before the last
        #: batch was taken, nor (roughly) before the idle thread was woken (see :meth:`_gather`)
        self._queued_since = 0.0
        #: the thread that runs :attr:`_loop` (see :meth:`_wake_soon`)
        self._loop_thread: int | None = None
        #: the loop that will wake the idle thread at the end of its turn (see :meth:`_put`)
        self._waking: asyncio.AbstractEventLoop | None = None
        #: committed batches by how long the commit took (wall time: statements and ``fsync``),
        #: one count per bucket of :data:`COMMIT_BUCKETS_MS` and one for longer; kept on the loop
        self.commit_ms = [0] * (len(COMMIT_BUCKETS_MS) + 1)

    # ------------------------------------------------------------------ the loop's side

    def batches_to(self, loop: asyncio.AbstractEventLoop, done: Done, max_batch: int, delay: float = 0.0) -> None:
        """Where each batch's outcome goes: ``done(batch, None)`` or ``done(batch, exc)`` on ``loop``.

        ``delay``: the group commit's wait, in seconds (see :meth:`_gather`); 0 commits at once.
        """
        self._loop, self._done, self._max_batch, self._delay = loop, done, max_batch, delay
        self._loop_thread = threading.get_ident()

    def submit(self, item: Queued) -> None:
        """Queue a write for the next batch (:meth:`batches_to` first)."""
        if self._done is None:
            raise RuntimeError("the writer thread has nowhere to report batches: call batches_to first")
        self._put(item)

    def call(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        """Run ``fn()`` on the thread after everything queued before; its result comes back on the loop."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._put(_Job(fn, loop, future))
        return future

    def queued(self) -> int:
        """Writes and jobs waiting for the thread (not the batch or job under way)."""
        return len(self._items)

    def withdraw(self, only: Callable[[Any], bool] | None = None) -> list[Any]:
        """After a failed batch: take back every write queued behind it and refuse every job.

        Each job's future gets :class:`NotPersisted` and its function never runs; only the last
        function of :meth:`stop` stays queued. Returns the writes, in order, for the loop to fail.
        With ``only`` (a batch stored but for some writes): the writes it picks, and no job.
        """
        with self._lock:
            if only is not None:
                picked = [i for i in self._items if not isinstance(i, _Job) and only(i)]
                for write in picked:
                    self._items.remove(write)
                return picked
            writes, refused = self._take_queued()
        for job in refused:
            _refuse(job, BEHIND_FAILURE)
        return writes

    def resume(self) -> None:
        """Go on after a failed batch."""
        with self._lock:
            self._halted = False
            self._wakeup.notify()

    def stop(self, run: Callable[[], None] | None = None, *, timeout: float | None = None) -> int:
        """Run what is queued, then ``run()`` on the thread (if given), then end the thread; return once it has.

        With ``timeout`` (seconds), what is still queued when it has passed is not stored: the
        thread finishes the commit under way (bounded by the driver, see the module's docstring),
        refuses the rest with :class:`NotPersisted` (the writes through ``done``, as a failed
        batch's; each job's awaiter), runs ``run()`` and ends, and an error in the log says how
        many writes were left unstored. Returns that number (0 when everything was stored in
        time). Writes queued behind a failed batch that the loop has not withdrawn yet are
        refused by the thread itself: the loop may be the very caller waiting here.
        """
        with self._lock:
            thread = self._thread if self._thread is not None and self._thread.is_alive() else None
            if run is not None and thread is not None:
                self._items.append(_Job(run))
            self._stopping = True
            self._wakeup.notify()
        if thread is None:
            if run is not None:
                run()
            return 0
        thread.join(timeout)
        if not thread.is_alive():
            return 0
        with self._lock:  # the thread takes from the queue under this lock: these are exactly the ones it drops
            left = [i for i in self._items if not isinstance(i, _Job)]
            self._dropping = True
            self._wakeup.notify()
        log.error("shutdown: %d writes (%d events) were left unstored after %g s; the commit under way finishes first",
                  len(left), sum(len(i.write.events) for i in left), timeout)
        thread.join()
        return len(left)

    def _put(self, item: Any) -> None:
        if self._stopping:
            raise RuntimeError("the writer thread is stopped")
        self._items.append(item)
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    # not a daemon: the interpreter waits for it rather than stopping it mid-commit
                    self._thread = threading.Thread(target=self._run, name=self._name, daemon=False)
                    self._thread.start()
        if self._idle:  # see _next: set before the thread looks at the queue a last time
            self._wake_soon()

    def _take_queued(self) -> tuple[list[Any], list[_Job]]:
        """Empty the queue but for :meth:`stop`'s last function: (the writes, the other jobs). Under the lock."""
        writes = [i for i in self._items if not isinstance(i, _Job)]
        jobs = [i for i in self._items if isinstance(i, _Job) and i.future is not None]
        last = [i for i in self._items if isinstance(i, _Job) and i.future is None]
        self._items.clear()
        self._items.extend(last)
        return writes, jobs

    def _wake_soon(self) -> None:
        """Wake the idle thread after what the running loop has ready now (at once without a loop)."""
        loop: asyncio.AbstractEventLoop | None = self._loop
        # the batches' loop, running on this thread: known without asking (asyncio's
        # get_running_loop is a getpid system call per call in Python 3.11)
        if loop is None or self._loop_thread != threading.get_ident() or not loop.is_running():
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
        if loop is not None and self._waking is loop:
            return  # this turn's wake-up is already due
        if loop is None or self._waking is not None:  # no loop, or another loop's wake-up is due
            self._wake()
            return
        self._waking = loop
        loop.call_soon(self._wake)

    def _wake(self) -> None:
        self._waking = None
        with self._lock:
            self._wakeup.notify()

    # ------------------------------------------------------------------ the thread's side

    def _next(self) -> Any:
        """The next job or batch (a list); ``None``: stop."""
        gathered = False
        with self._lock:
            while True:
                self._idle = True
                if self._dropping:
                    self._drop_queued(STOPPED_FIRST)
                    self._halted = False
                elif self._halted and self._stopping:
                    # stopping: the loop that would withdraw them may be the one waiting in stop()
                    self._drop_queued(BEHIND_FAILURE)
                    self._halted = False
                if not self._halted and self._items:
                    if gathered or not self._streaming or self._delay <= 0 or isinstance(self._items[0], _Job):
                        break
                    # a write of a stream: wait for company once, then look at the queue again
                    # (what the wait brought, or what a stop or a withdrawal left of it)
                    self._idle = False
                    gathered = True
                    self._gather()
                    continue
                if self._stopping and not self._items:
                    self._idle = False
                    return None
                self._wait()
                self._queued_since = time.perf_counter()
            self._idle = False
            first = self._items.popleft()
            if isinstance(first, _Job):
                return first
            batch, size = [first], len(first.write.events)
            while self._items and not isinstance(self._items[0], _Job):
                events = len(self._items[0].write.events)
                if size + events > self._max_batch:
                    break
                batch.append(self._items.popleft())
                size += events
            self._streaming = len(batch) > 1
            self._queued_since = time.perf_counter()
            return batch

    def _gather(self) -> None:
        """A group commit (under the lock, released meanwhile): wait up to ``delay`` before a batch.

        Only while writes stream in (the last batch had more than one): a commit costs its
        statements, a page per table and index it touches and an ``fdatasync`` whatever it holds,
        so at 2,000 decisions a second batches of two cost about a fifth more CPU per decision
        than batches of four or five. A lone write (a lab's pace) is committed at once. The wait
        is ``delay`` less what the last batch took beyond ``delay`` (its commit and the log's
        restart): writes that waited through a slow commit are not held back again, and after one
        of twice ``delay`` or more the batch goes at once. Nothing is acknowledged or sent before
        its commit: waiting changes when, never whether.
        """
        wait = self._delay - max(0.0, time.perf_counter() - self._queued_since - self._delay)
        if wait <= 0:
            return
        self._lock.release()
        try:
            time.sleep(wait)
        finally:
            self._lock.acquire()

    def _wait(self) -> None:
        """Until notified (under the lock); meanwhile watch whether the main thread has ended.

        The interpreter waits for this thread before it exits, so a process whose main thread
        ended without :meth:`stop` would wait for ever: the thread stops by itself then. A
        timed-out wait leaves the queue to the wake-up due (:meth:`_wake_soon`); with none due,
        back to the queue (a guard: :class:`.wakeup.Wakeup` loses no wake-up to a timeout)."""
        while not self._wakeup.wait(WATCH_EVERY):
            if self._items and self._waking is None:
                return
            if not threading.main_thread().is_alive():
                log.warning("the main thread ended without stopping the writer: storing %d queued items", len(self._items))
                self._stopping = True
                return

    def _drop_queued(self, reason: str) -> None:
        """Refuse everything queued but :meth:`stop`'s last function (under the lock)."""
        writes, jobs = self._take_queued()
        for job in jobs:
            _refuse(job, reason)
        if writes:
            assert self._loop is not None and self._done is not None
            _post(self._loop, self._done, writes, NotPersisted(f"the event could not be stored: {reason}"))

    def _run(self) -> None:
        while True:
            item = self._next()
            if item is None:
                return
            try:
                if isinstance(item, _Job):
                    self._run_job(item)
                else:
                    self._run_batch(item)
            except BaseException:  # the thread must outlive any fault; report it
                log.exception("the writer thread failed on %r", item)
            # not held while the thread waits: a batch's callbacks hold its groups in memory
            item = None

    def _run_job(self, job: _Job) -> None:
        if job.loop is None or job.future is None:
            job.fn()  # stop's last function: a fault is logged by _run
            return
        try:
            result = job.fn()
        except BaseException as exc:
            _post(job.loop, _settle, job.future, None, exc)
        else:
            _post(job.loop, _settle, job.future, result, None)

    def _run_batch(self, batch: list[Any]) -> None:
        assert self._loop is not None and self._done is not None
        started = time.perf_counter()
        try:
            self._commit([item.write for item in batch])
        except BaseException as exc:
            with self._lock:
                self._halted = True  # until the loop has withdrawn what was computed on top of it
            _post(self._loop, self._done, batch, exc)
            return
        took = (time.perf_counter() - started) * 1000
        _post(self._loop, self._committed, batch, took)
        self._between()

    def _committed(self, batch: list[Any], took: float) -> None:
        """On the loop: count the commit's time with the batch's outcome, so the two always agree."""
        self.commit_ms[bisect.bisect_left(COMMIT_BUCKETS_MS, took)] += 1
        assert self._done is not None
        self._done(batch, None)


def _refuse(job: _Job, reason: str) -> None:
    """Fail a job's future with :class:`NotPersisted`, on its loop; the function is not run."""
    assert job.loop is not None and job.future is not None
    _post(job.loop, _settle, job.future, None, NotPersisted(f"not run: {reason}"))


def _post(loop: asyncio.AbstractEventLoop, fn: Callable[..., None], *args: Any) -> None:
    """``fn(*args)`` on ``loop``; a closed loop (the process exits without :meth:`WriterThread.stop`) hears nothing."""
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:
        if not loop.is_closed():
            raise


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if future.cancelled():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)
