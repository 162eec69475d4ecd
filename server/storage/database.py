"""The async face of storage: one engine, one writer thread, a few reader threads.

Every SQL function of the package is synchronous; :class:`Database` runs reads on its reader
threads and writes on its writer thread (:mod:`.thread`), in order with the event batches,
never on the event loop. On SQLite it also keeps the write-ahead log from growing."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy import Engine
from sqlalchemy.engine import Connection

from ..exceptions import SettingsError
from .applying import APPLY_EVERY
from .batch import commit_writes
from .engine import make_engine, sqlite_file
from .frameids import catch_up
from .journal import DEFAULT_SIZE, Journal
from .journaled import JournalFirst
from .parts import in_parts, rolled_back
from .recovery import (
    LOCK_WAIT,
    as_schema_error,
    journal_of,
    lock_served,
    mend_header,
    recover,
)
from .stalls import writer_connection
from .thread import WriterThread
from .unstorable import refused_by_database, storing_apart
from .writes import Write

log = logging.getLogger("synclab.database")

T = TypeVar("T")
#: seconds between SQLite checkpoints, and at most from a commit to the next (see :meth:`Database.checkpoint_soon`)
CHECKPOINT_EVERY = 1.0
#: SQLite: frames the write-ahead log holds (32 MiB at 2 KiB pages) before the writer, once a
#: checkpoint has copied it, finishes the job so that the log starts over (see :meth:`Database.checkpoint`)
RESTART_LOG_AFTER = 16384


class Database:
    """The engine, with a single writer thread and a small pool of reader threads."""

    def __init__(
        self,
        url: str,
        *,
        readers: int = 4,
        stall_timeout: float | None = None,
        lock_timeout: float | None = None,
        synced: bool = True,
        restart_log_after: int = RESTART_LOG_AFTER,
        journal: bool = False,
        journal_size: int = DEFAULT_SIZE,
        apply_every: float = APPLY_EVERY,
        lock_wait: float = LOCK_WAIT, journal_why: str | None = None,  # why: for a refused lock's message
    ) -> None:
        self.url = url
        self.restart_log_after = restart_log_after
        #: PostgreSQL: seconds the writer's connection may sit in a transaction between two
        #: statements before the server ends its session (see :func:`writer_connection`)
        self.stall_timeout = stall_timeout
        # PostgreSQL: ``lock_timeout``, seconds any statement waits for a lock (see :func:`.engine.make_engine`)
        # ``synced=False``: commits not synced to the disk one by one (see :func:`.engine.make_engine`)
        self.engine = make_engine(url, lock_timeout=lock_timeout, synced=synced)
        self.synced = synced
        #: a SQLite file's path, and its journal's (:mod:`.journaled`) whether or not this process uses one
        self.sqlite_file = sqlite_file(url)
        self.journal_path = None if self.sqlite_file is None else journal_of(self.sqlite_file)
        #: the journal-first writer (``SYNCLAB_JOURNAL=on``), else ``None``
        self.journaled: JournalFirst | None = None
        #: SQLite file: the ``flock`` held on it, exclusive with a journal (see :func:`.recovery.lock_database`)
        self._lock: int | None = None
        if self.sqlite_file is not None:
            self._lock = lock_served(self.sqlite_file, exclusive=journal, wait=lock_wait, why=journal_why)
        if journal:
            if self.sqlite_file is None or not synced:
                self._unlock()
                raise SettingsError("SYNCLAB_JOURNAL=on is for a SQLite file at SYNCLAB_DURABILITY=power-loss")
            try:
                with as_schema_error():
                    opened = Journal.open(journal_of(self.sqlite_file), size=journal_size, mend=mend_header(self.engine))
            except BaseException:
                self._unlock()
                raise
            assert self._lock is not None
            self.journaled = JournalFirst(
                self.engine, opened, self.sqlite_file, self._lock, apply_every=apply_every, between=self._finish_checkpoint
            )
            self.writer = WriterThread(storing_apart(self.journaled.commit), _nothing)
        else:
            self.writer = WriterThread(storing_apart(self._commit, self._in_parts), self._between_batches)
        self._readers = ThreadPoolExecutor(readers, thread_name_prefix="synclab-reader")
        #: writes beside the event batches (:meth:`write_aside`), one at a time
        self._aside = ThreadPoolExecutor(1, thread_name_prefix="synclab-aside")
        self._checkpointer = ThreadPoolExecutor(1, thread_name_prefix="synclab-checkpoint")
        self.sqlite = self.engine.dialect.name == "sqlite"
        self._checkpointing: asyncio.Future[Any] | None = None
        #: a checkpoint was asked for while one ran: start another when it ends
        self._checkpoint_again = False
        #: checkpoints that ended without an error
        self.checkpoints = 0
        #: times the writer finished a checkpoint so that the log starts over (see :meth:`_between_batches`)
        self.log_restarts = 0
        self._checkpointed_at = time.monotonic()
        self._checkpoint_due: asyncio.TimerHandle | None = None
        #: set when a background checkpoint copied the whole log: the writer finishes the job
        self._log_copied = False
        #: the writer thread's own connection, kept open between batches (see :meth:`_commit`)
        self._writer_connection: Connection | None = None
        #: ``/healthz``'s last look at the database (see :meth:`unreachable`): when, and why it
        #: did not answer (``None``: it did); the look under way
        self._probed: tuple[float, str | None] = (-math.inf, None)
        self._probing: asyncio.Future[str | None] | None = None

    def checkpoint(self) -> asyncio.Future[Any] | None:
        """SQLite: copy the write-ahead log into the database on a thread of its own, once at a time.

        A passive checkpoint never blocks the writer; committed data is safe in the log either
        way. Returns the checkpoint under way (``None`` for another database); asked for while one
        runs, another starts when it ends, so that what was committed before the call is copied
        (and, the database not synced per commit, synced) by a checkpoint that began after it.

        The log starts over from its beginning only when a write finds it copied to its last
        frame, and under steady load the writer has always added a few frames while the
        checkpoint ran: the file would grow without end (300 MB in ten seconds at 2,000
        decisions/s), and every commit would extend it, which makes its ``fdatasync`` about
        twice as slow as one that overwrites. So once a checkpoint here has copied a log of
        ``restart_log_after`` frames or more, :meth:`_between_batches` has the writer copy the
        few frames added since. Not at every checkpoint: that copy syncs the log and the database
        file, and so holds the next batch back by 1 to 10 ms; at 2,000 decisions/s it came every
        second, now every five or so, and the file stays at about that size (tens of MB), every
        commit writing over what it held.
        """
        if not self.sqlite:
            return None
        if self._checkpointing is None or self._checkpointing.done():
            loop = asyncio.get_running_loop()
            self._checkpointing = loop.run_in_executor(self._checkpointer, _checkpoint, self.engine)
            self._checkpointing.add_done_callback(self._checkpointed)
        else:
            self._checkpoint_again = True
        return self._checkpointing

    def checkpoint_soon(self, every: float = CHECKPOINT_EVERY) -> None:
        """SQLite, after a commit: a checkpoint now if the last began ``every`` seconds ago, else then.

        Not more often, however many commits: each copies what the log holds back to the database.
        Not later either, also when no commit follows: a database not synced per commit
        (``synced=False``) has its log synced by the checkpoint, which so bounds what a power loss
        can take to about ``every`` seconds of commits.
        """
        if not self.sqlite or self._checkpoint_due is not None:
            return
        wait = every - (time.monotonic() - self._checkpointed_at)
        if wait > 0:
            self._checkpoint_due = asyncio.get_running_loop().call_later(wait, self._checkpoint_now)
        else:
            self._checkpoint_now()

    def _checkpoint_now(self) -> None:
        self._checkpoint_due = None
        self._checkpointed_at = time.monotonic()
        with contextlib.suppress(RuntimeError):  # closed meanwhile: the close checkpointed last
            self.checkpoint()

    def _checkpointed(self, future: asyncio.Future[Any]) -> None:
        if self._checkpoint_again and not future.cancelled():
            self._checkpoint_again = False
            with contextlib.suppress(RuntimeError):  # the executor shut down: the close checkpoints
                self.checkpoint()
        if future.cancelled():
            return
        if future.exception() is not None:
            log.warning("WAL checkpoint failed: %s", future.exception())
            return
        busy, frames, copied = future.result()
        self.checkpoints += 1
        self._log_copied = not busy and frames == copied and frames >= self.restart_log_after

    def _between_batches(self) -> None:
        """On the writer thread after each batch: once a checkpoint copied the log, finish it there."""
        if self._writer_connection is not None:
            self._finish_checkpoint(self._writer_connection)

    def _finish_checkpoint(self, connection: Connection) -> None:
        """After a batch, on the thread that stored it and over its connection: once a checkpoint copied the log, finish it.

        No other write can come in between, so this copy reaches the log's end and the next
        commit writes the log from its start again (see :meth:`checkpoint`). It is the few
        frames added since the checkpoint, and two syncs (the log's, the database file's):
        1 or 2 ms, over 10 when the disk is slow, once the log has ``restart_log_after`` frames.
        """
        if not self._log_copied:
            return
        self._log_copied = False
        try:
            _wal_checkpoint(connection, "PASSIVE")
            self.log_restarts += 1
        except Exception as exc:  # the commits are safe either way: only the log's reuse waits
            log.warning("WAL checkpoint on the writer failed: %s", exc)

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(engine, *args)`` on a reader thread (with a journal, once what was acknowledged is applied)."""
        if self.journaled is not None:
            await self.journaled.caught_up()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, fn, self.engine, *args)

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(engine, *args)`` on the writer thread, in order with the event batches.

        Raises :class:`~server.exceptions.NotPersisted`, ``fn`` never run, when it was queued
        behind a batch whose commit failed (see :mod:`.thread`).
        """
        job = functools.partial(fn, self.engine, *args)
        if self.journaled is not None:  # on what was acknowledged before, applied
            job = functools.partial(self.journaled.job, job)
        result = await self.writer.call(job)
        if not self.synced:  # what it committed reaches the disk with the next checkpoint
            self.checkpoint_soon()
        return result

    async def write_aside(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(engine, *args)`` beside the event batches, not between them, where the
        database takes a second writer; for a write that no batch depends on and that depends
        on none (a new experiment's rows), which may take seconds the decisions would wait.

        With the journal the batches go on being appended and acknowledged meanwhile (only the
        apply waits for ``fn``, and the reads with it); on PostgreSQL ``fn`` is a transaction of
        its own. On SQLite without the journal, one writer at a time: it is :meth:`write`.
        """
        journaled = self.journaled
        if journaled is None and self.sqlite:
            return await self.write(fn, *args)
        job = functools.partial(fn, self.engine, *args)
        if journaled is not None:
            job = functools.partial(journaled.aside, job)
        result = await asyncio.get_running_loop().run_in_executor(self._aside, job)
        if not self.synced:
            self.checkpoint_soon()
        return result

    async def unreachable(self, wait: float = 2.0, fresh: float = 1.0) -> str | None:
        """Why the database does not answer a ``SELECT 1`` now, ``None`` when it does (``/healthz``).

        One look at a time, on a reader thread, its answer kept ``fresh`` seconds (a load
        balancer asks often); a look that takes over ``wait`` seconds counts as no answer.
        """
        if time.monotonic() - self._probed[0] < fresh:
            return self._probed[1]
        if self._probing is None or self._probing.done():
            self._probing = asyncio.get_running_loop().run_in_executor(self._readers, self._probe)
        try:
            why = await asyncio.wait_for(asyncio.shield(self._probing), wait)
        except TimeoutError:
            why = f"no answer within {wait:g} s"
        self._probed = (time.monotonic(), why)
        return why

    def _probe(self) -> str | None:
        try:
            with self.engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
        except Exception as exc:  # whatever the driver says: the first line of it
            return str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        return None

    async def recover(self) -> int:
        """SQLite: apply what a journal holds that the database does not (a run stopped by a crash
        or a power loss), before anything else reads or writes; the writes applied. Also without
        a journal of this process's own: a server started with ``SYNCLAB_JOURNAL=off`` after one
        that ran with it applies what that one left, under the journal's lock (another process
        starting at once waits for it, then finds nothing left), and the client ids it left to add."""
        path = self.sqlite_file
        if path is None:
            return 0
        first = self.journaled

        def recovering() -> int:
            assert path is not None and self._lock is not None
            held = self._lock
            if first is not None:
                return first.job(lambda: recover(self.engine, first.journal, path, held))
            if not os.path.exists(journal_of(path)):
                catch_up(self.engine)  # (a journal's apply may have left client ids to add: :mod:`.frameids`)
                return 0
            with as_schema_error(), Journal.open(journal_of(path), wait=True, mend=mend_header(self.engine)) as journal:
                return recover(self.engine, journal, path, held)

        return await self.writer.call(recovering)

    def _commit(self, writes: Sequence[Write]) -> None:
        """:func:`commit_writes` on the writer thread (see :mod:`.thread`), over its own connection.

        A batch is a millisecond or so apart from the next: taking a connection from the pool
        and handing it back (with its reset) each time cost more than the batch's statements.
        One whose batch failed is dropped (but for a refusal of its data: :meth:`_failed`).
        """
        if self._writer_connection is None:
            self._writer_connection = writer_connection(self.engine, self.stall_timeout)
        try:
            commit_writes(self._writer_connection, writes)
        except BaseException as exc:
            self._failed(exc)
            raise

    @contextlib.contextmanager
    def _in_parts(self, writes: list[Write]) -> Iterator[Callable[[list[Write]], None]]:
        """:func:`.parts.in_parts` on the writer thread's connection (as :meth:`_commit`)."""
        if self._writer_connection is None:
            self._writer_connection = writer_connection(self.engine, self.stall_timeout)
        try:
            with in_parts(self._writer_connection, writes) as store:
                yield store
        except BaseException as exc:
            self._failed(exc)
            raise

    def _failed(self, exc: BaseException) -> None:
        """The writer's connection is dropped after a failure, but for the database refusing a write's data."""
        connection = self._writer_connection
        if connection is not None and not (refused_by_database(exc) and rolled_back(connection)):
            self._writer_connection = None
            with contextlib.suppress(Exception):
                connection.invalidate()

    def _release_writer_connection(self) -> None:
        if self._writer_connection is not None:
            with contextlib.suppress(Exception):
                if self.stall_timeout is not None and self.engine.dialect.name == "postgresql":
                    # back to the pool as the others are: a reader may idle in a transaction
                    self._writer_connection.exec_driver_sql("RESET idle_in_transaction_session_timeout")
                    self._writer_connection.exec_driver_sql("RESET application_name")
                    self._writer_connection.commit()
                self._writer_connection.close()
            self._writer_connection = None

    def close(self, timeout: float | None = None) -> int:
        """Commit everything queued, end the writer thread, and let go of the database.

        Waits for the queue at most ``timeout`` seconds (``None``: as long as it takes): past
        it, what is still queued is refused and logged (:meth:`.thread.WriterThread.stop`) once
        the commit under way has finished, which only the driver bounds (SQLite's busy_timeout,
        30 s). Returns how many writes were refused so.
        """
        if self._checkpoint_due is not None:  # the last checkpoint is the one below
            self._checkpoint_due.cancel()
            self._checkpoint_due = None
        self._aside.shutdown(wait=True)  # (a write beside the batches under way finishes first)
        last = self.journaled.stop if self.journaled is not None else self._release_writer_connection
        dropped = self.writer.stop(last, timeout=timeout)
        self._readers.shutdown(wait=True)
        self._checkpointer.shutdown(wait=True)
        if self.sqlite:
            with contextlib.suppress(Exception):
                _checkpoint(self.engine, "TRUNCATE")
        self.engine.dispose()
        if self.journaled is not None:
            self.journaled.journal.close()
        self._unlock()
        return dropped

    def _unlock(self) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None


def _nothing() -> None:
    return None


def _checkpoint(engine: Engine, mode: str = "PASSIVE") -> tuple[int, int, int]:
    with engine.connect() as conn:
        return _wal_checkpoint(conn, mode)


def _wal_checkpoint(conn: Connection, mode: str) -> tuple[int, int, int]:
    """``PRAGMA wal_checkpoint``: (1 if it could not finish, frames in the log, frames copied)."""
    cursor = conn.connection.cursor()  # the driver's: SQLAlchemy's would begin a transaction
    try:
        busy, frames, copied = cursor.execute(f"PRAGMA wal_checkpoint({mode})").fetchall()[0]
    finally:
        cursor.close()
    return int(busy), int(frames), int(copied)

