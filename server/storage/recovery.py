"""The journal's files beside a SQLite database (``SYNCLAB_JOURNAL=on``, :mod:`.journaled`): where
it is, the lock that keeps one process per database, its records' payload, and recovery.

Recovery applies what a journal holds past the position the database records (the ``meta`` row
:data:`MARKER`), record by record in the order they were acknowledged, then syncs the database
and starts the journal's next pass. It runs at every start of a server on the database, and
before the commands that read a database no server holds (:func:`reading`: ``export``,
``verify``) or upgrade it (``db upgrade``), so that what a server acknowledged before a crash is
read as well.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import orjson
from sqlalchemy import Engine, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from ..exceptions import SchemaError, SettingsError
from .batch import apply_numbered
from .engine import make_engine, sqlite_file
from .frameids import catch_up
from .journal import DamagedHeader, Journal, JournalBusy, JournalError, Record, new_salt, scan
from .readmark import reading_under_way
from .schema import schema_state
from .serving import (
    changing_too_long,
    schema_change_under_way,
    schema_wait,
    wait_for_change,
    waiting_for_change,
)
from .tables import meta
from .writes import ConnectionChange, GroupUpdate, NewEvent, NewResult, NewTick, Write

log = logging.getLogger("synclab.journal")
#: the journal's file is the database's with this added
JOURNAL_SUFFIX = ".synclab-journal"
#: the ``meta`` key of the journal's position the database holds: ``pass:salt:end``
MARKER = "journal_applied"
#: what a journal's record holds: this version's encoding of a list of writes
PAYLOAD_VERSION = 1
#: seconds a process waits for the database's lock (another's recovery) before it gives up
LOCK_WAIT = 10.0


def journal_of(path: str) -> str:
    """The journal of the SQLite file ``path``: beside it, ``<file>.synclab-journal``."""
    return path + JOURNAL_SUFFIX


# ---------------------------------------------------------------------------- the database's lock


def lock_database(
    path: str, *, exclusive: bool, wait: float = LOCK_WAIT, why: str | None = None, change_wait: float = 0.0
) -> int:
    """An ``flock`` on the SQLite file ``path`` (made empty if absent): its descriptor, which holds it.

    Shared for a direct writer (several processes may write one database, each numbering from
    the database), exclusive for a journal's (its numbers are its own) and for a recovery. SQLite
    locks the file with ``fcntl`` record locks, which an ``flock`` does not touch. Waits up to
    ``wait`` seconds for another process's recovery, then raises :class:`SettingsError`, which
    says ``why`` (:attr:`.Settings.journal_in_force`) this process wants the lock it wants.
    A server (``change_wait``: :func:`.serving.schema_wait`) whose lock a ``db`` command holds
    to change the schema (:func:`.serving.schema_change_under_way`) says so and waits for it up
    to ``change_wait`` seconds more, then raises :class:`SchemaError`; its own ``wait`` begins
    again once the change is over (the command then applies a journal, say).
    The lock :func:`check_startable` kept for this process's server is taken over as it is.
    """
    kept = _kept.pop(path, None)
    if kept is not None:
        fd, kept_exclusive = kept
        if kept_exclusive == exclusive:
            return fd
        os.close(fd)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise SettingsError(f"DATABASE_URL: cannot open the SQLite file {path!r}: {exc.strerror}") from exc
    deadline = time.monotonic() + wait
    changing_since: float | None = None
    reading_since: float | None = None
    while True:
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            now = time.monotonic()
            changing = schema_change_under_way(path) if change_wait > 0 else None
            # a command reading it (export, verify): only a journal's exclusive lock waits for one
            reader = reading_under_way(path) if change_wait > 0 and exclusive and changing is None else None
            if changing is not None:
                if changing_since is None:
                    changing_since = now
                    log.warning(waiting_for_change(repr(path), changing, change_wait))
                if now - changing_since >= change_wait:
                    os.close(fd)
                    raise SchemaError(changing_too_long(repr(path), change_wait)) from None
                deadline = now + wait
            elif reader is not None:
                if reading_since is None:
                    reading_since = now
                    log.warning(_waiting_for_reader(path, reader, change_wait))
                if now - reading_since >= change_wait:
                    os.close(fd)
                    raise SettingsError(_reading_too_long(path, change_wait)) from None
                deadline = now + wait
            elif now >= deadline:
                os.close(fd)
                raise SettingsError(_lock_refused(path, exclusive, why)) from None
            time.sleep(0.05)


def lock_served(path: str, *, exclusive: bool, wait: float = LOCK_WAIT, why: str | None = None) -> int:
    """:func:`lock_database` for a server: it waits for a ``db`` command's schema change as long as
    a server on PostgreSQL does (:func:`.serving.schema_wait`)."""
    return lock_database(path, exclusive=exclusive, wait=wait, why=why, change_wait=schema_wait())


def _waiting_for_reader(path: str, held_by: str, wait: float) -> str:
    by = f" ({held_by})" if held_by else ""
    return (f"synclab: a `synclab export`, `verify` or `token`{by} is reading the database {path!r}: "
            f"this server waits for it to finish (up to {wait:g} s)")


def _reading_too_long(path: str, wait: float) -> str:
    return (f"a `synclab export`, `verify` or `token` has been reading the database {path!r} for over {wait:g} s, and with "
            "the journal one process serves a SQLite database, alone: start the server once it has finished")


def _lock_refused(path: str, exclusive: bool, why: str | None) -> str:
    """Why the lock on ``path`` cannot be had: it was "with SYNCLAB_JOURNAL=on" whatever was set."""
    if exclusive:
        return (f"another synclab process has the database {path!r} open; this one would journal, "
                f"and with the journal one process serves a SQLite database, alone ({why or 'SYNCLAB_JOURNAL=on'}); "
                "stop the other first")
    return (f"another synclab process has the database {path!r} open, alone, as one with the journal does "
            "(SYNCLAB_JOURNAL=on, or auto, the default, for one process on a SQLite file)"
            + (f"; this one would share it ({why})" if why else "") + "; stop the other first")


#: the lock :func:`check_startable` kept for this process's own server, by SQLite file: the
#: descriptor and whether it is exclusive (:func:`lock_database` hands it over)
_kept: dict[str, tuple[int, bool]] = {}


def check_startable(
    url: str, journal: bool, *, keep: bool = False, why: str | None = None, wait: float = 2.0
) -> None:
    """Before a server starts: the lock it will take on its SQLite file is free, and a journal
    beside it is readable; else the reason in one line.

    With ``keep`` the lock stays held until this process's server takes it over (its
    :class:`.database.Database`), so that no other server starts in between: of two journal
    servers started at once, the one refused is refused here, before it does anything (makes the
    first start's token, say). Without, it is let go at once.
    """
    path = sqlite_file(url)
    if path is None:
        return
    # ``wait`` briefly (serve): a command's recovery holds it for a moment (the server's own lock
    # waits longer); a command's schema change as long as on PostgreSQL
    fd = lock_served(path, exclusive=journal, wait=wait, why=why)
    try:
        if os.path.exists(journal_of(path)):
            with as_schema_error(), contextlib.suppress(DamagedHeader):  # the server's start mends it
                scan(journal_of(path))
    except BaseException:
        os.close(fd)
        raise
    if keep:
        _kept[path] = (fd, journal)
    else:
        os.close(fd)


@contextmanager
def as_schema_error() -> Iterator[None]:
    """A journal that cannot be used, as the commands report a database that cannot (one line)."""
    try:
        yield
    except JournalBusy:
        raise
    except JournalError as exc:
        raise SchemaError(str(exc)) from exc


def try_lock_database(path: str) -> int | None:
    """The exclusive lock of :func:`lock_database` if nobody holds the file now, else ``None``."""
    try:
        return lock_database(path, exclusive=True, wait=0)
    except SettingsError:
        return None


def sync_database(path: str, held: int) -> None:
    """``fsync`` the database file and its write-ahead log: what was committed without a sync is on the disk.

    ``held``: a descriptor of the database file that this process keeps open (its ``flock``'s,
    :func:`lock_database`). The file is never opened and closed here: closing any descriptor of
    a file drops every ``fcntl`` lock the process holds on it, SQLite's own among them. Without
    its shared lock, another process closing its last connection to the database takes it for
    the last one anywhere, checkpoints and deletes the log under this process's connections,
    which then write to a log nobody else can see (and read with "disk I/O error"). SQLite locks
    no byte of the log itself, so the log is opened by name.
    """
    try:
        fd = os.open(path + "-wal", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        pass
    else:
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    os.fsync(held)


# ---------------------------------------------------------------------------- records


def encode(writes: Sequence[Write]) -> bytes:
    """A record's payload: the version and the writes, numbered, as JSON (orjson: dataclasses as objects)."""
    # (the writer's batch, a list, as it is: no copy)
    return orjson.dumps([PAYLOAD_VERSION, writes if type(writes) is list else list(writes)])


def decode(payload: bytes) -> list[Write]:
    """The writes of a record (:func:`encode`)."""
    version, raw = orjson.loads(payload)
    if version != PAYLOAD_VERSION:
        raise SettingsError(f"the journal holds records of version {version}; this synclab reads {PAYLOAD_VERSION}")
    return [
        Write(
            experiment_id=w["experiment_id"],
            events=[NewEvent(**e) for e in w["events"]],
            group=None if w["group"] is None else GroupUpdate(**w["group"]),
            connection=None if w["connection"] is None else ConnectionChange(**w["connection"]),
            results=[NewResult(**r) for r in w["results"]],
            ticks=[NewTick(**t) for t in w["ticks"]],
            statuses=[(int(p), str(s)) for p, s in w["statuses"]],
            epoch=w["epoch"],
            seqs=w["seqs"],
        )
        for w in raw
    ]


def marker(journal: Journal, end: int) -> str:
    """The ``meta`` value that says the database holds ``journal`` up to ``end``."""
    return f"{journal.pass_}:{journal.salt}:{end}"


def stored_marker(engine: Engine) -> tuple[int, int, int] | None:
    """The database's marker: (pass, salt, end) of the journal it holds applied; ``None`` if none."""
    with engine.connect() as conn:
        stored = conn.execute(select(meta.c.value).where(meta.c.key == MARKER)).scalar()
    if stored is None:
        return None
    pass_, salt, end = (int(part) for part in str(stored).split(":"))
    return pass_, salt, end


def unapplied(engine: Engine, journal: Journal) -> list[Record]:
    """The records of the journal's pass that the database does not hold (past its marker)."""
    stored = stored_marker(engine)
    records = journal.records()
    if stored is None:
        return records
    pass_, salt, end = stored
    if (pass_, salt) != (journal.pass_, journal.salt):  # a later pass, or a journal made anew
        return records
    return [r for r in records if r.end > end]


def mend_header(engine: Engine) -> Callable[[DamagedHeader], tuple[int, int]]:
    """How :meth:`.journal.Journal.open` rebuilds a damaged header (a torn write, a flipped bit)
    from the records and the database, rather than refuse to start until an operator looks.

    A header holds only its pass and the salt its records carry. The first record, whole, tells
    the salt (its checksum covers it); the database's marker tells the pass when it is of that
    salt, and recovery then applies what lies past the marker, as ever. A salt not the marker's
    is a pass the database holds nothing of (a pass starts only once the one before is applied):
    it becomes the pass after the marker's, and every record is applied. No whole first record:
    no records, and a new pass begins. A database without a marker (or without its tables yet)
    has applied nothing.
    """

    def mend(damaged: DamagedHeader) -> tuple[int, int]:
        try:
            stored = stored_marker(engine)
        except SQLAlchemyError:
            stored = None  # no tables yet: nothing applied
        salt = damaged.first_salt
        if stored is None:
            pass_, told = 1, "the database has applied no journal"
        elif salt == stored[1]:
            pass_, told = stored[0], f"the database has applied it up to byte {stored[2]}"
        else:
            pass_, told = stored[0] + 1, f"the database has applied up to pass {stored[0]}"
        if salt is None:
            salt = new_salt(0 if stored is None else stored[1])
        log.warning(
            "synclab: %s; rebuilt as pass %d, %s (%s)",
            damaged, pass_,
            "its records' salt read from the first" if damaged.first_salt is not None else "a new salt (no whole record)",
            told,
        )
        return pass_, salt

    return mend


def recover(engine: Engine, journal: Journal, path: str, held: int, *, start_over: bool = True) -> int:
    """Apply what ``journal`` holds past the database's marker, add the client ids left to add
    (:func:`.frameids.catch_up`), sync, start a new pass; the writes applied.

    Each record in a transaction of its own, in order: as the apply thread stored them (a
    record's writes numbered on top of the one's before it). The database's lock is the caller's:
    ``held`` its descriptor (:func:`sync_database`). With nothing to apply and not ``start_over``
    (a command's look), neither file is written; a server starts over anyway (letting go of the
    records read at open)."""
    applied = 0
    records = unapplied(engine, journal)
    if not records and not start_over:
        return 0
    with engine.connect() as conn:
        for record in records:
            writes = decode(record.payload)
            apply_numbered(conn, writes, (MARKER, marker(journal, record.end)))
            applied += len(writes)
    if records:
        log.warning("synclab: applied %d writes (%d records) from the journal %s", applied, len(records), journal.path)
    catch_up(engine)
    sync_database(path, held)
    journal.restart()
    return applied


def recover_file(engine: Engine, url: str) -> int | None:
    """Before a command reads a database no server holds: apply its journal, if it has one.

    The number of writes applied; ``None`` when a server holds the database (it recovered at
    its start and applies as it goes), or it is no SQLite file with a journal.
    """
    path = sqlite_file(url)
    if path is None or not os.path.exists(journal_of(path)):
        return None
    lock = try_lock_database(path)
    if lock is None:
        return None
    try:
        with as_schema_error(), Journal.open(journal_of(path), mend=mend_header(engine)) as journal:
            return recover(engine, journal, path, lock, start_over=False)
    except JournalBusy:
        return None
    finally:
        # the engine's connections first: closing the lock's descriptor drops their fcntl locks
        # (see sync_database); the command's next read opens new ones
        engine.dispose()
        os.close(lock)


@contextmanager
def reading(url: str) -> Iterator[Engine]:
    """An engine on an existing database, for the commands that read it (export, verify, token, db…).

    A SQLite database that no server holds has what its journal (``SYNCLAB_JOURNAL=on``) kept
    applied first, when its schema is this synclab's (:func:`recover_file`): what a
    server acknowledged before a crash is read as well.

    A ``db`` command changing the schema meanwhile is waited for first, as a server waits for it
    (:func:`.serving.wait_for_change`: up to ``SYNCLAB_SCHEMA_WAIT``, 30 s, then :class:`SchemaError`).

    A SQLite file that does not exist is a :class:`SettingsError`, never created; a database
    error while reading becomes one too, naming the database without its password.
    """
    path = sqlite_file(url)
    if path is not None and not os.path.exists(path):
        raise SettingsError(f"DATABASE_URL: no SQLite database at {make_url(url).database!r}")
    engine = make_engine(url)
    try:
        wait_for_change(url)  # a `db` command's schema change under way: its new schema is read
        if path is not None and os.path.exists(journal_of(path)) and schema_state(engine).current:
            recover_file(engine, url)  # db upgrade does it once the schema is this synclab's
        yield engine
    except SQLAlchemyError as exc:
        where = engine.url.render_as_string(hide_password=True)
        raise SettingsError(f"cannot read the database {where}: {exc.__cause__ or exc}") from exc
    finally:
        engine.dispose()
