"""The schema and its migrations: where a database stands, and bringing it to this synclab's.

The revisions are Alembic's, in ``migrations/versions``; the first, ``0001_baseline``, is the
schema of synclab 0.1.0 exactly. A database is in one of these states (:class:`SchemaState`):

    empty    no synclab table: every migration runs (``serve`` does it, as it always made one)
    legacy   tables made by synclab 0.1.0, which had no version table: ``db upgrade`` checks
             them against the baseline, stamps the baseline without changing a row, and goes on
    behind   an older revision: ``db upgrade``, or ``serve --upgrade``; ``serve`` alone refuses
    current  at the newest revision this synclab knows
    unknown  a revision this synclab does not know: a newer synclab upgraded it; refused

Every change runs in one transaction with the whole schema locked, so two processes upgrading
at once take turns and the second finds nothing left to do: on PostgreSQL an advisory lock
(the DDL is transactional there), on SQLite ``BEGIN IMMEDIATE`` (its DDL is transactional too),
with foreign keys off while tables are rebuilt and checked before the commit.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.pool import NullPool

from ..exceptions import SchemaBehind, SchemaError
from .engine import json_dumps, json_loads
from .serving import NoServers
from .tables import metadata

MIGRATIONS = Path(__file__).resolve().with_name("migrations")
#: the revision of synclab 0.1.0's schema, stamped on a database that release made
BASELINE = "0001_baseline"
#: Alembic's table of the database's revision
VERSION_TABLE = "alembic_version"
#: a table every synclab database has had: its presence without a version table means 0.1.0
_MARKER_TABLE = "experiments"
#: the PostgreSQL advisory lock every schema change holds (with its schema's name as the second key)
SCHEMA_LOCK = 0x5C1AB
UPGRADE_HINT = "back it up, then run `synclab db upgrade` (or start with `synclab serve --upgrade`)"


@dataclass(frozen=True, slots=True)
class SchemaState:
    """Where a database stands against this synclab's migrations."""

    #: the database, without its password
    where: str
    #: its revision; ``None`` when it has no version table
    revision: str | None
    #: the newest revision this synclab knows
    head: str
    #: synclab tables without a version table (made by 0.1.0)
    legacy: bool

    @property
    def empty(self) -> bool:
        return self.revision is None and not self.legacy

    @property
    def current(self) -> bool:
        return self.revision == self.head

    @property
    def known(self) -> bool:
        return self.revision is None or self.revision in revisions()

    def describe(self) -> str:
        """The revision in words: ``0001_baseline``, ``none (made by synclab 0.1.0, …)``, ``none (empty)``."""
        if self.revision is not None:
            return self.revision
        return "none (made by synclab 0.1.0, before migrations)" if self.legacy else "none (empty)"

    def refusal(self) -> str:
        """One line: why ``serve`` will not start on this database, and what to run ('' if it will)."""
        if self.current or self.empty:
            return ""
        if not self.known:
            return (
                f"the database {self.where} is at revision {self.revision}, which this synclab does not know "
                f"(its newest is {self.head}): a newer synclab upgraded it; run that version, or restore a backup"
            )
        return (
            f"the database {self.where} is at revision {self.describe()}; this synclab needs {self.head}: "
            f"{UPGRADE_HINT}"
        )


# --------------------------------------------------------------------------- the revisions


@functools.cache
def _script() -> ScriptDirectory:
    return ScriptDirectory(str(MIGRATIONS))


def head() -> str:
    """The newest revision this synclab knows."""
    found = _script().get_current_head()
    if found is None:
        raise SchemaError(f"no migrations in {MIGRATIONS}")
    return found


@functools.cache
def revisions() -> frozenset[str]:
    return frozenset(r.revision for r in _script().walk_revisions())


def history() -> list[tuple[str, str | None, str]]:
    """Every revision, newest first: ``(revision, the one before, its first line)``."""
    rows = []
    for r in _script().walk_revisions():
        down = r.down_revision if isinstance(r.down_revision, str) or r.down_revision is None else ",".join(r.down_revision)
        rows.append((r.revision, down, (r.doc or "").strip().splitlines()[0] if r.doc else ""))
    return rows


# --------------------------------------------------------------------------- reading the state


def schema_state(engine: Engine) -> SchemaState:
    """Where the database of ``engine`` stands (reads only)."""
    with engine.connect() as conn:
        return _state(conn, engine)


def _state(conn: Connection, engine: Engine) -> SchemaState:
    tables = set(inspect(conn).get_table_names())
    revision = MigrationContext.configure(conn).get_current_revision() if VERSION_TABLE in tables else None
    return SchemaState(
        where=engine.url.render_as_string(hide_password=True),
        revision=revision,
        head=head(),
        legacy=revision is None and _MARKER_TABLE in tables,
    )


def differences(engine: Engine) -> list[str]:
    """How the database's tables differ from this synclab's (Alembic's autogenerate comparison).

    Empty when they agree: what CI checks on a database the migrations made, so that no table
    changes without a migration.
    """
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        found = [_difference(d) for d in compare_metadata(context, metadata)]
        return found + _partial_differences(conn)


def _partial_differences(conn: Any) -> list[str]:
    """Indexes partial in one and whole in the other: Alembic's comparison does not look at an
    index's ``WHERE``. (Whether, not which: each database words the condition its own way.)"""
    option = f"{conn.dialect.name}_where"
    have = inspect(conn)
    found = []
    for table in metadata.sorted_tables:
        if not have.has_table(table.name):
            continue
        reflected = {i["name"]: i.get("dialect_options", {}).get(option) is not None for i in have.get_indexes(table.name)}
        for index in table.indexes:
            partial = index.dialect_kwargs.get(option) is not None
            if index.name in reflected and reflected[index.name] != partial:
                found.append(f"{'partial' if partial else 'whole'} index here, not in the database: {index.name}")
    return found


def _difference(diff: Any) -> str:
    if isinstance(diff, list):  # a column's changes come as a list of modifications
        return "; ".join(_difference(d) for d in diff)
    kind, *args = diff
    names = [getattr(a, "name", None) or str(a) for a in args if a is not None and not isinstance(a, dict)]
    return f"{kind}: {', '.join(str(n) for n in names)}"


# --------------------------------------------------------------------------- changing it


def prepare_schema(engine: Engine, *, upgrade: bool = False) -> SchemaState:
    """Make sure a server can start on this database: create an empty one, upgrade if asked.

    Returns the state it found (under the lock, when it changed anything). Raises :class:`SchemaBehind` (one line: the revision it is at, the one needed, the command)
    for a database that is behind or legacy unless ``upgrade``, and :class:`SchemaError` for one
    at a revision this synclab does not know.
    """
    state = schema_state(engine)
    if state.current:
        _check_columns(engine, state)
        return state
    if not state.known:
        raise SchemaError(state.refusal())
    if not state.empty and not upgrade:
        raise SchemaBehind(state.refusal())
    return upgrade_schema(engine)[0]


def upgrade_schema(engine: Engine, *, alone: bool = False) -> tuple[SchemaState, SchemaState]:
    """Bring the database to the newest revision: ``(before, after)``.

    Under the schema lock, in one transaction: another process that upgraded meanwhile leaves
    nothing to do; a failure leaves the database as it was. ``alone`` (``synclab db upgrade``):
    with anything to do, :class:`.ServerRunning` while a server runs on the database
    (:mod:`.serving`); a server upgrading its own database at its start does not look.
    """
    servers = NoServers(engine) if alone else None
    try:
        with _locked(engine) as conn:
            before = _state(conn, engine)
            if not before.known:
                raise SchemaError(before.refusal())
            if servers is not None and not before.current:
                servers.check(conn, before.where)
            if before.legacy:
                _check_legacy(conn, before)
                _alembic(conn, "stamp", BASELINE)
            if not before.current:
                _alembic(conn, "upgrade", "head")
            after = _state(conn, engine)
    finally:
        if servers is not None:  # once the transaction is over (its lock on a SQLite file)
            servers.close()
    return before, after


def create_schema(engine: Engine) -> None:
    """A new database at the newest revision (tests, tools); one at any other is refused."""
    prepare_schema(engine)


def _check_columns(engine: Engine, state: SchemaState) -> None:
    """A database at the newest revision has every table and column of this synclab's.

    A cheap guard against a table changed by hand (``synclab db check`` compares everything).
    """
    expected = {table.name: frozenset(table.columns.keys()) for table in metadata.sorted_tables}
    with engine.connect() as conn:
        lacking = _lacking(conn, expected)
    if lacking:
        raise SchemaError(
            f"the database {state.where} is at revision {state.revision}, but {lacking}: it was changed by "
            "hand; `synclab db check` lists every difference"
        )


def _lacking(conn: Connection, expected: dict[str, frozenset[str]]) -> str:
    """The first table missing, or missing columns, in words (``table 'x' lacks ['y']``); '' if none."""
    have = inspect(conn)
    tables = set(have.get_table_names())
    for table, columns in expected.items():
        if table not in tables:
            return f"it has no table {table!r}"
        missing = sorted(columns - {c["name"] for c in have.get_columns(table)})
        if missing:
            return f"table {table!r} lacks {missing}"
    return ""


def _alembic(conn: Connection, action: str, revision: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = conn
    getattr(command, action)(config, revision)


def _check_legacy(conn: Connection, state: SchemaState) -> None:
    """A database without a version table must hold the baseline's tables and columns to be stamped."""
    lacking = _lacking(conn, _baseline_columns())
    if lacking:
        raise SchemaError(
            f"the database {state.where} has synclab tables, but {lacking}: it was made by a synclab older "
            "than 0.1.0 and cannot be upgraded; use a new database"
        )


@functools.cache
def _baseline_columns() -> dict[str, frozenset[str]]:
    """The baseline's tables and columns, read from the baseline itself built in memory."""
    engine = create_engine("sqlite://", poolclass=NullPool)
    with engine.begin() as conn:
        _alembic(conn, "upgrade", BASELINE)
        have = inspect(conn)
        return {
            t: frozenset(c["name"] for c in have.get_columns(t)) for t in have.get_table_names() if t != VERSION_TABLE
        }


@contextlib.contextmanager
def _locked(engine: Engine) -> Iterator[Connection]:
    """A connection in a transaction that holds the schema lock until it commits."""
    if engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        migrating = _sqlite_migration_engine(engine)
        try:
            with migrating.connect() as conn, conn.begin():
                yield conn
                problems = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                if problems:
                    raise SchemaError(f"the migration broke foreign keys (rolled back): {problems[:5]}")
        finally:
            migrating.dispose()
        return
    with engine.connect() as conn, conn.begin():
        if engine.dialect.name == "postgresql":
            # per schema: changes of one schema take turns; a database's other schemas (other
            # labs, other clusters, the test suite's) need not wait for them
            conn.execute(text("SELECT pg_advisory_xact_lock(:key, hashtext(current_schema()))"), {"key": SCHEMA_LOCK})
        yield conn


def _sqlite_migration_engine(engine: Engine) -> Engine:
    """An engine on the same SQLite file whose transactions take the write lock at once.

    The driver is left in autocommit and SQLAlchemy's ``BEGIN`` becomes ``BEGIN IMMEDIATE``, so
    DDL runs inside the transaction (pysqlite otherwise commits before it) and a second process
    waits for the first (``busy_timeout``). Foreign keys are off, as SQLite asks while a table is
    rebuilt; :func:`_locked` checks them before the commit.
    """
    migrating = create_engine(
        engine.url,
        json_serializer=json_dumps,
        json_deserializer=json_loads,
        connect_args={"timeout": 30},
        poolclass=NullPool,
    )

    @event.listens_for(migrating, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=OFF")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(migrating, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return migrating
