"""Statements compiled once for a dialect and run on the driver's cursor, and the times they take.

The writer's hot path (:mod:`.batch`): SQLAlchemy's per-execution work cost most of a batch."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from itertools import chain
from typing import Any

import psycopg
from sqlalchemy import JSON, Boolean, DateTime

#: rows at most in one statement of :meth:`Prepared._insert_many`
MANY_ROWS = 64


class Prepared:
    """A statement compiled once for a dialect and run on the DBAPI cursor, many rows at a time.

    The writer's hot path: SQLAlchemy's per-execution work (the cache key, a dict per row, a
    bind processor called on every value) cost most of a batch. Here a row is a tuple in
    ``columns`` order, and its times and JSON values are already what the driver takes (the
    caller passes them through :attr:`.statements.BatchStatements.time` and ``.json``,
    SQLAlchemy's own processing, so what is stored is the same; a bool goes as it is, every
    driver takes one). Any other column type with a bind processor is processed here.
    """

    __slots__ = ("_many", "_values", "columns", "named", "order", "processed", "sql")

    def __init__(self, statement: Any, dialect: Any, columns: Sequence[str]) -> None:
        compiled = statement.compile(dialect=dialect)
        self.sql: str = compiled.string
        self.columns = tuple(columns)
        names = compiled.positiontup
        if sorted(names if names is not None else compiled.binds) != sorted(self.columns):
            raise ValueError(f"expected the parameters {sorted(self.columns)}, the statement has others: {self.sql}")
        #: rows go by name (the driver's paramstyle), else as tuples in the statement's order
        self.named = names is None
        #: each positional parameter's place in a row; ``None``: the row's own order
        self.order = None if self.named or tuple(names) == self.columns else tuple(self.columns.index(n) for n in names)
        self.processed = [
            (self.columns.index(name), process)
            for name, bind in compiled.binds.items()
            if not isinstance(bind.type, DateTime | JSON | Boolean)  # a bool is what every driver takes
            and (process := bind.type.dialect_impl(dialect).bind_processor(dialect)) is not None
        ]
        #: SQLite, an INSERT of one row in the row's own order: the statement's text before its
        #: ``VALUES`` and its row, for several rows in one statement (:meth:`_insert_many`)
        head, values, row = self.sql.partition(" VALUES ")
        self._values = (
            (head, row) if dialect.name == "sqlite" and self.sql.startswith("INSERT ") and values
            and self.order is None and not self.named and row.startswith("(") and row.endswith(")") else None
        )
        #: the INSERT of as many rows, for each power of two up to :data:`MANY_ROWS` (and below
        #: SQLite's 999 parameters a statement)
        self._many: dict[int, str] = {}

    def _driver_rows(self, rows: list[tuple[Any, ...]]) -> list[Any]:
        if self.processed:
            rows = [self._process(row) for row in rows]
        if self.named:
            return [dict(zip(self.columns, row, strict=True)) for row in rows]
        if self.order is not None:
            order = self.order
            return [tuple([row[i] for i in order]) for row in rows]
        return rows

    def _process(self, row: tuple[Any, ...]) -> tuple[Any, ...]:
        values = list(row)
        for i, process in self.processed:
            values[i] = process(values[i])
        return tuple(values)

    def run(self, cursor: Any, rows: list[tuple[Any, ...]]) -> None:
        if not rows:
            return
        driver_rows = self._driver_rows(rows)
        if len(driver_rows) == 1:
            cursor.execute(self.sql, driver_rows[0])
        elif self._values is not None:
            self._insert_many(cursor, driver_rows, *self._values)
        else:
            cursor.executemany(self.sql, driver_rows)

    def _insert_many(self, cursor: Any, rows: list[Any], head: str, row: str) -> None:
        """SQLite: ``rows`` inserted by statements of many rows each, the most a power of two allows.

        ``executemany`` runs the one-row statement once a row: the driver resets, binds and
        steps it, letting the interpreter's lock go and taking it back, and SQLite opens the
        table's and its indexes' cursors, for every row. One statement of the batch's rows does
        that once: the journal's apply of a ``server-2000``-like load (two events a decision, 40
        in a batch) took 15,500 instructions a decision less, a tenth of its work. The few sizes
        keep the driver's statement cache small. What is stored is the same, row for row; a row
        refused fails the whole statement, as it failed the batch before.
        """
        most = min(MANY_ROWS, 1 << ((999 // len(self.columns)).bit_length() - 1))
        done, count = 0, len(rows)
        while done < count:
            size = min(most, 1 << ((count - done).bit_length() - 1))
            sql = self._many.get(size)
            if sql is None:
                sql = self._many[size] = f"{head} VALUES {', '.join([row] * size)}"
            cursor.execute(sql, list(chain.from_iterable(rows[done:done + size])))  # (in C: a comprehension ran Python per value)
            done += size

    def rows(self, cursor: Any, row: tuple[Any, ...]) -> list[Any]:
        """Run once and return every row it returns."""
        cursor.execute(self.sql, self._driver_rows([row])[0])
        return list(cursor.fetchall())

    def one(self, cursor: Any, row: tuple[Any, ...]) -> Any:
        """Run once and return the first column of the one row it returns.

        Every row is read (``fetchall``, not ``fetchone``): on SQLite a statement not run to
        its end stays active until the next batch and holds the write-ahead log back from
        starting over (see :meth:`Database.checkpoint`).
        """
        cursor.execute(self.sql, self._driver_rows([row])[0])
        return cursor.fetchall()[0][0]


@contextlib.contextmanager
def drained_pipeline(raw: Any) -> Iterator[None]:
    """A pipeline on psycopg's connection ``raw``, whose statements left unrun by an error are
    answered before the error is raised.

    An error (the database refusing a row, say) aborts what the pipeline holds after it. When
    the error comes back while the statements are still being sent (an ``executemany`` of many
    rows gets it at once), the pipeline's exit finds the rest aborted and psycopg logs "error
    ignored terminating <Pipeline>: pipeline aborted", a warning for what is expected: here
    the rest is answered first (its "pipeline aborted" is the error's own doing), and the
    error raised as it came."""
    with raw.pipeline() as pipeline:
        try:
            yield
        except psycopg.Error:
            with contextlib.suppress(psycopg.Error):
                pipeline.sync()
            raise


class StoredTimes:
    """Epoch seconds to what the driver takes for a time column, remembered.

    A batch repeats a few times many times over (every event of a write has the write's time,
    every state update the period's start and end), and turning each into a ``datetime`` and
    then, on SQLite, into text was the largest part of the writer's Python work. On SQLite a
    new time's text is its second's text (remembered) and its microseconds
    (:meth:`_sqlite_text`): ``datetime.isoformat`` formats through C's ``printf``, some 6,000
    instructions a time.

    A hot caller (:func:`.batch._store`) looks a time up in :attr:`known` itself
    (``known.get(t) or time(t)``: every value stored is truthy) and calls only on a miss: the
    call, a Python method's, five times a decision, cost the journal's apply some 1,600
    instructions a decision. On the events' times, never ``None``, it calls :meth:`made`.
    """

    __slots__ = ("_process", "_seconds", "_sqlite", "known")

    LIMIT = 4096

    def __init__(self, dialect: Any) -> None:
        #: on SQLite a time is text (``YYYY-MM-DD HH:MM:SS.ffffff``, UTC, as SQLAlchemy's
        #: processor makes it), made by :meth:`_sqlite_text`
        self._sqlite = dialect.name == "sqlite"
        #: elsewhere, what makes a ``datetime`` what the driver takes (``None``: the driver takes it)
        self._process: Callable[[datetime], Any] | None = (
            None if self._sqlite else DateTime(timezone=True).dialect_impl(dialect).bind_processor(dialect)
        )
        #: each time made so far (up to :data:`LIMIT`), what the driver takes for it
        self.known: dict[float | None, Any] = {}
        #: SQLite: a whole second's text, ``YYYY-MM-DD HH:MM:SS``
        self._seconds: dict[int, str] = {}

    def __call__(self, epoch: float | None) -> Any:
        if epoch is None:
            return None
        stored = self.known.get(epoch)
        return self.made(epoch) if stored is None else stored

    def made(self, epoch: float) -> Any:
        """What the driver takes for ``epoch`` (not ``None``), made and remembered: what a hot
        caller calls on a miss of :attr:`known`, a bound method's call. The instance's own
        (``__call__``, looked up on its type at each call) and the microseconds formatted by a
        format spec (``{micro:06d}``, parsed each time) cost the journal's apply, a new time a
        decision, 2,900 instructions a decision more."""
        stored: Any
        if self._sqlite:
            stored = self._sqlite_text(epoch)
        else:
            value = datetime.fromtimestamp(epoch, UTC)
            stored = value if self._process is None else self._process(value)
        if len(self.known) >= self.LIMIT:
            self.known.clear()
        self.known[epoch] = stored
        return stored

    def _sqlite_text(self, epoch: float) -> str:
        """:func:`sqlite_time` of ``datetime.fromtimestamp(epoch, UTC)``: the second and the
        microseconds split as that does (CPython's ``_PyTime_DoubleToDenominator``: the
        fraction times 10⁶, rounded half to even, carried into the second at 10⁶ or below 0)."""
        fraction, whole = math.modf(epoch)
        micro = round(fraction * 1e6)
        if micro >= 1_000_000:
            micro -= 1_000_000
            whole += 1.0
        elif micro < 0:
            micro += 1_000_000
            whole -= 1.0
        second = int(whole)
        text = self._seconds.get(second)
        if text is None:
            text = sqlite_time(datetime.fromtimestamp(second, UTC))[:19]
            if len(self._seconds) >= self.LIMIT:
                self._seconds.clear()
            self._seconds[second] = text
        return f"{text}.{str(1_000_000 + micro)[1:]}"  # (not ``{micro:06d}``: see :meth:`made`)


def sqlite_time(value: datetime) -> str:
    """A UTC time as SQLAlchemy's SQLite ``DateTime`` stores it, ``YYYY-MM-DD HH:MM:SS.ffffff``
    (its processor formats seven fields by name: five times slower)."""
    return value.isoformat(" ", "microseconds")[:26]
