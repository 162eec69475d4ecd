"""A failed batch stored again in parts in a transaction, each part under a savepoint: the
direct writer's way to store a batch without the writes the database refuses (:mod:`.unstorable`).

A part the database refuses is rolled back to its savepoint, and the transaction goes on with
the next; what the parts stored is committed at its end (a batch's parts take a few
transactions: :class:`.unstorable._Apart` ends one every :data:`.unstorable.MOST_SAVEPOINTS`
parts stored or :data:`.unstorable.MOST_HELD` seconds, and begins the next with the writes not
settled). So a part costs its statements
and two more (the savepoint and its release, or its rollback and release), not a transaction of
its own on a new connection: a refusal of a write's data is no fault of the connection's, and
the writer keeps it. On PostgreSQL a part without a period's start or end and without statuses
(nearly all) goes as one pipeline, the savepoint and its release in it (one round trip, as a
batch does: :func:`.batch.store_pipelined`); another part goes statement by statement, as
:func:`.batch.commit_writes` stores such a batch.

The groups' rows are fenced first, for every write of the batch given (:func:`.batch.unfenced`),
and stay locked until the commit: a write fenced then is in no part. ``seq`` is handed out part
by part, in the batch's order; a part rolled back gives its numbers back with its rows, so the
numbers stored have no gap. The experiments' counters stay locked until the commit too: on
PostgreSQL another worker's batch of the same experiment waits for it, and each savepoint
released after a write is a subtransaction the session keeps until then (past 64, PostgreSQL's
cache per session overflows and every snapshot on the server is slower): hence the commits on
the way. A group taken over meanwhile (its claim waits for the row, and gets it at a commit) is
fenced by the next transaction, its writes after that refused.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from sqlalchemy.engine import Connection

from .batch import store_numbered, store_pipelined, unfenced
from .periods import rows_only, store_periods
from .prepared import drained_pipeline
from .statements import BatchStatements, batch_statements
from .statuses import set_statuses
from .writes import Write

#: the statements around one part (one savepoint at a time: released or rolled back before the next)
SAVEPOINT = "SAVEPOINT part"
RELEASE = "RELEASE SAVEPOINT part"
ROLLBACK = "ROLLBACK TO SAVEPOINT part"


@contextlib.contextmanager
def in_parts(conn: Connection, writes: Sequence[Write]) -> Iterator[Callable[[list[Write]], None]]:
    """One transaction on ``conn`` for the parts of the batch ``writes``, committed at the end of
    the block (rolled back if it raises): yields the function that stores one part (writes of the
    batch, in its order), or raises with nothing of the part stored and the transaction going on.

    Should a part's rollback fail too (the connection lost), the transaction can store nothing
    more: that failure is raised, by the part and again at the end, and nothing is committed."""
    sql = batch_statements(conn.engine)
    with conn.begin():
        parts = _Parts(conn, sql)
        try:
            parts.begin(writes)
            yield parts.store
            if parts.broken is not None:
                raise parts.broken
        finally:
            parts.close()


class _Parts:
    """The transaction of :func:`in_parts`, on the driver's connection."""

    def __init__(self, conn: Connection, sql: BatchStatements) -> None:
        self._conn = conn
        self._sql = sql
        raw: Any = conn.connection.dbapi_connection
        self._raw = raw
        self._cursor = raw.cursor()
        #: the failure of a part's rollback: nothing more can be stored, nor committed
        self.broken: BaseException | None = None
        #: psycopg: how often a statement runs before it is prepared on the server, put back at the end
        self._threshold: int | None = None

    def begin(self, writes: Sequence[Write]) -> None:
        if self._sql.direct:
            # SQLite's driver begins a transaction before a write only, and a savepoint outside
            # one is a transaction of its own, committed by its release
            self._cursor.execute("BEGIN")
        elif self._sql.pipelined is not None:
            # psycopg prepares a statement at its fifth run; one prepared in a pipeline that a
            # refused row aborted was never prepared, which psycopg does not see (the next run
            # fails: "prepared statement does not exist") until a rollback of the transaction
            # clears what it knows: the parts' statements are not prepared
            self._threshold, self._raw.prepare_threshold = self._raw.prepare_threshold, None
        unfenced(self._cursor, self._sql, writes)  # (marks the fenced writes: no part stores them)

    def store(self, writes: list[Write]) -> None:
        """Store ``writes`` under a savepoint, or raise with none of them stored."""
        if self.broken is not None:
            raise self.broken
        writes = [w for w in writes if not w.fenced]
        if not writes:
            return
        sql, cursor = self._sql, self._cursor
        try:
            if sql.pipelined is not None and rows_only(writes):
                end = functools.partial(cursor.execute, RELEASE)
                store_pipelined(self._raw, cursor, sql, sql.pipelined, writes, {}, end, begin=SAVEPOINT)
                return
            cursor.execute(SAVEPOINT)
            if sql.pipelined is not None:  # PostgreSQL: the rows in one pipeline, psycopg's executemany rides it
                with drained_pipeline(self._raw):
                    store_numbered(cursor, sql, writes)
            else:
                store_numbered(cursor, sql, writes)
            store_periods(self._conn, writes)
            set_statuses(self._conn, [s for w in writes for s in w.statuses])
            cursor.execute(RELEASE)
        except Exception as exc:
            try:
                if sql.direct:  # (SQLite's driver runs one statement at a time)
                    cursor.execute(ROLLBACK)
                    cursor.execute(RELEASE)
                else:  # one round trip
                    cursor.execute(f"{ROLLBACK}; {RELEASE}")
            except Exception as undone:
                self.broken = undone
                raise undone from exc
            raise

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._cursor.close()
        if self._sql.pipelined is not None:
            self._raw.prepare_threshold = self._threshold


def rolled_back(conn: Connection) -> bool:
    """Whether the driver's connection under ``conn`` is out of its transaction (rolled back now if
    need be): after the database refused a batch's data, the writer keeps it for the parts."""
    try:
        conn.connection.dbapi_connection.rollback()  # type: ignore[union-attr]
    except Exception:
        return False
    return True
