"""A running server's mark on its database, and the schema changes it keeps out.

``synclab db upgrade`` and ``synclab db downgrade`` change the tables under a server that runs
on them: it would go on writing to columns and tables the migration changed or dropped. So each
server holds a mark on its database for as long as it runs, which dies with its process
(SIGTERM, a crash, ``kill -9``: no stale mark can block an upgrade for ever), and a ``db``
command that is about to change the schema refuses (:class:`ServerRunning`, exit 2, nothing
changed) while anybody holds one:

- SQLite file: the ``flock`` every server holds on the database file from its start to its end
  (:func:`.recovery.lock_database`: shared for a direct writer, exclusive with the journal). The
  command tries that lock exclusively, in its migration's transaction, and keeps it until the
  transaction is over; one that took it first makes the command refuse. Before it tries it, the
  command locks a file beside the database (:data:`CHANGING_SUFFIX`, :func:`mark_schema_change`),
  which tells a server that finds the database's lock held why it is: a schema change, which it
  waits for as long as a PostgreSQL server does (:func:`schema_wait`), saying so, rather than
  another server, which refuses it after a short wait (one process per journal's database).
- PostgreSQL: a session's advisory lock (:data:`SERVING_LOCK` and the schema, as the schema lock
  is per schema), shared, on a connection of its own that each server process (each worker of a
  cluster) keeps open (:func:`hold_serving`). PostgreSQL lets it go when that session ends, and a
  killed process's session ends when its socket is closed (a host that vanished: when TCP
  keepalives give up). The command takes it exclusively in its migration's transaction
  (``pg_try_advisory_xact_lock``): a server starting meanwhile says so and waits for the commit,
  then finds the new revision; one that runs makes the command refuse, naming its sessions.

The commands that open the database (``export``, ``verify``, ``token``, ``db``…) wait for a
schema change under way before they read anything, as a server starting does
(:func:`wait_for_change`); ``export``, ``verify`` and ``token`` then hold a server's mark while they read
(:mod:`.readers`), the others nothing.

The command looks only once it has the schema lock and knows it has something to do: two
commands take turns as before, and one with nothing to do (``already at …``) runs beside the
servers, so a release phase that runs ``db upgrade`` while the old servers still serve passes
when no migration is due.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sys
import threading
import time
from collections.abc import Callable

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import URL, Connection
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from ..exceptions import SchemaError, ServerRunning
from .engine import normalise_url, sqlite_file
from .flocks import flock_holders, marked_by, processes

log = logging.getLogger("synclab")

#: the PostgreSQL advisory lock every running server holds shared (its schema's name the second key)
SERVING_LOCK = 0x5C1AC
#: seconds a command waits for the SQLite file's lock that another command holds for a moment
#: (``export`` applying a journal); a server holds it for its whole run
COMMAND_WAIT = 2.0
#: seconds a server or command waits for a ``db`` command's schema change to end before it gives
#: up, unless ``SYNCLAB_SCHEMA_WAIT`` says otherwise (:func:`set_schema_wait`, :func:`schema_wait`)
SERVER_WAIT = 30.0
_schema_wait = SERVER_WAIT
#: what is added to a SQLite file's name for the file whose ``flock`` says a ``db`` command changes its schema
CHANGING_SUFFIX = ".synclab-schema-change"
#: seconds between a server's looks at its mark's session (:meth:`ServingMark.renew`)
RENEW_EVERY = 5.0
_KEYS = "hashtext(current_schema())"
_KEY = {"key": SERVING_LOCK}
#: the lock's sessions (PostgreSQL), holding it or waiting for it (a server starting): its two
#: keys in ``pg_locks`` (classid, objid as an oid, objsubid 2)
_LOCKERS = (
    "SELECT l.pid, host(a.client_addr) FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid"
    " WHERE l.locktype = 'advisory' AND l.classid = :key AND l.objsubid = 2"
    f" AND l.objid = ({_KEYS}::bigint & 4294967295)::oid"
    " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    " AND l.pid <> pg_backend_pid()"
)
_HOLDERS = text(_LOCKERS + " ORDER BY l.pid")
#: the sessions that hold it (a command changing the schema holds it alone), not those waiting
_GRANTED = text(_LOCKERS + " AND l.granted ORDER BY l.pid")
#: the session that holds it exclusively: a ``db`` command changing the schema (servers hold it shared)
_CHANGING = text(_LOCKERS + " AND l.granted AND l.mode = 'ExclusiveLock' ORDER BY l.pid")


class ServingMark:
    """A server process's mark on its PostgreSQL database: a session that holds :data:`SERVING_LOCK` shared.

    The session may end under the server (PostgreSQL restarted, the session terminated): the
    server then calls :meth:`renew` every :data:`RENEW_EVERY` seconds, which takes the mark again
    on a new session.
    """

    def __init__(self, engine: Engine, conn: Connection) -> None:
        self._engine = engine
        self._conn: Connection | None = conn
        #: one at a time: a renewal on its thread and the close at the lifespan's end
        self._turn = threading.Lock()

    def renew(self) -> bool:
        """Blocking (a thread): the mark held still, or taken again; whether it is held now."""
        with self._turn:
            if self._conn is not None:
                try:
                    self._conn.exec_driver_sql("SELECT 1")
                    self._conn.commit()
                    return True
                except SQLAlchemyError:
                    with contextlib.suppress(SQLAlchemyError):
                        self._conn.close()
                    self._conn = None
                    log.warning("synclab: lost this server's mark on the database (its session ended); taking it again")
            try:
                conn = self._engine.connect()
            except SQLAlchemyError:
                return False  # the database away: tried again at the next renewal
            try:
                # not waiting: a command holding it exclusively is changing the schema under this server
                taken = conn.execute(text(f"SELECT pg_try_advisory_lock_shared(:key, {_KEYS})"), _KEY).scalar()
                conn.commit()
            except SQLAlchemyError:
                taken = False
            if not taken:
                with contextlib.suppress(SQLAlchemyError):
                    conn.close()
                return False
            self._conn = conn
            log.warning("synclab: took this server's mark on the database again")
            return True

    def close(self) -> None:
        """Let the mark go (the end of the server's lifespan); closing the session ends the lock.

        A session PostgreSQL ended meanwhile (a restart) is closed as quietly: nothing to reset.
        """
        with self._turn:
            try:
                if self._conn is not None:
                    with contextlib.suppress(SQLAlchemyError):
                        self._conn.close()
                    self._conn = None
            finally:
                self._engine.dispose()


def hold_serving(url: str, wait: float | None = None, *, server: bool = True) -> ServingMark | None:
    """This server's mark on the database of ``url`` (blocking: run it on a thread); ``None`` but on PostgreSQL.

    Taken before the server reads the schema's revision. A ``db`` command changing the schema
    holds the lock exclusively until its commit: this says so (the command's session) and waits
    for it in the lock's queue, up to ``wait`` seconds, then raises :class:`SchemaError`. (On SQLite the server's mark is its
    ``flock`` on the file.) ``server=False``: a command's mark while it reads (its words are a command's).
    """
    who, then = ("this server", "start the server") if server else ("this command", "run this command again")
    parsed = normalise_url(url)
    if parsed.get_backend_name() != "postgresql":
        return None
    wait = schema_wait() if wait is None else wait
    # no rollback at its close: the session holds nothing but the lock, and may be gone by then
    # and a renewal's connect gives up as the database's connections do not answer
    engine = create_engine(parsed, poolclass=NullPool, pool_reset_on_return=None, connect_args={"connect_timeout": 5})
    try:
        where = engine.url.render_as_string(hide_password=True)
        conn = engine.connect()
        try:
            if not conn.execute(text(f"SELECT pg_try_advisory_lock_shared(:key, {_KEYS})"), _KEY).scalar():
                sessions = [str(pid) for pid, _ in conn.execute(_GRANTED, _KEY)]
                held_by = f"its session {', '.join(sessions)}" if sessions else ""
                log.warning(waiting_for_change(where, held_by, wait, who=who))
                # waiting in the lock's queue (seen in pg_locks), for at most ``wait``
                conn.exec_driver_sql(f"SET lock_timeout = {max(1, round(wait * 1000))}")
                conn.execute(text(f"SELECT pg_advisory_lock_shared(:key, {_KEYS})"), _KEY)
                conn.exec_driver_sql("SET lock_timeout = 0")
            conn.commit()  # a session's lock: kept outside any transaction (never idle in one)
        except OperationalError as exc:
            conn.close()
            if getattr(exc.orig, "sqlstate", None) != "55P03":  # lock_not_available
                raise
            raise SchemaError(changing_too_long(where, wait, then=then)) from None
        return ServingMark(engine, conn)
    except BaseException:
        engine.dispose()
        raise


def set_schema_wait(seconds: float) -> None:
    """How long this process waits for a schema change (``SYNCLAB_SCHEMA_WAIT``, read with the settings)."""
    global _schema_wait
    _schema_wait = seconds


def schema_wait() -> float:
    return _schema_wait


def changing_too_long(where: str, wait: float, then: str = "start the server") -> str:
    """Why a server (or, ``then`` "run this command again", a command) gives up waiting for a
    ``db`` command's schema change (either database)."""
    return (f"a `synclab db` command has been changing the schema of the database {where} for over {wait:g} s: "
            f"{then} once it has finished")


def waiting_for_change(where: str, held_by: str, wait: float, who: str = "this server") -> str:
    """What a server (or ``who``) says as it starts waiting for a ``db`` command's schema change;
    ``held_by`` names the command's process or session ('' if unknown)."""
    by = f" ({held_by})" if held_by else ""
    return (f"synclab: a `synclab db` command{by} is changing the schema of the database {where}: "
            f"{who} waits for it to finish (up to {wait:g} s)")


def wait_for_change(
    url: str, wait: float | None = None, say: Callable[[str], None] | None = None, *, server: bool = False
) -> None:
    """Before a command opens the database of ``url`` (``export``, ``verify``, ``token``, ``db``…):
    a ``db`` command changing its schema now is waited for, as a server waits for it.

    The wait is said once (``say``; stderr by default), naming the command's process (SQLite) or
    session (PostgreSQL); past ``wait`` seconds, :class:`SchemaError`. The caller then reads the
    schema the change left, never the one it replaces: on SQLite the change's mark
    (:func:`mark_schema_change`) is let go only after its commit, and on PostgreSQL the lock it
    holds exclusively (:data:`SERVING_LOCK`) ends with its transaction. Nothing is held after it:
    a schema change that starts later is not kept out. Blocking. ``server``: ``synclab serve``
    before it reads the revision (its words are a server's).
    """
    announce, wait = say or _to_stderr, schema_wait() if wait is None else wait
    words = ("this server", "start the server") if server else ("this command", "run this command again")
    path = sqlite_file(url)
    if path is not None:
        where = repr(path)
        changing = schema_change_under_way(path)
        if changing is None:
            return
        announce(waiting_for_change(where, changing, wait, who=words[0]))
        deadline = time.monotonic() + wait
        while schema_change_under_way(path) is not None:
            if time.monotonic() >= deadline:
                raise SchemaError(changing_too_long(where, wait, then=words[1]))
            time.sleep(0.05)
        return
    parsed = normalise_url(url)
    if parsed.get_backend_name() == "postgresql":
        _wait_on_postgres(parsed, wait, announce, words)


def _wait_on_postgres(parsed: URL, wait: float, announce: Callable[[str], None], words: tuple[str, str]) -> None:
    """:func:`wait_for_change` on PostgreSQL: a session holding the servers' mark exclusively is a
    ``db`` command's change, waited for in the lock's queue and let go at once (never held
    beyond this look: a running server's mark is shared, and a command's would not be seen)."""
    engine = create_engine(parsed, poolclass=NullPool, connect_args={"connect_timeout": 5})
    where = engine.url.render_as_string(hide_password=True)
    try:
        with engine.connect() as conn:
            try:
                sessions = [str(pid) for pid in conn.execute(_CHANGING, _KEY).scalars()]
                if not sessions:
                    return
                announce(waiting_for_change(where, f"its session {', '.join(sessions)}", wait, who=words[0]))
                conn.exec_driver_sql(f"SET LOCAL lock_timeout = {max(1, round(wait * 1000))}")
                try:  # in the queue behind the change; let go with the transaction, at once
                    conn.execute(text(f"SELECT pg_advisory_xact_lock_shared(:key, {_KEYS})"), _KEY)
                except OperationalError as exc:
                    if getattr(exc.orig, "sqlstate", None) != "55P03":  # lock_not_available
                        raise
                    raise SchemaError(changing_too_long(where, wait, then=words[1])) from None
                conn.rollback()
            except BaseException:
                # a signal's stop (serve, uvicorn's startup) may come in the middle of any of these
                # statements, not only the lock's (the lock's timeout set just after the line that
                # says the server waits): a session mid-statement is closed, never rolled back
                # (psycopg: "another command is already in progress", which hid the stop)
                conn.invalidate()
                raise
    finally:
        engine.dispose()


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def mark_schema_change(path: str) -> int:
    """A ``db`` command's mark that it changes the schema of the SQLite file ``path``: the
    descriptor of the file beside it (:data:`CHANGING_SUFFIX`), locked exclusively.

    :func:`unmark_schema_change` removes the file and lets the lock go; a command killed leaves the
    file unlocked, which marks nothing. The file locked must be the one under the name: the
    command before this one may have removed it in the moment between, and it is made anew.
    """
    name = path + CHANGING_SUFFIX
    while True:
        fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)  # a server's look holds it shared for a moment only
        with contextlib.suppress(FileNotFoundError):
            named, held = os.stat(name), os.fstat(fd)
            if (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino):
                return fd
        os.close(fd)


def unmark_schema_change(path: str, fd: int) -> None:
    """The end of :func:`mark_schema_change`'s mark: the file removed, then its lock let go."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path + CHANGING_SUFFIX)
    os.close(fd)


def schema_change_under_way(path: str) -> str | None:
    """The process of a ``db`` command changing the schema of the SQLite file ``path`` now, in
    words (``process 12``; '' where ``/proc/locks`` cannot tell), or ``None`` when none is (a mark
    its command's kill left behind, or one just removed, is no change)."""
    return marked_by(path + CHANGING_SUFFIX, fcntl.LOCK_SH)


class NoServers:
    """A ``db`` command's look for running servers, in its migration's transaction (:meth:`check`).

    On SQLite it holds the file's lock from the look until :meth:`close`, which its caller runs once
    the transaction is over: it disposes of ``engine``'s connections first, since closing any of
    the process's descriptors of the file drops every ``fcntl`` lock it holds there, SQLite's own
    among them (see :func:`.recovery.sync_database`).
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._fd: int | None = None
        #: the file that marks the schema change (:func:`mark_schema_change`), its path and descriptor
        self._marked: tuple[str, int] | None = None

    def check(self, conn: Connection, where: str) -> None:
        """Raise :class:`ServerRunning` if a server runs on the database; else keep servers from starting."""
        if conn.dialect.name == "postgresql":
            key = {"key": SERVING_LOCK}
            if not conn.execute(text(f"SELECT pg_try_advisory_xact_lock(:key, {_KEYS})"), key).scalar():
                holders = conn.execute(_HOLDERS, key).all()
                sessions = ", ".join(f"{pid}" + (f" from {addr}" if addr else "") for pid, addr in holders)
                raise ServerRunning(_refusal(where, f"its session{'s' if len(holders) > 1 else ''} {sessions}"
                                             if holders else "a session of another role"))
            return
        path = self._engine.url.database
        if conn.dialect.name != "sqlite" or path in (None, "", ":memory:") or path.startswith("file:"):
            return  # a database in this process's memory: no other process can run on it
        path = os.path.abspath(path)
        self._fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        # marked before the file's lock is tried: a command that finds that lock held then always
        # finds the mark too, and waits for the change rather than read beside it
        self._marked = (path, mark_schema_change(path))
        deadline = time.monotonic() + COMMAND_WAIT
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise ServerRunning(_refusal(where, processes(flock_holders(self._fd)))) from None
                time.sleep(0.05)

    def close(self) -> None:
        if self._fd is None:
            return
        self._engine.dispose()
        os.close(self._fd)
        self._fd = None
        if self._marked is not None:  # after the database's lock: a server that waits takes that one next
            unmark_schema_change(*self._marked)
            self._marked = None


def _refusal(where: str, held_by: str) -> str:
    return (
        f"a synclab server is running on the database {where}{f' ({held_by})' if held_by else ''}, "
        "or a command (export, verify, token) reads it: stop the server (every process of it) or let the command "
        "end, and run this again; nothing was changed"
    )
