"""The event writer: one per process, committing writes in batches (group commit).

A caller submits a :class:`~.writes.Write` with two callbacks. The database's writer
thread (:mod:`.thread`) takes everything queued when it is free and commits it in one
transaction; then ``on_commit`` is called for each write **in submission order**, on the event
loop; only then may the caller broadcast or acknowledge. When a commit fails, ``on_fail`` is
called for every write of the batch and for every write queued behind it, so no write computed
on top of a lost one is ever stored; a job of :meth:`.database.Database.write` queued behind it
is refused too (its awaiter gets :class:`NotPersisted`, the function is not run), since it may
rest on those writes. What is queued after the failure was handled runs as usual.

A batch that failed on writes the database cannot take (a game's value that is no JSON, a client
id the key of ``client_ids`` refuses) is stored without them (:mod:`.unstorable`): only they fail
(:class:`Unstorable`), with the later writes of their groups in the batch and in the queue,
computed on top of them (:class:`NotPersisted`); every other write is committed and called back
as usual, in order, and the jobs run. Should the database fail meanwhile, or the parts take too
many tries or too long (:data:`.unstorable.MOST_TRIES`, ``MOST_SECONDS``), what was left
unstored fails as a failed batch does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TypeVar

from ..exceptions import NotAuthority, NotPersisted, Unstorable
from .database import CHECKPOINT_EVERY, Database
from .thread import COMMIT_BUCKET_NAMES
from .unstorable import REFUSED_BY_DATABASE, PartlyStored
from .writes import Write

log = logging.getLogger("synclab.writer")
A = TypeVar("A")


@dataclass(slots=True, eq=False)
class _Pending:
    write: Write
    on_commit: Callable[[Write], None]
    on_fail: Callable[[NotPersisted], None]


class EventWriter:
    """Batches writes; ``max_batch`` bounds the events in one transaction.

    On SQLite a checkpoint of the write-ahead log starts at most every ``checkpoint_every`` seconds,
    and within that of every commit (:meth:`.database.Database.checkpoint_soon`).
    """

    def __init__(
        self,
        database: Database,
        *,
        max_batch: int = 2000,
        commit_delay: float = 0.0,
        checkpoint_every: float = CHECKPOINT_EVERY,
        delivering: Callable[[], AbstractContextManager[object]] = contextlib.nullcontext,
    ) -> None:
        self._database = database
        #: around the callbacks of a committed batch: what they send goes out together at its end
        #: (``server.frames.corked``: one write per socket)
        self._delivering = delivering
        self._max_batch = max_batch
        #: the group commit's wait while writes stream in (seconds; see ``WriterThread._gather``)
        self._commit_delay = commit_delay
        self._checkpoint_every = checkpoint_every
        self._closing = False
        #: counters for the monitor and the benchmark
        self.batches = 0
        self.writes = 0
        self.committed = 0
        #: writes refused by the fencing check (their authority had lost its group)
        self.fenced = 0
        #: parts of failed batches stored again without the writes the database refused (:mod:`.unstorable`)
        self.parts_tried = 0

    @property
    def log_restarts(self) -> int:
        """SQLite: how often the writer finished a checkpoint so that the log starts over (0 on PostgreSQL)."""
        return self._database.log_restarts

    def commit_ms(self) -> dict[str, int]:
        """Committed batches by the commit's wall time: ``{"1": n, "2": n, …, "1000": n, "more": n}``.

        Each count is of the commits that took at most that many milliseconds and more than the
        bound before (statements and ``fsync``; a commit of tens of milliseconds that used little
        CPU waited for the disk).
        """
        return dict(zip(COMMIT_BUCKET_NAMES, self._database.writer.commit_ms, strict=True))

    def start(self) -> None:
        self._database.writer.batches_to(asyncio.get_running_loop(), self._done, self._max_batch, self._commit_delay)

    async def close(self) -> None:
        """Stop taking writes, and wait until every write queued is settled (committed or failed).

        Unbounded by itself: the server's shutdown bounds it (:meth:`server.runtime.Runtime.close`),
        then :meth:`.database.Database.close` refuses what is left.
        """
        self._closing = True
        # the thread runs in order: once this has run, every write queued before is settled;
        # refused behind a failed batch, it comes after those writes were failed: settled all the same
        with contextlib.suppress(NotPersisted):
            await self._database.writer.call(_nothing)

    def submit(
        self,
        write: Write,
        on_commit: Callable[[Write], None],
        on_fail: Callable[[NotPersisted], None],
    ) -> None:
        """Queue ``write``; exactly one of the callbacks will run, on the event loop."""
        if self._closing:
            on_fail(NotPersisted("the server is shutting down"))
            return
        self._database.writer.submit(_Pending(write, on_commit, on_fail))

    def _done(self, batch: list[_Pending], exc: BaseException | None) -> None:
        """A batch's outcome, on the loop, in the order the batches were committed."""
        if exc is not None:
            self._not_committed(batch, exc)
            return
        self.batches += 1
        self._database.checkpoint_soon(self._checkpoint_every)
        self.writes += len(batch)
        # once a batch (a few thousand instructions of the loop's each, bench.instructions --part path):
        # the callbacks called here, not through _safely; the events counted in the same pass
        events = 0
        with self._delivering():
            for pending in batch:
                write = pending.write
                if write.fenced:  # another authority took its group over: nothing of it stored
                    self.fenced += 1
                    _safely(pending.on_fail, NotAuthority(f"group {_group(write)} is now served by another worker"))
                    continue
                events += len(write.events)
                try:
                    pending.on_commit(write)
                except Exception:  # a failing callback must not stop the writer
                    log.exception("writer callback failed")
        self.committed += events

    def _not_committed(self, batch: list[_Pending], exc: BaseException) -> None:
        """A batch refused untried, stored in part, or failed (see :meth:`_done`)."""
        if isinstance(exc, NotPersisted):  # refused untried by the stopping thread (WriterThread.stop)
            for pending in batch:
                _safely(pending.on_fail, exc)
            return
        if isinstance(exc, PartlyStored):  # stored but for writes that cannot be, and their groups' later ones
            self._partly_stored(batch, exc)
            return
        # any database failure: refuse the batch and what was queued behind it
        log.error("commit of %d writes failed: %s", len(batch), exc)
        failed = NotPersisted(f"the event could not be stored: {type(exc).__name__}")
        batch.extend(self._database.writer.withdraw())
        self._database.writer.resume()
        for pending in batch:
            _safely(pending.on_fail, failed)

    def _partly_stored(self, batch: list[_Pending], exc: PartlyStored) -> None:
        """The batch was stored without ``exc.refused`` (by place in it): those fail, and what their
        groups have queued since, which rests on them, is withdrawn and fails too; the others are
        committed, in order, and the rest of the queue (other groups' writes, jobs) goes on.

        When the database failed while the batch was stored in parts (``exc.failure``), the writes
        it left unsettled fail as a failed batch's do, with everything queued behind them."""
        refused, unsettled = exc.refused, set(exc.unsettled)
        self.parts_tried += exc.tries
        if exc.failure is not None:
            log.error("commit of %d writes failed (the batch's %d others stored or refused before): %s",
                      len(unsettled), len(batch) - len(unsettled), exc.failure)
            behind = self._database.writer.withdraw()
        else:
            spoilt = {g for i in refused if (g := _group(batch[i].write)) is not None}
            behind = self._database.writer.withdraw(lambda p: _group(p.write) in spoilt) if spoilt else []
        self._database.writer.resume()
        stored = [p for i, p in enumerate(batch) if i not in refused and i not in unsettled]
        if stored:
            self._done(stored, None)  # counted and called back as a committed batch, ...
        for i, why in refused.items():  # ... then the refused, in order: their groups roll back
            _safely(batch[i].on_fail, _refusal(batch[i].write, why))
        if exc.failure is not None:
            failed = NotPersisted(f"the event could not be stored: {type(exc.failure).__name__}")
            for pending in [p for i, p in enumerate(batch) if i in unsettled] + behind:
                _safely(pending.on_fail, failed)
            return
        for pending in behind:
            _safely(pending.on_fail, _refusal(pending.write, None))


def _group(write: Write) -> int | None:
    return None if write.group is None else write.group.group_id


def _refusal(write: Write, why: str | None) -> NotPersisted:
    """What a write left out of its batch gets: :class:`Unstorable` for one that cannot be stored
    (not to be sent again), :class:`NotPersisted` for one computed on top of such a write (its
    group is rolled back: sent again, it is computed anew)."""
    if why is None:
        return NotPersisted(f"the event could not be stored: group {_group(write)} made a write before it that cannot be")
    if why.startswith(REFUSED_BY_DATABASE):  # (a client's frame id, say: not the game's alone)
        return Unstorable(f"the event cannot be stored: {why}", why)
    return Unstorable(f"the game made a value that cannot be stored: {why}", why)


def _nothing() -> None:
    return None


def _safely(callback: Callable[[A], None], arg: A) -> None:
    try:
        callback(arg)
    except Exception:  # a failing callback must not stop the writer
        log.exception("writer callback failed")
