"""Journal-first storage on SQLite (``SYNCLAB_JOURNAL=on``): a batch is acknowledged once it is
in a journal synced to the disk, and applied to the database a few milliseconds later, in bulk,
on a thread of its own.

Storing first costs the direct writer a SQLite commit per batch, synced (``synchronous=FULL``):
its statements, a page of every table and index they touch, and the log's ``fdatasync``, a
millisecond or more while the batch waits (bench/README.md). Here the writer thread numbers the
batch's events from counters it keeps, appends the batch to the journal (:mod:`.journal`: one
write and one ``fdatasync`` of a few hundred bytes a decision) and acknowledges it. The apply
thread stores what came in the last :data:`APPLY_EVERY` seconds in one transaction that is not
synced by itself (``synchronous=NORMAL``), with the journal's position it reached (the
``meta`` row :data:`.recovery.MARKER`). An acknowledged decision survives a power loss as before: it is in
the journal until the database holds it synced.

What keeps the two in step:

- **One process per database.** The counters are the database's own only while nothing else
  writes to it: the journal's server holds an exclusive lock on the database file
  (:func:`.recovery.lock_database`), which the direct writer's processes take shared.
- **Reads see what was acknowledged.** :meth:`JournalFirst.caught_up` waits (the apply started
  at once) until everything acknowledged before it is applied; :class:`.database.Database`
  does so before every read and every job of its writer thread, which run on the database.
- **Recovery.** At every start, and before ``export``, ``verify`` and ``db upgrade`` read a
  database no server holds, what the journal holds past the marker is applied
  (:mod:`.recovery`), each record in the order it was acknowledged, then synced.
- **Reuse.** The journal starts a new pass (:meth:`.journal.Journal.restart`) only once all of
  it is applied and the database's files are synced (:func:`.recovery.sync_database`).
- **A failed apply halts.** Nothing more is acknowledged or read (a decision is answered
  ``not_persisted``, a REST call 503) while the apply is tried again every :data:`RETRY_EVERY`
  seconds; once it succeeds (a full disk with room again, a lock let go) storage goes on. The
  journal keeps what was acknowledged meanwhile, applied at the next start if the server stops
  first.

PostgreSQL keeps the direct writer: its commits are numbered by the database for every worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

from sqlalchemy import Engine, select
from sqlalchemy.engine import Connection

from .journal import Journal, Record
from .recovery import MARKER, encode, marker, sync_database
from .repeats import apply_journaled
from .tables import experiments
from .unstorable import storable
from .writes import Write

log = logging.getLogger("synclab.journal")
T = TypeVar("T")
#: seconds the apply thread gathers acknowledged batches before it stores them together
APPLY_EVERY = 0.01
#: seconds between the idle apply thread's looks at whether the main thread has ended
WATCH_EVERY = 0.5
#: how much the apply thread raises its own ``nice`` (Linux): on a core it shares with the event
#: loop and the writer thread, they run first when they wake, and it still gets a twentieth of the
#: core when both want all of it (bench/README.md, "The apply thread's priority")
APPLY_NICE = 10
#: seconds between tries of an apply that failed (storage halted meanwhile)
RETRY_EVERY = 1.0



class ApplyFailed(RuntimeError):
    """The apply thread could not store what the journal holds: nothing more is taken or read
    until it can (a decision is answered ``not_persisted`` as after any failed commit, a REST
    call 503: :func:`server.api.storage_halted`)."""


class JournalFirst:
    """The writer's commit and the apply thread of one journal (see the module's docstring)."""

    def __init__(
        self,
        engine: Engine,
        journal: Journal,
        path: str,
        held: int,
        *,
        apply_every: float = APPLY_EVERY,
        between: Callable[[Connection], None] | None = None,
    ) -> None:
        self._engine = engine
        self.journal = journal
        self._path = path
        #: a descriptor of the database file this process keeps open (see :func:`.recovery.sync_database`)
        self._held = held
        self._apply_every = apply_every
        self._between = between
        #: each experiment's last ``seq`` handed out; only the writer thread uses it
        self._counters: dict[int, int] = {}
        self._cond = threading.Condition(threading.Lock())
        #: acknowledged, not applied yet: (record, its writes)
        self._pending: list[tuple[Record, list[Write]]] = []
        #: records appended and records applied, counted from the start
        self.appended = 0
        self.applied = 0
        self._nudged = False
        self._stopping = False
        self.failed: BaseException | None = None
        #: the database's writes of this process: the apply's or a job's (never both at once)
        self._writing = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        #: the loop's reads waiting for the apply: (records to be applied, future)
        self._waiting: list[tuple[int, asyncio.Future[None]]] = []
        self._thread = threading.Thread(target=self._run, name="synclab-apply", daemon=False)
        self._thread.start()

    # ------------------------------------------------------------------ the writer thread's side

    def commit(self, writes: list[Write]) -> None:
        """Number ``writes``, append them to the journal synced, and queue them for the apply.

        Returns once they are on the disk: the writer acknowledges them then. Raises when the
        apply has failed, when a write is fenced (a cluster's: never here), when a write cannot
        be stored (:mod:`.unstorable`; the counters are put back, the batch goes again without
        it), or the journal could not take them.
        """
        if self.failed is not None:
            self._check()
        for write in writes:
            if write.epoch is not None:
                raise RuntimeError("a fenced write needs the direct writer (a cluster runs on PostgreSQL)")
        counters = self._counters
        try:
            for write in writes:
                n = len(write.events)
                if n:
                    eid = write.experiment_id
                    last = counters[eid] if eid in counters else self._stored_seq(eid)
                    # a list display for a decision's two events (and a lone one): a range and its
                    # list cost some 2,000 instructions a write more
                    write.seqs = (
                        [last + 1, last + 2] if n == 2 else [last + 1] if n == 1 else list(range(last + 1, last + 1 + n))
                    )
                    counters[eid] = last + n
            storable(writes)
            payload = encode(writes)
        except BaseException:
            # not taken: the numbers go back exactly as they were (the database, behind the
            # journal, cannot tell them), for the batch to go again without what it cannot store
            _unnumber(counters, writes)
            raise
        journal = self.journal
        try:
            record = journal.append(payload)
        except BaseException:
            self._counters.clear()  # numbers handed out but not taken; the journal refuses what follows
            raise
        # the condition's lock by its own methods: a ``with`` on the Condition is two calls of Python
        cond = self._cond
        cond.acquire()
        try:
            self._pending.append((record, writes))
            self.appended += 1
            if len(self._pending) == 1:
                cond.notify_all()
        finally:
            cond.release()
        if journal.offset >= journal.size:
            self._restart()

    def job(self, fn: Callable[[], T]) -> T:
        """Run ``fn()`` (it writes or reads the database) once everything acknowledged is applied."""
        self.drain()
        with self._writing:
            try:
                return fn()
            finally:
                self._counters.clear()  # read again from the database: a job may change them

    def aside(self, fn: Callable[[], T]) -> T:
        """Run ``fn()`` on the calling thread, the apply held back meanwhile, the writer thread not:
        its batches are appended (and acknowledged) as ever and applied once ``fn`` is done. For a
        write that touches nothing the batches do (see :meth:`.database.Database.write_aside`);
        the counters stay as they are, unlike after a :meth:`job`."""
        self._check()
        with self._writing:
            return fn()

    def drain(self) -> None:
        """Until everything appended is applied (the apply started at once)."""
        with self._cond:
            target = self.appended
            self._nudged = True
            self._cond.notify_all()
            while self.applied < target and self.failed is None:
                self._cond.wait(WATCH_EVERY)
        self._check()

    def _stored_seq(self, experiment_id: int) -> int:
        """An experiment's counter as the database holds it: right while none of its events wait for the apply.

        The counters are read after a job, which waits for the apply first, and kept from then:
        an experiment not counted since has nothing of it pending.
        """
        with self._engine.connect() as conn:
            found = conn.execute(select(experiments.c.last_seq).where(experiments.c.id == experiment_id)).first()
        if found is None:
            raise LookupError(f"no experiment {experiment_id}")
        return int(found[0] or 0)

    def _restart(self) -> None:
        """The journal is full: once all of it is applied and synced, use it again from its start."""
        self.drain()
        with self._writing:
            sync_database(self._path, self._held)
            self.journal.restart()

    def _check(self) -> None:
        if self.failed is not None:
            raise ApplyFailed(f"storage halted: the journal could not be applied ({self.failed})")

    # ------------------------------------------------------------------ the loop's side

    async def caught_up(self) -> None:
        """On the loop: once everything acknowledged so far is in the database."""
        self._check()
        target = self.appended
        if self.applied >= target:
            return
        loop = asyncio.get_running_loop()
        self._loop = loop
        future: asyncio.Future[None] = loop.create_future()
        self._waiting.append((target, future))
        with self._cond:
            self._nudged = True
            self._cond.notify_all()
        await future

    def _release(self) -> None:
        """On the loop, after an apply: the reads it caught up with go on."""
        still = []
        for target, future in self._waiting:
            if future.done():
                continue
            if self.failed is not None:
                future.set_exception(ApplyFailed(f"storage halted: the journal could not be applied ({self.failed})"))
            elif self.applied >= target:
                future.set_result(None)
            else:
                still.append((target, future))
        self._waiting = still

    # ------------------------------------------------------------------ the apply thread

    def _take(self) -> list[tuple[Record, list[Write]]] | None:
        """The next records to apply (maybe none, when nudged); ``None``: stop."""
        with self._cond:
            while not self._pending and not self._nudged and not self._stopping:
                if not self._cond.wait(WATCH_EVERY) and not threading.main_thread().is_alive():
                    self._stopping = True
            if self._pending and not self._nudged and not self._stopping:
                self._cond.wait(self._apply_every)  # gather; a nudge or a stop cuts it short
            taken, self._pending, self._nudged = self._pending, [], False
            if not taken and self._stopping:
                return None
            return taken

    def _run(self) -> None:
        lower_priority(APPLY_NICE)
        connection: Connection | None = None
        #: records whose apply failed: tried again every RETRY_EVERY seconds while storage is halted
        failed: list[tuple[Record, list[Write]]] | None = None
        try:
            while True:
                if failed is None:
                    taken = self._take()
                    if taken is None:
                        return
                elif self._halted_wait():
                    taken = failed
                else:
                    return  # stopping: the journal keeps them for the next start
                if taken:
                    try:
                        if connection is None:
                            connection = self._engine.connect()
                            # this connection's commits are not synced one by one: the journal is
                            connection.exec_driver_sql("PRAGMA synchronous=NORMAL")
                            connection.commit()
                        writes = [w for _, ws in taken for w in ws]
                        with self._writing:
                            apply_journaled(connection, writes, (MARKER, marker(self.journal, taken[-1][0].end)))
                    except Exception as exc:
                        _dropped(connection)
                        connection = None
                        if failed is None:
                            log.critical(
                                "synclab: the journal could not be applied to the database; storage halted (tried "
                                "again every %g s), the journal %s keeps every acknowledged write: %s",
                                RETRY_EVERY, self.journal.path, exc,
                            )
                        failed = taken
                        self._halt(exc)
                        continue
                if failed is not None:
                    log.warning("synclab: the journal was applied again; storage goes on")
                    failed = None
                with self._cond:
                    self.failed = None
                    self.applied += len(taken)
                    self._cond.notify_all()
                if self._waiting:  # a read added after this look nudges the thread: its next turn posts
                    self._post(self._release)
                if taken and self._between is not None and connection is not None:
                    self._between(connection)
        except BaseException as exc:
            log.critical(
                "synclab: the journal's apply thread ended; storage halted, the journal %s "
                "keeps every acknowledged write for the next start: %s", self.journal.path, exc,
            )
            self._halt(exc)
        finally:
            _dropped(connection)

    def _halt(self, exc: BaseException) -> None:
        """Nothing more is acknowledged or read until the apply succeeds; the reads waiting fail."""
        with self._cond:
            self.failed = exc
            self._cond.notify_all()
        self._post(self._release)

    def _halted_wait(self) -> bool:
        """While storage is halted: wait before the next try; ``False`` once stopping."""
        with self._cond:
            if not self._stopping:
                self._cond.wait(RETRY_EVERY)
            return not self._stopping

    def _post(self, fn: Callable[[], None]) -> None:
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits
            loop.call_soon_threadsafe(fn)

    def stop(self) -> None:
        """Apply what is pending, then end the apply thread (the writer's last function)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join()


def _unnumber(counters: dict[int, int], writes: Sequence[Write]) -> None:
    """Each experiment's counter back to what it was before ``writes`` were numbered from it."""
    seen: set[int] = set()
    for write in writes:
        if write.seqs and write.experiment_id not in seen:
            seen.add(write.experiment_id)
            counters[write.experiment_id] = write.seqs[0] - 1
        write.seqs = []


def _dropped(connection: Connection | None) -> None:
    """Let the apply's connection go, never back to the pool: it is not synced per commit."""
    if connection is not None:
        with contextlib.suppress(Exception):
            connection.invalidate()
            connection.close()


def lower_priority(by: int) -> None:
    """Raise the calling thread's ``nice`` by ``by`` (at most to 19), on Linux, where a thread has its own.

    Elsewhere, or where the system refuses, nothing: the thread runs at its process's priority.
    """
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError):
        me = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, me, min(19, os.getpriority(os.PRIO_PROCESS, me) + by))
