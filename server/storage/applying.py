"""The apply thread of a journal (:mod:`.journaled`): what the journal acknowledged, stored in
SQLite in bulk a few milliseconds later, committed once a second or at once when asked for.

The writer thread appends each batch to the journal, synced, and hands it over here
(:attr:`ApplyThread._pending`). Every :data:`APPLY_EVERY` seconds this thread stores what came,
with the journal's position it reached (the ``meta`` row :data:`.recovery.MARKER`), in a
transaction that stays open over its applies: it is committed :data:`COMMIT_EVERY` seconds after
it began, or at once when the loop's reads wait for it (:meth:`ApplyThread.caught_up`), a job or
a write beside the batches needs the database to itself (:meth:`ApplyThread._alone`), or the
thread stops. The groups' rows are written once, before the commit, each with its group's last
state (:mod:`.groupstates`). Every :data:`.frameids.ADD_EVERY` seconds a commit adds the client ids of the
events applied since to ``client_ids``, in one sorted statement (:mod:`.frameids`). Its commits
are not synced one by one (``synchronous=NORMAL``): the journal keeps every acknowledged write
until the database holds it synced. Only a commit counts a record as applied
(:attr:`ApplyThread.applied`): a read never sees less than what was acknowledged before it.

A failed apply or commit loses the open transaction, and what it held is applied again: while
it fails storage is halted (:class:`ApplyFailed`), tried again every :data:`RETRY_EVERY` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.engine import Connection

from .batch import apply_numbered
from .frameids import ADD_EVERY, add_deferred
from .groupstates import HeldStates
from .journal import Journal, Record
from .recovery import MARKER, decode, marker
from .writes import Write

log = logging.getLogger("synclab.journal")
#: seconds the apply thread gathers acknowledged batches before it stores them together
APPLY_EVERY = 0.01
#: seconds the apply's transaction stays open over its applies before it is committed: a commit
#: writes to SQLite's log every page the applies touched (the events' last pages, the indexes'
#: leaves, the groups' rows), and once a second a page that a hundred applies touched is written
#: once, which the disk then syncs at the checkpoint (bench/README.md, "The apply's commit once a
#: second"); a read, a job or a write beside the batches has it committed at once
COMMIT_EVERY = 1.0
#: seconds between the idle apply thread's looks at whether the main thread has ended
WATCH_EVERY = 0.5
#: seconds between tries of an apply that failed (storage halted meanwhile)
RETRY_EVERY = 1.0


class ApplyFailed(RuntimeError):
    """The apply thread could not store what the journal holds: nothing more is taken or read
    until it can (a decision is answered ``not_persisted`` as after any failed commit, a REST
    call 503: :func:`server.api.storage_halted`)."""


class ApplyThread:
    """The apply thread of one journal, the queue the writer thread fills, and the waits of the
    reads and jobs for it (see the module's docstring)."""

    def __init__(
        self,
        engine: Engine,
        journal: Journal,
        *,
        apply_every: float = APPLY_EVERY,
        between: Callable[[Connection], None] | None = None,
    ) -> None:
        self._engine = engine
        self.journal = journal
        self._apply_every = apply_every
        self._between = between
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
        # what follows is used by whoever holds ``_writing``: the apply thread, a job or a write aside
        #: the apply's connection, its transaction open over several applies (see :meth:`_apply`)
        self._connection: Connection | None = None
        #: the records applied in that transaction, not committed. Not their writes: a record's
        #: payload holds them, read again only when they go again (a failure).
        #: A second of writes kept as objects (some 15 a decision the collector tracks) had the
        #: young collection run three times a second at 2,000 decisions/s, and move them all to
        #: the older generation, whose collections then took up to 30 ms: the decisions' tail
        #: (bench/README.md, "The open transaction's writes and the collector")
        self._open: list[Record] = []
        #: the groups' states that transaction's applies stored, written once before its commit
        #: (:mod:`.groupstates`)
        self._states = HeldStates()
        #: when that transaction is to be committed (``time.monotonic``), while one is open
        self._commit_due: float | None = None
        #: when the next commit is to add the client ids of the events applied (:mod:`.frameids`)
        self._ids_due = time.monotonic() + ADD_EVERY
        #: the apply thread's turn was asked for (a read, a drain): it commits what it stores at once
        self._asked = False
        self._loop: asyncio.AbstractEventLoop | None = None
        #: the loop's reads waiting for the apply: (records to be applied, future)
        self._waiting: list[tuple[int, asyncio.Future[None]]] = []
        self._thread = threading.Thread(target=self._run, name="synclab-apply", daemon=False)
        self._thread.start()

    def drain(self) -> None:
        """Until everything appended is applied (the apply started at once)."""
        with self._cond:
            target = self.appended
            if self.applied < target:  # a nudge left over would have the next apply committed at once
                self._nudged = True
                self._cond.notify_all()
            while self.applied < target and self.failed is None:
                self._cond.wait(WATCH_EVERY)
        self._check()

    @contextlib.contextmanager
    def _alone(self) -> Iterator[None]:
        """``_writing`` held, the apply's transaction committed: another connection may write
        (SQLite takes one writer at a time, and would keep it waiting for that transaction)."""
        with self._writing:
            try:
                self._commit_open()
            except Exception:  # the transaction is lost: what it held goes again, first
                lost = self._drop_open()
                with self._cond:
                    self._pending[:0] = lost
                    self._cond.notify_all()
                raise
            yield

    def _check(self) -> None:
        if self.failed is not None:
            raise self._halted()

    def _halted(self) -> ApplyFailed:
        return ApplyFailed(f"storage halted: the journal could not be applied ({self.failed})")

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
                future.set_exception(self._halted())
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
                due = self._commit_due
                wait = WATCH_EVERY if due is None else min(WATCH_EVERY, due - time.monotonic())
                if wait <= 0:
                    break  # nothing new, and the open transaction is due
                if not self._cond.wait(wait) and not threading.main_thread().is_alive():
                    self._stopping = True
            if self._pending and not self._nudged and not self._stopping:
                self._cond.wait(self._apply_every)  # gather; a nudge or a stop cuts it short
            self._asked = self._nudged
            taken, self._pending, self._nudged = self._pending, [], False
            if not taken and self._stopping:
                return None
            return taken

    def _run(self) -> None:
        # at the process's own priority: at a lower one (``nice`` 10, until 2026-12-06) the event
        # loop, forced to hand this thread the interpreter, waited until the kernel ran it, and
        # on a machine that other processes kept busy that took hundreds of milliseconds, every
        # decision waiting (bench/README.md, "The apply thread back at the process's priority")
        #: records whose apply failed: tried again every RETRY_EVERY seconds while storage is halted
        failed: list[tuple[Record, list[Write]]] | None = None
        try:
            while True:
                if failed is None:
                    taken = self._take()
                    if taken is None:
                        with self._writing:
                            self._commit_open(last=True)  # the end: what is open is stored first
                        return
                elif self._halted_wait():
                    taken = failed
                else:
                    return  # stopping: the journal keeps them for the next start
                at_once = failed is not None or self._asked or self._stopping or bool(self._waiting)
                try:
                    with self._writing:
                        try:
                            self._apply(taken, at_once)
                        except Exception:
                            taken = self._drop_open()
                            raise
                except Exception as exc:
                    if failed is None:
                        log.critical(
                            "synclab: the journal could not be applied to the database; storage halted (tried "
                            "again every %g s), the journal %s keeps every acknowledged write: %s",
                            RETRY_EVERY, self.journal.path, exc,
                        )
                    failed = taken
                    self._halt(exc)
                    continue
                taken = []  # its writes let go while the thread waits (see ``_open``)
                if failed is not None:
                    log.warning("synclab: the journal was applied again; storage goes on")
                    failed = None
                if self._waiting:  # a read added after this look nudges the thread: its next turn posts
                    self._post(self._release)
        except BaseException as exc:
            log.critical(
                "synclab: the journal's apply thread ended; storage halted, the journal %s "
                "keeps every acknowledged write for the next start: %s", self.journal.path, exc,
            )
            self._halt(exc)
        finally:
            _dropped(self._connection)

    def _apply(self, taken: list[tuple[Record, list[Write]]], at_once: bool) -> None:
        """With ``_writing`` held: store ``taken`` in the open transaction (one is begun), and
        commit it when due, or ``at_once``."""
        if taken:
            if not self._open:
                self._commit_due = time.monotonic() + COMMIT_EVERY
            # in the transaction from here, before anything can fail: a failure loses them with it,
            # and they go again with the rest (``_drop_open``)
            self._open += [record for record, _ in taken]
            connection = self._connection
            if connection is None:
                connection = self._connection = self._engine.connect()
                # this connection's commits are not synced one by one: the journal is
                connection.exec_driver_sql("PRAGMA synchronous=NORMAL")
                connection.commit()
            writes = [w for _, ws in taken for w in ws]
            apply_numbered(
                connection, writes, (MARKER, marker(self.journal, taken[-1][0].end)), commit=False, held=self._states
            )
        due = self._commit_due
        if self._open and (at_once or due is None or time.monotonic() >= due):
            self._commit_open()

    def _commit_open(self, *, last: bool = False) -> None:
        """With ``_writing`` held: commit what the applies stored since the last commit, with the
        groups' states they held (and the client ids when due, or ``last``: the thread's end); the
        reads waiting for it go on."""
        connection = self._connection
        if connection is None or not (self._open or last):
            return
        now = time.monotonic()
        ids = now >= self._ids_due or last  # the client ids the applies stored since the last time
        commit_applied(connection.connection.dbapi_connection, self._engine, self._states, ids=ids)
        if ids:
            self._ids_due = now + ADD_EVERY
        done = len(self._open)
        self._open, self._commit_due = [], None
        with self._cond:
            self.failed = None
            self.applied += done
            self._cond.notify_all()
        if self._waiting:
            self._post(self._release)
        if self._between is not None:
            self._between(connection)

    def _drop_open(self) -> list[tuple[Record, list[Write]]]:
        """With ``_writing`` held, after a failure: the connection let go, its transaction with it;
        what that held, to be applied again."""
        lost = [(record, decode(record.payload)) for record in self._open]
        self._open, self._commit_due = [], None
        self._states.clear()
        _dropped(self._connection)
        self._connection = None
        return lost

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


def commit_applied(raw: Any, engine: Engine, states: HeldStates, *, ids: bool) -> None:
    """The apply's commit on the driver's connection ``raw`` (of ``engine``): the groups' states
    its applies held written first, and with ``ids`` the client ids they stored added; what
    :meth:`ApplyThread._commit_open` and ``python -m bench.instructions --part apply`` do."""
    if ids or states.latest:
        cursor = raw.cursor()
        try:
            states.store(cursor, engine)
            if ids:
                add_deferred(cursor)
        finally:
            cursor.close()
    if raw.in_transaction:  # else a batch that began or ended a period committed it already
        raw.commit()


def _dropped(connection: Connection | None) -> None:
    """Let the apply's connection go, never back to the pool: it is not synced per commit."""
    if connection is not None:
        with contextlib.suppress(Exception):
            connection.invalidate()
            connection.close()
