"""Journal-first storage on SQLite (``SYNCLAB_JOURNAL=on``): a batch is acknowledged once it is
in a journal synced to the disk, and applied to the database a few milliseconds later, in bulk,
on a thread of its own.

Storing first costs the direct writer a SQLite commit per batch, synced (``synchronous=FULL``):
its statements, a page of every table and index they touch, and the log's ``fdatasync``, a
millisecond or more while the batch waits (bench/README.md). Here the writer thread numbers the
batch's events from counters it keeps, appends the batch to the journal (:mod:`.journal`: one
write and one ``fdatasync`` of a few hundred bytes a decision) and acknowledges it. The apply
thread (:mod:`.applying`) stores what came in the last :data:`.applying.APPLY_EVERY` seconds,
with the journal's position it reached, in a transaction it commits once a second, or at once
when something reads or writes the database, not synced by itself. An acknowledged decision
survives a power loss as before: it is in the journal until the database holds it synced.

What keeps the two in step:

- **One process per database.** The counters are the database's own only while nothing else
  writes to it: the journal's server holds an exclusive lock on the database file
  (:func:`.recovery.lock_database`), which the direct writer's processes take shared.
- **Reads see what was acknowledged.** :meth:`JournalFirst.caught_up` waits (the apply started
  at once) until everything acknowledged before it is applied and committed; :class:`.database.Database`
  does so before every read and every job of its writer thread, which run on the database.
- **Recovery.** At every start, and before ``export``, ``verify`` and ``db upgrade`` read a
  database no server holds, what the journal holds past the marker is applied
  (:mod:`.recovery`), each record in the order it was acknowledged, then synced.
- **Reuse.** The journal starts a new pass (:meth:`.journal.Journal.restart`) only once all of
  it is applied and the database's files are synced (:func:`.recovery.sync_database`).
- **A failed apply halts.** Nothing more is acknowledged or read (a decision is answered
  ``not_persisted``, a REST call 503) while the apply is tried again every
  :data:`.applying.RETRY_EVERY` seconds; once it succeeds (a full disk with room again, a lock let go) storage goes on. The
  journal keeps what was acknowledged meanwhile, applied at the next start if the server stops
  first.

PostgreSQL keeps the direct writer: its commits are numbered by the database for every worker.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from sqlalchemy import Engine, select
from sqlalchemy.engine import Connection

from .applying import APPLY_EVERY, ApplyThread
from .journal import Journal
from .recovery import encode, sync_database
from .tables import experiments
from .unstorable import storable
from .writes import Write

T = TypeVar("T")


class JournalFirst(ApplyThread):
    """The writer's commit of one journal, beside its apply thread (see the module's docstring)."""

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
        self._path = path
        #: a descriptor of the database file this process keeps open (see :func:`.recovery.sync_database`)
        self._held = held
        #: each experiment's last ``seq`` handed out; only the writer thread uses it
        self._counters: dict[int, int] = {}
        super().__init__(engine, journal, apply_every=apply_every, between=between)  # the thread starts

    # ------------------------------------------------------------------ the writer thread's side

    def commit(self, writes: list[Write]) -> None:
        """Number ``writes``, append them to the journal synced, and queue them for the apply.

        Returns once they are on the disk: the writer acknowledges them then. Raises when the
        apply has failed, when a write is fenced (a cluster's: never here), when a write cannot
        be stored (:mod:`.unstorable`; the counters are put back, the batch goes again without
        it), or the journal could not take them: a full journal starts over first, and when it
        cannot (the apply failing) the batch is refused before the journal holds it, never after.
        """
        if self.failed is not None:
            self._check()
        for write in writes:
            if write.epoch is not None:
                raise RuntimeError("a fenced write needs the direct writer (a cluster runs on PostgreSQL)")
        if self.journal.offset >= self.journal.size:
            self._restart()
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

    def job(self, fn: Callable[[], T]) -> T:
        """Run ``fn()`` (it writes or reads the database) once everything acknowledged is applied."""
        self.drain()
        with self._alone():
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
        with self._alone():
            return fn()

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
        with self._alone():
            sync_database(self._path, self._held)
            self.journal.restart()


def _unnumber(counters: dict[int, int], writes: Sequence[Write]) -> None:
    """Each experiment's counter back to what it was before ``writes`` were numbered from it."""
    seen: set[int] = set()
    for write in writes:
        if write.seqs and write.experiment_id not in seen:
            seen.add(write.experiment_id)
            counters[write.experiment_id] = write.seqs[0] - 1
        write.seqs = []
