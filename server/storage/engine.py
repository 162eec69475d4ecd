"""Engines: a database URL to an SQLAlchemy engine with synclab's JSON and SQLite settings (the
commands that only read take theirs from :func:`.recovery.reading`)."""

from __future__ import annotations

import functools
import os
import sqlite3
import time
from typing import Any

import orjson
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url


def json_dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def json_loads(value: Any) -> Any:
    # SQLite gives a JSON column NUMERIC affinity: a stored "0.5" comes back as the float 0.5
    return orjson.loads(value) if isinstance(value, str | bytes) else value


def normalise_url(url: str) -> URL:
    """``postgresql://`` means psycopg 3 here; anything else is passed to SQLAlchemy as given."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def sqlite_file(url: str) -> str | None:
    """The absolute path of a SQLite file database; ``None`` for another database or SQLite in memory."""
    parsed = make_url(url)
    path = parsed.database or ""
    if parsed.get_backend_name() != "sqlite" or path in ("", ":memory:") or path.startswith("file:"):
        return None
    return os.path.abspath(path)


def make_engine(url: str, *, lock_timeout: float | None = None, synced: bool = True, **options: Any) -> Engine:
    """An engine on ``url`` (SQLite: WAL, full sync, see :func:`_sqlite_pragmas`).

    ``synced=False`` (SQLite, ``SYNCLAB_DURABILITY=crash``): a commit returns once it is in the
    operating system's hands, not the disk's; it survives a crash of this process, and a power
    loss or a crash of the machine may take the commits since the last sync. The log is synced
    at each checkpoint instead (``synchronous=NORMAL``; :meth:`.database.Database.checkpoint_soon`
    starts one within a second of any commit). Other databases sync every commit whatever it says.

    ``lock_timeout`` (seconds, PostgreSQL): every connection of the engine gives up waiting for a
    lock after it, with ``lock_not_available`` (SQLSTATE 55P03). A table locked by DDL (a
    migration, ``LOCK TABLE``, ``VACUUM FULL``) would otherwise hold each reader that touches it
    for as long, and with the few readers every request behind them: the server would hang rather
    than answer. ``None`` or 0 leaves the database's own setting (the URL's ``options`` may set one).
    """
    parsed = normalise_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(
            parsed,
            json_serializer=json_dumps,
            json_deserializer=json_loads,
            connect_args={"check_same_thread": False, "timeout": 30},
            **options,
        )
        event.listen(engine, "connect", functools.partial(_sqlite_pragmas, "FULL" if synced else "NORMAL"))
        return engine
    engine = create_engine(
        parsed,
        json_serializer=json_dumps,
        json_deserializer=json_loads,
        pool_pre_ping=True,
        pool_size=8,
        **options,
    )
    if lock_timeout and parsed.get_backend_name() == "postgresql":
        event.listen(engine, "connect", functools.partial(_postgres_lock_timeout, max(1, round(lock_timeout * 1000))))
    return engine


def _postgres_lock_timeout(milliseconds: int, dbapi_connection: Any, _record: Any) -> None:
    with dbapi_connection.cursor() as cursor:
        cursor.execute(f"SET lock_timeout = {int(milliseconds)}")
    dbapi_connection.commit()


#: bytes per page of a new SQLite database (an existing one keeps its own): each commit writes
#: every page it touched to the log, a random page per decision for the groups' rows and the
#: client-id index; at 2 KiB a commit of five decisions writes 36 KiB instead of 61, and under
#: load the commits that wait for the disk came fewer and shorter (bench/README.md)
SQLITE_PAGE_SIZE = 2048


def _null(_value: None) -> None:
    return None


# Python's sqlite3 binds an int, a float or a str as it is, and looks any other value up as an
# adapter first: for None and a bool that look-up fails by raising and clearing an
# AttributeError (its message formatted each time), some 3,000 instructions a value and a tenth
# of the writer's (bench.instructions). Registered, both are found at once and bound as before:
# None as NULL, a bool as the integer 0 or 1.
sqlite3.register_adapter(type(None), _null)
sqlite3.register_adapter(bool, int)


def _sqlite_pragmas(synchronous: str, dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # before the first write (journal_mode makes the file): a database that has pages keeps its size
    cursor.execute(f"PRAGMA page_size={SQLITE_PAGE_SIZE}")
    # WAL: readers never block the writer. synchronous=FULL: a commit survives power loss;
    # the writer's group commit pays one fsync per batch, not per event. NORMAL (make_engine's
    # synced=False): the log is synced at checkpoints only, and the database stays whole anyway.
    _into_wal(cursor)
    cursor.execute(f"PRAGMA synchronous={synchronous}")
    # no checkpoint inside a commit (it stalled the writer for hundreds of ms under load):
    # Database.checkpoint copies the WAL back into the database off the writer thread
    cursor.execute("PRAGMA wal_autocheckpoint=0")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()



#: seconds a connection keeps trying to turn a new database's journal to WAL while another does
WAL_SWITCH_SECONDS = 30.0


def _into_wal(cursor: Any) -> None:
    """``PRAGMA journal_mode=WAL``, tried again while another process holds the file's lock.

    Two processes opening a new database at once (two servers, a server and ``synclab db
    upgrade``) both read its header and both want the exclusive lock to switch its journal:
    SQLite answers one of them "database is locked" at once, without its busy timeout, since
    waiting could deadlock. Its next try finds the switch done by the other.
    """
    deadline = time.monotonic() + WAL_SWITCH_SECONDS
    pause = 0.005
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.1)
