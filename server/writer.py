"""The event writer: one per process, committing writes in batches (group commit).

A caller submits a :class:`~server.database.Write` with two callbacks. The writer takes
everything queued, commits it in one transaction on the database's writer thread, then calls
``on_commit`` for each write **in submission order**, on the event loop; only then may the
caller broadcast or acknowledge. When a commit fails, ``on_fail`` is called for every write of
the batch and for every write queued behind it, so no write computed on top of a lost one is
ever stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from .database import Database, Write
from .exceptions import NotPersisted

log = logging.getLogger("synclab.writer")
#: seconds between SQLite checkpoints (see :meth:`server.database.Database.checkpoint`)
CHECKPOINT_EVERY = 1.0
A = TypeVar("A")


@dataclass(slots=True, eq=False)
class _Pending:
    write: Write
    on_commit: Callable[[Write], None]
    on_fail: Callable[[NotPersisted], None]


class EventWriter:
    """Batches writes; ``max_batch`` bounds the events in one transaction."""

    def __init__(self, database: Database, *, max_batch: int = 2000) -> None:
        self._database = database
        self._max_batch = max_batch
        self._queue: deque[_Pending] = deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        #: counters for the monitor and the benchmark
        self.batches = 0
        self._checkpointed_at = time.monotonic()
        self.writes = 0
        self.committed = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="synclab-writer")

    async def close(self) -> None:
        """Commit what is queued, then stop."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

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
        self._queue.append(_Pending(write, on_commit, on_fail))
        self._wakeup.set()

    async def _run(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch = self._take()
            try:
                await self._database.commit([p.write for p in batch])
            except Exception as exc:  # any database failure: refuse the batch and what follows
                log.error("commit of %d writes failed: %s", len(batch), exc)
                failed = NotPersisted(f"the event could not be stored: {type(exc).__name__}")
                batch.extend(self._queue)
                self._queue.clear()
                for pending in batch:
                    _safely(pending.on_fail, failed)
                continue
            self.batches += 1
            if time.monotonic() - self._checkpointed_at >= CHECKPOINT_EVERY:
                self._checkpointed_at = time.monotonic()
                self._database.checkpoint()
            self.writes += len(batch)
            self.committed += sum(len(p.write.events) for p in batch)
            for pending in batch:
                _safely(pending.on_commit, pending.write)
            await self._database.restart_log()  # after the callbacks: the batch is out already

    def _take(self) -> list[_Pending]:
        batch: list[_Pending] = []
        size = 0
        while self._queue and (not batch or size + len(self._queue[0].write.events) <= self._max_batch):
            pending = self._queue.popleft()
            size += len(pending.write.events)
            batch.append(pending)
        return batch


def _safely(callback: Callable[[A], None], arg: A) -> None:
    try:
        callback(arg)
    except Exception:  # a failing callback must not stop the writer
        log.exception("writer callback failed")
