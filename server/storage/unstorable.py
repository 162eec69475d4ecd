"""Writes the database cannot take, refused alone: a batch that failed on one of them is stored
without it (and without what its group computed on top of it).

A game's value that is no JSON (a ``set`` in its vars, an object or bytes in a payload, a dict
with keys that are not strings, an integer past 64 bits) fails the encoding of the whole batch,
with the journal and without; a channel name past the ``events.channel`` column fails its commit
on PostgreSQL (the core refuses one first, :meth:`groups.DecisionGroup.send`; this is the last guard). Nothing is looked for while batches go through: only once a commit
has failed is each write encoded alone (:func:`refusals`), and the batch committed again without
the ones that cannot be, and without the later writes of their groups, which rest on them
(:func:`storing_apart`). :class:`PartlyStored` tells the writer which writes were left out
(:meth:`.writer.EventWriter._done`), which then also withdraws what those groups have queued.

The database may refuse one write's data for a reason of its own, which no look at the write
alone finds: a client id its participant stored before (the key of ``client_ids``), on PostgreSQL an
integer past a column's range or a text past its length (a NUL character, which its text
cannot hold, is refused where it comes in: ``server.wire``, ``groups.messages``). Such a
failure is the driver's data error (:func:`refused_by_database`); the batch is then stored in
parts, in its order (:class:`_Apart`): the parts that go through are stored, a part refused is
halved (tried write by write once small), and a write refused alone is left out with what the
database said. The direct writer stores the parts as savepoints of a transaction on its
connection (:mod:`.parts`), committed every :data:`MOST_SAVEPOINTS` parts or :data:`MOST_HELD`
seconds, and a batch's parts are at most :data:`MOST_TRIES` and :data:`MOST_SECONDS`: past them
the rest of the batch fails as a failed batch does (:class:`GaveUp`), the writer stalled
meanwhile for every group. A failure of the database itself (the connection lost, a lock not given in
time, a full disk) is no such error: it fails the batch as before, and the writes it meets while
a batch is stored in parts.
"""

from __future__ import annotations

import contextlib
import math
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any

import orjson
import psycopg
from sqlalchemy.exc import StatementError

from groups.messages import channel_problem

from .writes import Write

#: the times a database's ``datetime`` holds (years 1 to 9999), a day inside either end for any zone
_EARLIEST = datetime(1, 1, 2, tzinfo=UTC).timestamp()
_LATEST = datetime(9999, 12, 30, tzinfo=UTC).timestamp()
#: the integers an integer column holds (64 bits; SQLite's driver refuses any other)
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1
#: what a driver raises for data of the statement's it refuses (a constraint, a value it cannot
#: take); its failures of the database itself are ``OperationalError`` and others. Python's
#: ``sqlite3`` raises ``OverflowError`` for an integer past 64 bits.
_DATA_ERRORS = (psycopg.DataError, psycopg.IntegrityError, sqlite3.DataError, sqlite3.IntegrityError, OverflowError)
#: how a write the database refused alone is described (:class:`_Apart`)
REFUSED_BY_DATABASE = "the database refused it: "


class PartlyStored(Exception):
    """A batch was stored without some of its writes: ``refused`` maps each one's place in the batch
    to why it cannot be stored, or to ``None`` when it came after one of its group's that cannot.

    ``failure``: the database failed (not on a write's data) while the batch was stored in parts,
    or the parts took :data:`MOST_TRIES` (:class:`GaveUp`); ``unsettled`` are the places of the
    writes it left neither stored nor refused. They fail as a failed batch's do, and so does what
    is queued behind them. ``tries``: the parts tried (the first commit of the batch not counted)."""

    def __init__(
        self,
        refused: dict[int, str | None],
        *,
        failure: BaseException | None = None,
        unsettled: Sequence[int] = (),
        tries: int = 0,
    ) -> None:
        super().__init__(f"{len(refused)} writes of the batch refused, the others stored"
                         if failure is None else f"{len(refused)} writes of the batch refused, then: {failure}")
        self.refused = dict(sorted(refused.items()))  # in the batch's order: the writer fails them so
        self.failure = failure
        self.unsettled = list(unsettled)
        self.tries = tries


class GaveUp(RuntimeError):
    """The parts of a batch stored apart took :data:`MOST_TRIES`: the rest of it is not tried."""


#: a failed batch's parts tried at most (each a savepoint, or a commit of its own with the journal);
#: past them the rest of the batch fails as a failed batch does (:class:`GaveUp`). A batch of 200
#: writes of which 50 are refused takes about 230; one write refused among 2,000, about 30
MOST_TRIES = 256
#: ... and for at most this many seconds, the writer stalled meanwhile for every group: on a slow
#: database the rest fails the same way (a batch of 200 with 50 refused takes 0.3 s, up to 3 on a
#: machine loaded ten times over; the writes that fail so are sent again, and stored)
MOST_SECONDS = 5.0
#: a part of at most this many writes refused together is tried write by write, not halved
ONE_BY_ONE = 16
#: the parts' transaction is committed, and the next part begins another, once this many parts
#: are stored in it: on PostgreSQL each is a subtransaction the session keeps until the commit,
#: and past 64 in one (its cache) every snapshot taken on the server meanwhile is slower ...
MOST_SAVEPOINTS = 32
#: ... or once it has lasted this many seconds: it holds the experiments' counters locked from
#: its first part stored, and another worker's batch of the same experiment waits for its commit
MOST_HELD = 0.05

#: the parts of a batch: given the batch, a context in which a function stores one part (or raises
#: with nothing of it stored), and which keeps what the parts stored once it ends without raising
Parts = Callable[[list[Write]], AbstractContextManager[Callable[[list[Write]], None]]]


def storing_apart(commit: Callable[[list[Write]], None], parts: Parts | None = None) -> Callable[[list[Write]], None]:
    """``commit``, which on a failure stores the batch without the writes that cannot be stored
    and then raises :class:`PartlyStored`: those found by a look at each write (:func:`refusals`),
    else, when the database refused the batch's data (:func:`refused_by_database`), those it
    refuses alone (:class:`_Apart`). A failure of another kind, or one that comes before anything
    is settled, is raised as it came; nothing runs until a commit has failed.

    ``parts``: how the parts are stored (the direct writer's: savepoints in one transaction,
    :func:`.parts.in_parts`); without it, each part is ``commit``-ted on its own (the journal's)."""
    store_parts = parts if parts is not None else _each_its_own(commit)

    def committing(writes: list[Write]) -> None:
        try:
            commit(writes)
            return
        except Exception as exc:
            refused = refusals(writes)
            if not refused and not refused_by_database(exc):
                raise
            first = exc
        apart = _Apart(store_parts, writes, refused)
        apart.store([i for i in range(len(writes)) if i not in refused], None if refused else first)
        failure = apart.failure
        if failure is not None:  # the database failed meanwhile, not on a write's data, or gave up
            if not apart.stored and not apart.refused:
                raise failure
            settled = apart.stored | apart.refused.keys()
            unsettled = [i for i in range(len(writes)) if i not in settled]
            raise PartlyStored(apart.refused, failure=failure, unsettled=unsettled, tries=apart.tries) from failure
        if apart.refused:
            raise PartlyStored(apart.refused, tries=apart.tries) from first

    return committing


def _each_its_own(commit: Callable[[list[Write]], None]) -> Parts:
    """Parts each committed on its own, by ``commit``."""

    @contextlib.contextmanager
    def parts(_writes: list[Write]) -> Iterator[Callable[[list[Write]], None]]:
        yield commit

    return parts


def refused_by_database(exc: BaseException) -> bool:
    """Whether ``exc`` is the database refusing a statement's data (the driver's data or
    integrity error, maybe wrapped by SQLAlchemy), not a failure of the database itself."""
    cause = exc.orig if isinstance(exc, StatementError) else exc
    return isinstance(cause, _DATA_ERRORS)


class _Apart:
    """A failed batch stored in parts, in its order: one the database takes is stored, one it
    refuses is halved, or tried write by write once it has :data:`ONE_BY_ONE` writes or fewer,
    and a write it refuses alone is left out (``refused``, with what it said), with every later
    write of its group.

    The parts are stored in the batch's order, so ``seq`` follows it. It takes about two tries
    and two more a level of halving for each write refused (a batch of 2,000 writes has 7 levels
    before parts of 16), and each write of a part of 16 or fewer refused together; never more
    than :data:`MOST_TRIES`, nor past :data:`MOST_SECONDS`. A failure of another kind ends it
    (``failure``). The parts go in transactions of ``parts``, each committed once it has stored
    :data:`MOST_SAVEPOINTS` parts or lasted :data:`MOST_HELD` seconds, and the next part begins
    another (its groups fenced anew, :func:`.parts.in_parts`); should a commit fail, what its
    parts stored is neither stored nor refused (``failure``)."""

    def __init__(self, parts: Parts, writes: Sequence[Write], refused: dict[int, str | None]) -> None:
        self._parts = parts
        self._writes = writes
        self.refused = dict(refused)
        #: the writes stored, committed
        self.stored: set[int] = set()
        #: the writes stored in the transaction open, with how many parts, since when
        self._pending: set[int] = set()
        self._open: AbstractContextManager[Callable[[list[Write]], None]] | None = None
        self._store: Callable[[list[Write]], None] = _nothing
        self._in_open, self._opened = 0, 0.0
        self._began = time.monotonic()
        #: the parts tried
        self.tries = 0
        #: what ended it before its end: a failure of the database, not of a write's data, or :class:`GaveUp`
        self.failure: Exception | None = None
        #: each group refused a write, and the first place it was refused at: its writes after it rest on it
        self._spoilt: dict[int, int] = {}
        for i in sorted(refused):
            if (group := _group(writes[i])) is not None:
                self._spoilt.setdefault(group, i)

    def store(self, part: list[int], failed: BaseException | None) -> None:
        """Store the writes at the places ``part``, in order (``failed``: how they failed together,
        known already), and commit what is stored (rolled back should this be interrupted)."""
        try:
            self._part(part, failed)
        except Exception as exc:
            self.failure = exc
        except BaseException as exc:
            opened, self._open = self._open, None
            if opened is not None:
                opened.__exit__(type(exc), exc, exc.__traceback__)
            raise
        try:
            self._commit()
        except Exception as exc:
            self.failure = self.failure or exc

    def _commit(self) -> None:
        """Commit the transaction open, if one is: what its parts stored is stored, or (it raises) not."""
        opened, pending = self._open, self._pending
        self._open, self._pending = None, set()
        if opened is not None:
            opened.__exit__(None, None, None)
            self.stored |= pending

    def _ready(self) -> None:
        """Before a part: give up past the bounds; commit the transaction open once it is due, and
        begin one if none is, for the writes not settled (:data:`MOST_SAVEPOINTS`, :data:`MOST_HELD`)."""
        took = time.monotonic() - self._began
        if self.tries >= MOST_TRIES or took >= MOST_SECONDS:
            refused = sum(1 for why in self.refused.values() if why is not None)
            raise GaveUp(f"the batch stored in parts took {self.tries} tries in {took:.1f} s ({refused} of its "
                         f"writes refused alone so far); the rest of it is not tried")
        if self._open is not None and (self._in_open >= MOST_SAVEPOINTS or time.monotonic() - self._opened >= MOST_HELD):
            self._commit()
        if self._open is None:
            settled = self.stored | self.refused.keys()
            opened = self._parts([w for i, w in enumerate(self._writes) if i not in settled])
            self._store = opened.__enter__()  # (raises, nothing begun, when its transaction cannot)
            self._open, self._in_open, self._opened = opened, 0, time.monotonic()

    def _part(self, part: list[int], failed: BaseException | None = None) -> None:
        kept = []
        for i in part:
            if self._after_refused(i):
                self.refused[i] = None
            else:
                kept.append(i)
        if not kept:
            return
        if failed is None or len(kept) < len(part):
            self._ready()
            try:
                self._try(kept)
            except Exception as exc:
                if not refused_by_database(exc):
                    raise
                failed = exc
            else:
                self._pending.update(kept)
                self._in_open += 1
                return
        if len(kept) == 1:
            self.refused[kept[0]] = REFUSED_BY_DATABASE + database_said(failed)
            group = _group(self._writes[kept[0]])
            if group is not None:
                self._spoilt.setdefault(group, kept[0])
            return
        if len(kept) <= ONE_BY_ONE:  # (halving a small part refused costs more tries than it saves)
            for i in kept:
                self._part([i])
            return
        half = len(kept) // 2
        self._part(kept[:half])
        self._part(kept[half:])

    def _try(self, part: list[int]) -> None:
        self.tries += 1
        self._store([self._writes[i] for i in part])

    def _after_refused(self, i: int) -> bool:
        """Whether the write at ``i`` comes after one of its group's that was refused (it rests on it)."""
        group = _group(self._writes[i])
        return group is not None and i > self._spoilt.get(group, i)


def _group(write: Write) -> int | None:
    return None if write.group is None else write.group.group_id


def _nothing(_writes: list[Write]) -> None:
    return None


def database_said(exc: BaseException) -> str:
    """What the database said refusing a statement: the driver's exception, its type and its first line."""
    cause = exc.orig if isinstance(exc, StatementError) and exc.orig is not None else exc
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0] if lines else ''}"


def refusals(writes: Sequence[Write]) -> dict[int, str | None]:
    """The writes of a batch to refuse: each that cannot be stored (why), and every later write
    of the same group (``None``: computed on top of one that cannot)."""
    refused: dict[int, str | None] = {}
    spoilt: set[int] = set()
    for i, write in enumerate(writes):
        group = None if write.group is None else write.group.group_id
        if group is not None and group in spoilt:
            refused[i] = None
            continue
        why = unstorable(write)
        if why is not None:
            refused[i] = why
            if group is not None:
                spoilt.add(group)
    return refused


def unstorable(write: Write) -> str | None:
    """Why ``write`` cannot be stored, naming the value; ``None`` when it can."""
    try:
        storable((write,))
    except ValueError as exc:
        return str(exc)
    for ev in write.events:  # (the core refuses such a channel first: DecisionGroup.send; the last guard)
        problem = channel_problem(ev.channel)
        if problem is not None:
            return f"a channel the database cannot store: {problem}"
    parts: list[tuple[str, Any]] = [(f"the value on {ev.channel!r}", ev.value) for ev in write.events]
    if write.group is not None:
        parts += [("the group's decisions", write.group.decisions), ("the group's vars", write.group.vars),
                  ("the group's clock", write.group.clock)]
    parts += [("a result's decision", r.decision) for r in write.results]
    parts += [("a tick's snapshot", t.snapshot) for t in write.ticks]
    for where, value in parts:
        try:
            orjson.dumps(value)  # what the database's JSON and the journal's record encode it with
        except TypeError as exc:  # orjson.JSONEncodeError: no JSON, or past 64 bits, or 254 levels
            return f"{where}: {exc}"
    try:
        orjson.dumps(write)
    except TypeError as exc:
        return str(exc)
    return None


def storable(writes: Sequence[Write]) -> None:
    """Raise ``ValueError`` for a value the database cannot store: a time past the year 9999 (a
    period's end), a score that is no finite number (stored as NULL, which ``results`` refuses),
    an integer of the core's past 64 bits (a subperiod, a tick's index, a close code), which
    SQLite's driver refuses.

    The journal looks before it takes a batch: an acknowledged write is applied or storage halts,
    and such a write could never be applied, so it would halt storage for good (and every start
    after it). The direct writer needs no such look: its commit fails. Either way the batch is
    then stored without it (:func:`storing_apart`). (The core refuses a payoff that is no finite
    number first; this is the last guard.) What else SQLite refuses depends on what it holds (a
    client id stored before, a row that is not there), which the journal, ahead of it, cannot
    look up: the server keeps those right (:mod:`server.clientids`), and an apply they fail halts."""
    for write in writes:
        group = write.group
        if group is not None and write.connection is None and not write.results and not write.ticks:
            # an action's write (the group's state alone) passed in one expression, the journal's
            # writer looks at every write; anything it does not pass is looked at value by value
            subperiod, started, ends, ended = group.subperiod, group.started_at, group.ends_at, group.ended_at
            if (type(subperiod) is int and _INT_MIN <= subperiod <= _INT_MAX and (started is None or _EARLIEST <= started <= _LATEST)
                    and (ends is None or _EARLIEST <= ends <= _LATEST) and (ended is None or _EARLIEST <= ended <= _LATEST)):
                continue
        _look(write)


def _look(write: Write) -> None:
    """:func:`storable` of one write, value by value: raises for the first it refuses."""
    for result in write.results:
        if not math.isfinite(result.score):
            raise ValueError(f"a score the database cannot store: {result.score!r}")
        _integer(result.subperiod, "a result's subperiod")
    group, connection = write.group, write.connection
    if group is None:
        times = []
    else:
        times = [group.started_at, group.ends_at, group.ended_at]
        _integer(group.subperiod, "the group's subperiod")
    if connection is not None:
        times += (connection.opened, connection.closed)
        _integer(connection.close_code, "a connection's close code")
    for tick in write.ticks:
        times.append(tick.scheduled_at)
        _integer(tick.index, "a tick's index")
    for value in times:
        if value is not None and not _EARLIEST <= value <= _LATEST:  # NaN is refused too
            raise ValueError(f"a time the database cannot store: {value!r} seconds since the epoch")


def _integer(value: Any, where: str) -> None:
    if type(value) is int and not _INT_MIN <= value <= _INT_MAX:  # (another value: the database says)
        raise ValueError(f"an integer the database cannot store: {value} ({where})")
