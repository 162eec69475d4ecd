"""The one module that speaks SQL.

Every function here is synchronous and runs on a worker thread (:class:`Database` hands reads
to an executor and writes to its writer thread), never on the event loop. Writes of events go
through :func:`commit_writes`, called on the writer thread with many writes at once: one
transaction, one ``executemany`` per table, of statements compiled once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import secrets
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson
from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Engine,
    and_,
    bindparam,
    create_engine,
    event,
    func,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.schema import CreateIndex, CreateTable
from sqlmodel import SQLModel

from groups import Phase, current_block

from . import models
from .exceptions import SchemaError, SettingsError
from .writing import WriterThread

log = logging.getLogger("synclab.database")

T = TypeVar("T")

_tables = SQLModel.metadata.tables
experiments = _tables[models.Experiment.__tablename__]
blocks = _tables[models.Block.__tablename__]
participants = _tables[models.Participant.__tablename__]
groups = _tables[models.Group.__tablename__]
memberships = _tables[models.Membership.__tablename__]
connections = _tables[models.Connection.__tablename__]
events = _tables[models.Event.__tablename__]
meta = _tables[models.Meta.__tablename__]
sessions = _tables[models.Session.__tablename__]
results = _tables[models.Result.__tablename__]
ticks = _tables[models.Tick.__tablename__]


# --------------------------------------------------------------------------- time


def to_datetime(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC)


def to_epoch(value: datetime | None) -> float | None:
    if value is None:
        return None
    if value.tzinfo is None:  # SQLite hands back naive values; we only ever store UTC
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


def iso(value: datetime | None) -> str | None:
    """A stored time as ISO 8601 UTC with microseconds, as the REST API gives it."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


# --------------------------------------------------------------------------- engine and schema


def _json_dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def _json_loads(value: Any) -> Any:
    # SQLite gives a JSON column NUMERIC affinity: a stored "0.5" comes back as the float 0.5
    return orjson.loads(value) if isinstance(value, str | bytes) else value


def normalise_url(url: str) -> URL:
    """``postgresql://`` means psycopg 3 here; anything else is passed to SQLAlchemy as given."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def make_engine(url: str, **options: Any) -> Engine:
    parsed = normalise_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(
            parsed,
            json_serializer=_json_dumps,
            json_deserializer=_json_loads,
            connect_args={"check_same_thread": False, "timeout": 30},
            **options,
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(
        parsed,
        json_serializer=_json_dumps,
        json_deserializer=_json_loads,
        pool_pre_ping=True,
        pool_size=8,
        **options,
    )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL: readers never block the writer. synchronous=FULL: a commit survives power loss;
    # the writer's group commit pays one fsync per batch, not per event.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    # no checkpoint inside a commit (it stalled the writer for hundreds of ms under load):
    # Database.checkpoint copies the WAL back into the database off the writer thread
    cursor.execute("PRAGMA wal_autocheckpoint=0")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


_SCHEMA_LOCK = 0x5C1AB  # PostgreSQL advisory lock key for schema creation


def create_schema(engine: Engine) -> None:
    """Create every table and index that is missing; safe when processes start together.

    Each statement is ``IF NOT EXISTS``; on PostgreSQL an advisory lock also serialises the
    whole run, since concurrent ``CREATE TABLE IF NOT EXISTS`` can still collide there.
    """
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK})
        for table in SQLModel.metadata.sorted_tables:
            conn.execute(CreateTable(table, if_not_exists=True))
            for index in sorted(table.indexes, key=lambda i: str(i.name)):
                conn.execute(CreateIndex(index, if_not_exists=True))
        stored = inspect(conn)
        for table in SQLModel.metadata.sorted_tables:
            have = {c["name"] for c in stored.get_columns(table.name)}
            missing = [c.name for c in table.columns if c.name not in have]
            if missing:
                raise SchemaError(
                    f"the database {engine.url.render_as_string(hide_password=True)} was made by an older synclab: "
                    f"table {table.name!r} lacks {missing}. There are no migrations yet; use a new database."
                )


# --------------------------------------------------------------------------- meta


@contextmanager
def reading(url: str) -> Iterator[Engine]:
    """An engine on an existing database, for the commands that only read (export, verify).

    A SQLite file that does not exist is a :class:`SettingsError`, never created; a database
    error while reading becomes one too, naming the database without its password.
    """
    parsed = make_url(url)
    path = parsed.database or ""
    local = parsed.get_backend_name() == "sqlite" and path not in ("", ":memory:") and not path.startswith("file:")
    if local and not os.path.exists(path):
        raise SettingsError(f"DATABASE_URL: no SQLite database at {path!r}")
    engine = make_engine(url)
    try:
        yield engine
    except SQLAlchemyError as exc:
        where = engine.url.render_as_string(hide_password=True)
        raise SettingsError(f"cannot read the database {where}: {exc.__cause__ or exc}") from exc
    finally:
        engine.dispose()


def stored_meta(engine: Engine, key: str) -> str | None:
    """The stored value of ``key``, or ``None``; never creates it."""
    with engine.connect() as conn:
        value = conn.execute(select(meta.c.value).where(meta.c.key == key)).scalar()
        return None if value is None else str(value)


def get_or_create_meta(engine: Engine, key: str, make: Callable[[], str]) -> tuple[str, bool]:
    """The stored value of ``key``, creating it with ``make()`` when absent: ``(value, created)``."""
    with engine.begin() as conn:
        row = conn.execute(select(meta.c.value).where(meta.c.key == key)).first()
        if row is not None:
            return str(row[0]), False
        value = make()
        try:
            with conn.begin_nested():
                conn.execute(insert(meta).values(key=key, value=value))
        except IntegrityError:  # another process created it first: use theirs
            stored = conn.execute(select(meta.c.value).where(meta.c.key == key)).scalar_one()
            return str(stored), False
        return value, True


# --------------------------------------------------------------------------- experiments


@dataclass(slots=True)
class NewBlock:
    index: int
    period_length: float | None
    num_subperiods: int | None
    rate_limit: float | None
    bonus_points: float
    matching: str
    #: participant indexes per group, in member order
    groups: list[list[int]]


@dataclass(slots=True)
class NewExperiment:
    code: str
    game: str
    config: dict[str, Any]
    group_size: int
    participant_codes: list[str]
    blocks: list[NewBlock]
    created_at: float
    block_pause: float = 5.0


def insert_experiment(engine: Engine, spec: NewExperiment) -> int:
    """Store an experiment with its blocks, participants and groups; returns its id."""
    with engine.begin() as conn:
        experiment_id = conn.execute(
            insert(experiments)
            .values(
                code=spec.code,
                game=spec.game,
                status="pending",
                config=spec.config,
                num_participants=len(spec.participant_codes),
                group_size=spec.group_size,
                num_blocks=len(spec.blocks),
                block_pause=spec.block_pause,
                created_at=to_datetime(spec.created_at),
                last_seq=0,
            )
            .returning(experiments.c.id)
        ).scalar_one()
        participant_ids = [
            conn.execute(
                insert(participants)
                .values(experiment_id=experiment_id, code=code, label=f"P{i + 1}", index=i)
                .returning(participants.c.id)
            ).scalar_one()
            for i, code in enumerate(spec.participant_codes)
        ]
        for block in spec.blocks:
            block_id = conn.execute(
                insert(blocks)
                .values(
                    experiment_id=experiment_id,
                    index=block.index,
                    period_length=block.period_length,
                    num_subperiods=block.num_subperiods,
                    rate_limit=block.rate_limit,
                    bonus_points=block.bonus_points,
                    matching=block.matching,
                    status="pending",
                )
                .returning(blocks.c.id)
            ).scalar_one()
            for g, members in enumerate(block.groups):
                group_id = conn.execute(
                    insert(groups)
                    .values(
                        experiment_id=experiment_id, block_id=block_id, index=g, phase="waiting", subperiod=0, last_seq=0
                    )
                    .returning(groups.c.id)
                ).scalar_one()
                conn.execute(
                    insert(memberships),
                    [
                        {"group_id": group_id, "participant_id": participant_ids[p], "block_id": block_id, "position": pos}
                        for pos, p in enumerate(members)
                    ],
                )
                # every session is planned with its group: unstarted until the period starts
                conn.execute(
                    insert(sessions),
                    [
                        {
                            "experiment_id": experiment_id,
                            "participant_id": participant_ids[p],
                            "block_id": block_id,
                            "group_id": group_id,
                            "json_data": {},
                            "final_score": 0.0,
                        }
                        for p in members
                    ],
                )
        return int(experiment_id)


def experiment_row(engine: Engine, code: str) -> dict[str, Any] | None:
    with engine.connect() as conn:
        row = conn.execute(select(experiments).where(experiments.c.code == code)).mappings().first()
        return None if row is None else dict(row)


def participant_game(engine: Engine, code: str) -> str | None:
    """The game of participant ``code``'s experiment, or ``None`` for an unknown code."""
    with engine.connect() as conn:
        game = conn.execute(
            select(experiments.c.game)
            .join(participants, participants.c.experiment_id == experiments.c.id)
            .where(participants.c.code == code)
        ).scalar_one_or_none()
        return None if game is None else str(game)


def count_experiments(engine: Engine, status: str | None) -> int:
    query = select(func.count()).select_from(experiments)
    if status is not None:
        query = query.where(experiments.c.status == status)
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def list_experiments(engine: Engine, status: str | None, offset: int, limit: int) -> list[dict[str, Any]]:
    """Experiments, the newest first."""
    query = select(experiments).order_by(experiments.c.id.desc()).offset(offset).limit(limit)
    if status is not None:
        query = query.where(experiments.c.status == status)
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]


def experiment_participants(engine: Engine, experiment_id: int) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(participants.c.code, participants.c.label, participants.c.index)
            .where(participants.c.experiment_id == experiment_id)
            .order_by(participants.c.index)
        ).mappings()
        return [dict(r) for r in rows]


# --------------------------------------------------------------------------- a participant's seat


@dataclass(slots=True)
class GroupSpec:
    """Everything a live group is built from: its experiment, block, members and stored state."""

    group_id: int
    group_index: int
    experiment_id: int
    experiment_code: str
    experiment_status: str
    game: str
    config: dict[str, Any]
    block_id: int
    block_index: int
    num_blocks: int
    block_pause: float
    period_length: float | None
    num_subperiods: int | None
    rate_limit: float | None
    bonus_points: float
    #: member codes in order, their participant ids, and their sessions in this block
    members: list[str]
    member_ids: dict[str, int]
    session_ids: dict[str, int]
    #: the ``groups`` row
    group: dict[str, Any]
    #: the group's last ``state`` event: ``{"seq", "ts", "value"}``
    last_state: dict[str, Any] | None

    @property
    def last_block(self) -> bool:
        return self.block_index >= self.num_blocks - 1


@dataclass(slots=True)
class Seat:
    """Who a connecting participant is, and the group it is in now."""

    participant_id: int
    participant_code: str
    experiment_id: int
    group_id: int


def load_group(engine: Engine, group_id: int) -> GroupSpec | None:
    with engine.connect() as conn:
        return _group_spec(conn, group_id)


def _group_spec(conn: Connection, group_id: int) -> GroupSpec | None:
    row = conn.execute(
        select(
            groups,
            blocks.c.index.label("block_index"),
            blocks.c.period_length,
            blocks.c.num_subperiods,
            blocks.c.rate_limit,
            blocks.c.bonus_points,
        )
        .join(blocks, blocks.c.id == groups.c.block_id)
        .where(groups.c.id == group_id)
    ).mappings().first()
    if row is None:
        return None
    exp = conn.execute(select(experiments).where(experiments.c.id == row["experiment_id"])).mappings().one()
    members = conn.execute(
        select(participants.c.code, participants.c.id, sessions.c.id)
        .join(memberships, memberships.c.participant_id == participants.c.id)
        .join(
            sessions,
            and_(sessions.c.participant_id == participants.c.id, sessions.c.block_id == memberships.c.block_id),
        )
        .where(memberships.c.group_id == group_id)
        .order_by(memberships.c.position)
    ).all()
    state = conn.execute(last_state_query(group_id)).first()
    return GroupSpec(
        group_id=group_id,
        group_index=row["index"],
        experiment_id=exp["id"],
        experiment_code=exp["code"],
        experiment_status=exp["status"],
        game=exp["game"],
        config=exp["config"] or {},
        block_id=row["block_id"],
        block_index=row["block_index"],
        num_blocks=exp["num_blocks"],
        block_pause=float(exp["block_pause"] or 0.0),
        period_length=row["period_length"],
        num_subperiods=row["num_subperiods"],
        rate_limit=row["rate_limit"],
        bonus_points=float(row["bonus_points"] or 0.0),
        members=[m[0] for m in members],
        member_ids={m[0]: m[1] for m in members},
        session_ids={m[0]: m[2] for m in members},
        group=dict(row),
        last_state=None if state is None else {"seq": state[0], "ts": to_epoch(state[1]), "value": state[2]},
    )


def last_state_query(group_id: int) -> Any:
    """The group's last ``state`` event: ``seq, timestamp, value``.

    Its condition on the channel is the partial index's own text (``models.STATE_ONLY``), not
    a bound parameter, so the database can use ``ix_events_group_state``.
    """
    return (
        select(events.c.seq, events.c.timestamp, events.c.value)
        .where(and_(events.c.group_id == group_id, text(models.STATE_ONLY)))
        .order_by(events.c.seq.desc())
        .limit(1)
    )


def load_seat(engine: Engine, code: str, now: float) -> Seat | None:
    """The participant ``code``'s group at ``now`` (see :func:`groups.current_block`)."""
    with engine.connect() as conn:
        me = conn.execute(
            select(participants.c.id, participants.c.experiment_id, experiments.c.block_pause)
            .join(experiments, experiments.c.id == participants.c.experiment_id)
            .where(participants.c.code == code)
        ).first()
        if me is None:
            return None
        participant_id, experiment_id, block_pause = me
        rows = conn.execute(
            select(groups.c.id, groups.c.phase, groups.c.ended_at)
            .join(memberships, memberships.c.group_id == groups.c.id)
            .join(blocks, blocks.c.id == groups.c.block_id)
            .where(memberships.c.participant_id == participant_id)
            .order_by(blocks.c.index)
        ).all()
        index = current_block([(Phase(r[1]), to_epoch(r[2])) for r in rows], now, float(block_pause or 0.0))
        return Seat(participant_id, code, experiment_id, rows[index][0])


def client_ids(engine: Engine, participant_id: int) -> dict[str, int]:
    """Every client frame id this participant sent that is stored, with its ``seq``."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(events.c.client_id, events.c.seq).where(
                and_(events.c.participant_id == participant_id, events.c.client_id.is_not(None))
            )
        )
        return {str(cid): int(seq) for cid, seq in rows}


# --------------------------------------------------------------------------- the writer's batch


@dataclass(slots=True)
class NewEvent:
    channel: str
    value: Any
    timestamp: float
    group_id: int | None = None
    participant_id: int | None = None
    client_id: str | None = None


@dataclass(slots=True)
class GroupUpdate:
    group_id: int
    phase: str
    started_at: float | None
    ends_at: float | None
    ended_at: float | None
    subperiod: int
    decisions: dict[str, Any]
    vars: dict[str, Any]
    clock: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class NewResult:
    """A scored outcome, stored with the ``result`` event at ``event`` (an index in the write)."""

    event: int
    session_id: int
    subperiod: int | None
    decision: Any
    score: float


@dataclass(slots=True)
class NewTick:
    group_id: int
    kind: str
    index: int
    scheduled_at: float
    actual_at: float
    late: bool
    snapshot: dict[str, Any] | None


@dataclass(slots=True)
class ConnectionChange:
    """A connection opened (``opened`` set) or closed (``closed`` set)."""

    id: str
    participant_id: int
    experiment_id: int
    opened: float | None = None
    closed: float | None = None
    user_agent: str | None = None
    address: str | None = None
    route: str = "synclab"
    close_code: int | None = None


@dataclass(slots=True, eq=False)
class Write:
    """One unit the writer commits: events that get consecutive ``seq``s, and state to store."""

    experiment_id: int
    events: list[NewEvent] = field(default_factory=list)
    group: GroupUpdate | None = None
    connection: ConnectionChange | None = None
    results: list[NewResult] = field(default_factory=list)
    ticks: list[NewTick] = field(default_factory=list)
    #: set by :func:`commit_writes`: the ``seq`` of each event, in order
    seqs: list[int] = field(default_factory=list)


class _Prepared:
    """A statement compiled once for a dialect and run on the DBAPI cursor, many rows at a time.

    The writer's hot path: SQLAlchemy's per-execution work (the cache key, a dict per row, a
    bind processor called on every value) cost most of a batch. Here a row is a tuple in
    ``columns`` order, and its times and JSON values are already what the driver takes (the
    caller passes them through :attr:`_BatchStatements.time` and :attr:`_BatchStatements.json`,
    SQLAlchemy's own processing, so what is stored is the same). Any other column type with a
    bind processor (a boolean on SQLite, say) is processed here.
    """

    __slots__ = ("columns", "named", "order", "processed", "sql")

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
            if not isinstance(bind.type, DateTime | JSON)
            and (process := bind.type.dialect_impl(dialect).bind_processor(dialect)) is not None
        ]

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
        else:
            cursor.executemany(self.sql, driver_rows)

    def one(self, cursor: Any, row: tuple[Any, ...]) -> Any:
        """Run once and return the first column of the one row it returns.

        Every row is read (``fetchall``, not ``fetchone``): on SQLite a statement not run to
        its end stays active until the next batch and holds the write-ahead log back from
        starting over (see :meth:`Database.checkpoint`).
        """
        cursor.execute(self.sql, self._driver_rows([row])[0])
        return cursor.fetchall()[0][0]


class _StoredTimes:
    """Epoch seconds to what the driver takes for a time column, remembered.

    A batch repeats a few times many times over (every event of a write has the write's time,
    every state update the period's start and end), and turning each into a ``datetime`` and
    then, on SQLite, into text was the largest part of the writer's Python work.
    """

    __slots__ = ("_known", "_process")

    LIMIT = 4096

    def __init__(self, dialect: Any) -> None:
        self._process = DateTime(timezone=True).dialect_impl(dialect).bind_processor(dialect)
        self._known: dict[float, Any] = {}

    def __call__(self, epoch: float | None) -> Any:
        if epoch is None:
            return None
        stored = self._known.get(epoch)
        if stored is None:
            value = datetime.fromtimestamp(epoch, UTC)
            stored = value if self._process is None else self._process(value)
            if len(self._known) >= self.LIMIT:
                self._known.clear()
            self._known[epoch] = stored
        return stored


class _BatchStatements:
    """The statements of :func:`commit_writes`, compiled once per engine, and their value converters."""

    def __init__(self, dialect: Any) -> None:
        def prepare(statement: Any, columns: Sequence[str]) -> _Prepared:
            return _Prepared(statement, dialect, columns)

        def inserting(table: Any, columns: Sequence[str]) -> _Prepared:
            return prepare(insert(table).inline().values({c: bindparam(c) for c in columns}), columns)

        #: a time (epoch seconds) as the driver takes it
        self.time = _StoredTimes(dialect)
        #: a JSON value as the driver takes it (SQLAlchemy's processor, with the engine's serializer)
        self.json: Callable[[Any], Any] = JSON().dialect_impl(dialect).bind_processor(dialect) or (lambda v: v)
        self.next_seq = prepare(
            update(experiments)
            .where(experiments.c.id == bindparam("eid"))
            .values(last_seq=experiments.c.last_seq + bindparam("count", type_=BigInteger))
            .returning(experiments.c.last_seq),
            ("eid", "count"),
        )
        self.events = inserting(events, _EVENT_COLUMNS)
        self.results = inserting(results, _RESULT_COLUMNS)
        self.ticks = inserting(ticks, _TICK_COLUMNS)
        self.opened = inserting(connections, _CONNECTION_COLUMNS)
        self.closed = prepare(
            update(connections)
            .where(connections.c.id == bindparam("cid"))
            .values(disconnected_at=bindparam("disconnected_at"), close_code=bindparam("close_code")),
            ("cid", "disconnected_at", "close_code"),
        )
        self.group = prepare(
            update(groups)
            .where(groups.c.id == bindparam("gid"))
            .values({
                **{c: bindparam(c) for c in _GROUP_COLUMNS},
                "last_seq": func.coalesce(bindparam("last_seq", type_=BigInteger), groups.c.last_seq),
            }),
            (*_GROUP_COLUMNS, "last_seq", "gid"),
        )


_EVENT_COLUMNS = ("experiment_id", "seq", "timestamp", "group_id", "participant_id", "channel", "value", "client_id")
_RESULT_COLUMNS = ("session_id", "experiment_id", "seq", "subperiod", "decision", "score")
_TICK_COLUMNS = ("group_id", "kind", "index", "scheduled_at", "actual_at", "late", "snapshot")
_CONNECTION_COLUMNS = ("id", "participant_id", "experiment_id", "connected_at", "user_agent", "address", "route")
_GROUP_COLUMNS = ("phase", "started_at", "ends_at", "ended_at", "subperiod", "decisions", "vars", "clock")
_batch_statements: weakref.WeakKeyDictionary[Engine, _BatchStatements] = weakref.WeakKeyDictionary()


def _statements(engine: Engine) -> _BatchStatements:
    prepared = _batch_statements.get(engine)
    if prepared is None:
        prepared = _batch_statements[engine] = _BatchStatements(engine.dialect)
    return prepared


def commit_writes(conn: Connection, writes: Sequence[Write]) -> None:
    """Commit ``writes`` in one transaction on ``conn``, giving each event its ``seq``.

    ``seq`` is taken from ``experiments.last_seq`` inside the transaction, so it is strictly
    increasing and gap-free per experiment even with several writer processes: a failed batch
    rolls its numbers back with everything else.
    """
    sql = _statements(conn.engine)
    counts: dict[int, int] = {}
    for write in writes:
        if write.events:
            counts[write.experiment_id] = counts.get(write.experiment_id, 0) + len(write.events)
    with conn.begin():
        cursor = conn.connection.cursor()
        try:
            next_seq: dict[int, int] = {}
            for experiment_id, count in sorted(counts.items()):  # sorted: a fixed lock order
                last = sql.next_seq.one(cursor, (experiment_id, count))
                next_seq[experiment_id] = int(last) - count + 1
            rows: list[tuple[Any, ...]] = []
            starting: dict[int, float] = {}
            started: list[tuple[int, float | None]] = []
            ended: list[tuple[int, int, float | None]] = []
            time, as_json = sql.time, sql.json
            for write in writes:
                seq = next_seq.get(write.experiment_id, 0)
                write.seqs = list(range(seq, seq + len(write.events)))
                next_seq[write.experiment_id] = seq + len(write.events)
                for ev, s in zip(write.events, write.seqs, strict=True):
                    rows.append((
                        write.experiment_id,
                        s,
                        time(ev.timestamp),
                        ev.group_id,
                        ev.participant_id,
                        ev.channel,
                        as_json(ev.value),
                        ev.client_id,
                    ))
                    if ev.channel == "state" and ev.group_id is not None:
                        g = write.group
                        if ev.value == "period_start":
                            starting.setdefault(write.experiment_id, ev.timestamp)
                            started.append((ev.group_id, g.started_at if g else ev.timestamp))
                        elif ev.value == "period_end":
                            ended.append((write.experiment_id, ev.group_id, g.ended_at if g else ev.timestamp))
            sql.events.run(cursor, rows)
            _store_group_states(cursor, sql, writes)
            _store_connections(cursor, sql, [w.connection for w in writes if w.connection is not None])
            _store_results(cursor, sql, writes)
        finally:
            cursor.close()
        for experiment_id, at in starting.items():
            conn.execute(
                update(experiments)
                .where(and_(experiments.c.id == experiment_id, experiments.c.status == "pending"))
                .values(status="running", started_at=to_datetime(at))
            )
        for group_id, started_at in started:
            _period_started(conn, group_id, started_at)
        for experiment_id, group_id, ended_at in ended:
            _period_ended(conn, experiment_id, group_id, ended_at)


def _store_results(cursor: Any, sql: _BatchStatements, writes: Sequence[Write]) -> None:
    sql.results.run(cursor, [
        (r.session_id, w.experiment_id, w.seqs[r.event], r.subperiod, sql.json(r.decision), r.score)
        for w in writes
        for r in w.results
    ])
    sql.ticks.run(cursor, [
        (t.group_id, t.kind, t.index, sql.time(t.scheduled_at), sql.time(t.actual_at), t.late, sql.json(t.snapshot))
        for w in writes
        for t in w.ticks
    ])


def _period_started(conn: Connection, group_id: int, at: float | None) -> None:
    conn.execute(
        update(sessions)
        .where(and_(sessions.c.group_id == group_id, sessions.c.started_at.is_(None)))
        .values(started_at=to_datetime(at))
    )
    block_id = select(groups.c.block_id).where(groups.c.id == group_id).scalar_subquery()
    conn.execute(
        update(blocks).where(and_(blocks.c.id == block_id, blocks.c.status == "pending")).values(status="running")
    )


def _period_ended(conn: Connection, experiment_id: int, group_id: int, at: float | None) -> None:
    """Finish the group's sessions (final_score = bonus + Σ results); close its block and experiment when all ended."""
    total = (
        select(func.coalesce(func.sum(results.c.score), 0.0))
        .where(results.c.session_id == sessions.c.id)
        .scalar_subquery()
    )
    bonus = select(blocks.c.bonus_points).where(blocks.c.id == sessions.c.block_id).scalar_subquery()
    conn.execute(
        update(sessions)
        .where(and_(sessions.c.group_id == group_id, sessions.c.started_at.is_not(None)))
        .values(finished_at=to_datetime(at), final_score=bonus + total)
    )
    block_id = conn.execute(select(groups.c.block_id).where(groups.c.id == group_id)).scalar_one()
    others = select(groups.c.id).where(and_(groups.c.block_id == block_id, groups.c.phase != "ended")).exists()
    conn.execute(update(blocks).where(and_(blocks.c.id == block_id, ~others)).values(status="done"))
    unfinished = (
        select(groups.c.id).where(and_(groups.c.experiment_id == experiment_id, groups.c.phase != "ended")).exists()
    )
    conn.execute(
        update(experiments)
        .where(and_(experiments.c.id == experiment_id, experiments.c.status.in_(("pending", "running")), ~unfinished))
        .values(status="done", finished_at=to_datetime(at))
    )


def _store_group_states(cursor: Any, sql: _BatchStatements, writes: Iterable[Write]) -> None:
    """Each group's state after its last write of the batch (one row per group)."""
    latest: dict[int, tuple[GroupUpdate, int | None]] = {}
    for write in writes:
        if write.group is not None:
            last = write.seqs[-1] if write.seqs else None
            previous = latest.get(write.group.group_id)
            if last is None and previous is not None:
                last = previous[1]
            latest[write.group.group_id] = (write.group, last)
    time, as_json = sql.time, sql.json
    sql.group.run(cursor, [
        (
            g.phase,
            time(g.started_at),
            time(g.ends_at),
            time(g.ended_at),
            g.subperiod,
            as_json(g.decisions),
            as_json(g.vars),
            as_json(g.clock),
            last,
            g.group_id,
        )
        for g, last in latest.values()
    ])


def _store_connections(cursor: Any, sql: _BatchStatements, changes: Sequence[ConnectionChange]) -> None:
    sql.opened.run(cursor, [
        (
            c.id,
            c.participant_id,
            c.experiment_id,
            sql.time(c.opened),
            (c.user_agent or "")[:512] or None,
            c.address,
            c.route,
        )
        for c in changes
        if c.opened is not None
    ])
    sql.closed.run(cursor, [
        (c.id, sql.time(c.closed), c.close_code)
        for c in changes
        if c.closed is not None
    ])


# --------------------------------------------------------------------------- reading events


def count_events(engine: Engine, experiment_id: int, after_seq: int) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                select(func.count())
                .select_from(events)
                .where(and_(events.c.experiment_id == experiment_id, events.c.seq > after_seq))
            ).scalar_one()
        )


def list_events(engine: Engine, experiment_id: int, after_seq: int, offset: int, limit: int) -> list[dict[str, Any]]:
    """Events of an experiment in ``seq`` order, with participant codes and group ids."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                events.c.seq,
                events.c.timestamp,
                events.c.group_id,
                participants.c.code.label("participant"),
                events.c.channel,
                events.c.value,
            )
            .select_from(events.outerjoin(participants, participants.c.id == events.c.participant_id))
            .where(and_(events.c.experiment_id == experiment_id, events.c.seq > after_seq))
            .order_by(events.c.seq)
            .offset(offset)
            .limit(limit)
        ).mappings()
        return [
            {
                "seq": r["seq"],
                "timestamp": iso(r["timestamp"]),
                "group": r["group_id"],
                "participant": r["participant"],
                "channel": r["channel"],
                "value": r["value"],
            }
            for r in rows
        ]


# --------------------------------------------------------------------------- groups to resume or control


def live_group_ids(engine: Engine) -> list[int]:
    """Groups whose period runs or is paused, in experiments still going: resumed at start-up."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(groups.c.id)
            .join(experiments, experiments.c.id == groups.c.experiment_id)
            .where(and_(groups.c.phase.in_(("running", "paused")), experiments.c.status.in_(("pending", "running"))))
            .order_by(groups.c.id)
        )
        return [int(r[0]) for r in rows]


@dataclass(slots=True)
class GroupPlace:
    """A group of an experiment, for choosing which ones an experimenter's action touches."""

    group_id: int
    block_index: int
    phase: Phase
    ended_at: float | None
    members: list[int]


def experiment_groups(engine: Engine, experiment_id: int) -> list[GroupPlace]:
    """Every group of an experiment in block order, with its members' participant ids."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(groups.c.id, blocks.c.index, groups.c.phase, groups.c.ended_at, memberships.c.participant_id)
            .join(blocks, blocks.c.id == groups.c.block_id)
            .join(memberships, memberships.c.group_id == groups.c.id)
            .where(groups.c.experiment_id == experiment_id)
            .order_by(blocks.c.index, groups.c.index, memberships.c.position)
        ).all()
    places: dict[int, GroupPlace] = {}
    for gid, block_index, phase, ended_at, pid in rows:
        place = places.get(gid)
        if place is None:
            place = places[gid] = GroupPlace(gid, block_index, Phase(phase), to_epoch(ended_at), [])
        place.members.append(pid)
    return list(places.values())


def set_experiment_status(engine: Engine, experiment_id: int, status: str, at: float | None = None) -> None:
    with engine.begin() as conn:
        values: dict[str, Any] = {"status": status}
        if at is not None:
            values["finished_at"] = to_datetime(at)
        conn.execute(update(experiments).where(experiments.c.id == experiment_id).values(**values))


# --------------------------------------------------------------------------- sessions and results


def session_query() -> Any:
    return (
        select(
            sessions.c.id,
            participants.c.code.label("participant"),
            blocks.c.index.label("block"),
            sessions.c.group_id.label("group"),
            sessions.c.started_at,
            sessions.c.finished_at,
            sessions.c.final_score,
            sessions.c.json_data,
        )
        .join(participants, participants.c.id == sessions.c.participant_id)
        .join(blocks, blocks.c.id == sessions.c.block_id)
    )


def session_row(r: Any) -> dict[str, Any]:
    return {
        "participant": r["participant"],
        "block": r["block"],
        "group": r["group"],
        "started_at": iso(r["started_at"]),
        "finished_at": iso(r["finished_at"]),
        "final_score": r["final_score"],
        "json_data": r["json_data"] or {},
    }


def results_by_session(conn: Connection, session_ids: list[int], upto_seq: int | None = None) -> dict[int, list[dict[str, Any]]]:
    """The results of these sessions (up to ``upto_seq``) in scoring order: ``subperiod, decision, score, seq``."""
    if not session_ids:
        return {}
    query = select(results.c.session_id, results.c.subperiod, results.c.decision, results.c.score, results.c.seq)
    query = query.where(results.c.session_id.in_(session_ids))
    if upto_seq is not None:
        query = query.where(results.c.seq <= upto_seq)
    by_session: dict[int, list[dict[str, Any]]] = {}
    for r in conn.execute(query.order_by(results.c.seq)).mappings():
        by_session.setdefault(r["session_id"], []).append(
            {"subperiod": r["subperiod"], "decision": r["decision"], "score": r["score"], "seq": r["seq"]}
        )
    return by_session


def count_rows(engine: Engine, table_name: str, experiment_id: int) -> int:
    table = {"sessions": sessions, "results": results}[table_name]
    with engine.connect() as conn:
        return int(
            conn.execute(
                select(func.count()).select_from(table).where(table.c.experiment_id == experiment_id)
            ).scalar_one()
        )


def list_sessions(engine: Engine, experiment_id: int, offset: int, limit: int) -> list[dict[str, Any]]:
    """Sessions in block order, then participant order."""
    with engine.connect() as conn:
        rows = conn.execute(
            session_query()
            .where(sessions.c.experiment_id == experiment_id)
            .order_by(blocks.c.index, participants.c.index)
            .offset(offset)
            .limit(limit)
        ).mappings()
        return [session_row(r) for r in rows]


def list_results(
    engine: Engine, experiment_id: int, offset: int, limit: int, after_seq: int = 0, upto_seq: int | None = None
) -> list[dict[str, Any]]:
    """Results in the order they were scored (their ``result`` event's ``seq``), after ``after_seq`` and up to ``upto_seq``."""
    bounds = [results.c.experiment_id == experiment_id, results.c.seq > after_seq]
    if upto_seq is not None:
        bounds.append(results.c.seq <= upto_seq)
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                participants.c.code.label("participant"),
                blocks.c.index.label("block"),
                results.c.subperiod,
                results.c.decision,
                results.c.score,
                results.c.seq,
            )
            .select_from(results)
            .join(sessions, sessions.c.id == results.c.session_id)
            .join(participants, participants.c.id == sessions.c.participant_id)
            .join(blocks, blocks.c.id == sessions.c.block_id)
            .where(and_(*bounds))
            .order_by(results.c.seq)
            .offset(offset)
            .limit(limit)
        ).mappings()
        return [dict(r) for r in rows]


def list_ticks(engine: Engine, group_id: int) -> list[dict[str, Any]]:
    """A group's ticks in the order they were due, with scheduled and actual times (epoch seconds)."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(ticks).where(ticks.c.group_id == group_id).order_by(ticks.c.scheduled_at, ticks.c.kind.desc())
        ).mappings()
        return [
            {**dict(r), "scheduled_at": to_epoch(r["scheduled_at"]), "actual_at": to_epoch(r["actual_at"])}
            for r in rows
        ]


# --------------------------------------------------------------------------- one session (the MUSCLE helpers)


def find_session(engine: Engine, participant_code: str, block: int) -> dict[str, Any] | None:
    """The session of participant ``participant_code`` in block ``block`` (its index), with its block's bonus."""
    with engine.connect() as conn:
        row = conn.execute(
            session_query()
            .add_columns(sessions.c.block_id, blocks.c.bonus_points)
            .where(and_(participants.c.code == participant_code, blocks.c.index == block))
        ).mappings().first()
        if row is None:
            return None
        return {**session_row(row), "id": row["id"], "block_id": row["block_id"],
                "bonus_points": float(row["bonus_points"] or 0.0)}


def session_results(engine: Engine, session_id: int) -> list[dict[str, Any]]:
    """A session's results in the order they were scored."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(results.c.seq, results.c.subperiod, results.c.decision, results.c.score)
            .where(results.c.session_id == session_id)
            .order_by(results.c.seq)
        ).mappings()
        return [dict(r) for r in rows]


def block_final_scores(engine: Engine, block_id: int, finished_only: bool) -> list[float]:
    """The final scores of every session of a block (only finished ones if asked)."""
    with engine.connect() as conn:
        query = select(sessions.c.final_score).where(sessions.c.block_id == block_id)
        if finished_only:
            query = query.where(sessions.c.finished_at.is_not(None))
        return [float(r[0]) for r in conn.execute(query)]


def merge_session_json(engine: Engine, session_id: int, data: dict[str, Any]) -> dict[str, Any]:
    """Merge ``data`` into a session's ``json_data`` (its keys win) in one transaction; returns the result."""
    with engine.begin() as conn:
        current = conn.execute(
            select(sessions.c.json_data).where(sessions.c.id == session_id).with_for_update()
        ).scalar_one()
        merged = {**(current or {}), **data}
        conn.execute(update(sessions).where(sessions.c.id == session_id).values(json_data=merged))
        return merged


# --------------------------------------------------------------------------- async facade


class Database:
    """The engine, with a single writer thread and a small pool of reader threads."""

    def __init__(self, url: str, *, readers: int = 4) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.writer = WriterThread(self._commit, self._between_batches)
        self._readers = ThreadPoolExecutor(readers, thread_name_prefix="synclab-reader")
        self._checkpointer = ThreadPoolExecutor(1, thread_name_prefix="synclab-checkpoint")
        self.sqlite = self.engine.dialect.name == "sqlite"
        self._checkpointing: asyncio.Future[Any] | None = None
        #: set when a background checkpoint copied the whole log: the writer finishes the job
        self._log_copied = False
        #: the writer thread's own connection, kept open between batches (see :meth:`_commit`)
        self._writer_connection: Connection | None = None

    def checkpoint(self) -> asyncio.Future[Any] | None:
        """SQLite: copy the write-ahead log into the database on a thread of its own, once at a time.

        A passive checkpoint never blocks the writer; committed data is safe in the log either
        way. Returns the checkpoint under way (``None`` for another database).

        The log starts over from its beginning only when a write finds it copied to its last
        frame, and under steady load the writer has always added a few frames while the
        checkpoint ran: the file would grow without end (300 MB in ten seconds at 2,000
        decisions/s), and every commit would extend it, which makes its ``fdatasync`` about
        twice as slow as one that overwrites. So once a checkpoint here has copied the log,
        :meth:`_between_batches` has the writer copy the few frames added since.
        """
        if not self.sqlite:
            return None
        if self._checkpointing is None or self._checkpointing.done():
            loop = asyncio.get_running_loop()
            self._checkpointing = loop.run_in_executor(self._checkpointer, _checkpoint, self.engine)
            self._checkpointing.add_done_callback(self._checkpointed)
        return self._checkpointing

    def _checkpointed(self, future: asyncio.Future[Any]) -> None:
        if future.cancelled():
            return
        if future.exception() is not None:
            log.warning("WAL checkpoint failed: %s", future.exception())
            return
        busy, frames, copied = future.result()
        self._log_copied = not busy and frames == copied

    def _between_batches(self) -> None:
        """On the writer thread after each batch: once a checkpoint copied the log, finish it there.

        No other write can come in between, so this copy reaches the log's end and the next
        commit writes the log from its start again (see :meth:`checkpoint`). It is the few
        frames added since the checkpoint: well under a millisecond, once per checkpoint.
        """
        if not self._log_copied or self._writer_connection is None:
            return
        self._log_copied = False
        try:
            _wal_checkpoint(self._writer_connection, "PASSIVE")
        except Exception as exc:  # the commits are safe either way: only the log's reuse waits
            log.warning("WAL checkpoint on the writer failed: %s", exc)

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(engine, *args)`` on a reader thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, fn, self.engine, *args)

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(engine, *args)`` on the writer thread, in order with the event batches."""
        return await self.writer.call(functools.partial(fn, self.engine, *args))

    def _commit(self, writes: Sequence[Write]) -> None:
        """:func:`commit_writes` on the writer thread (see :mod:`server.writing`), over its own connection.

        A batch is a millisecond or so apart from the next: taking a connection from the pool
        and handing it back (with its reset) each time cost more than the batch's statements.
        A connection whose batch failed is dropped; the next batch opens a new one.
        """
        if self._writer_connection is None:
            self._writer_connection = self.engine.connect()
        try:
            commit_writes(self._writer_connection, writes)
        except BaseException:
            connection, self._writer_connection = self._writer_connection, None
            with contextlib.suppress(Exception):
                connection.invalidate()
            raise

    def _release_writer_connection(self) -> None:
        if self._writer_connection is not None:
            with contextlib.suppress(Exception):
                self._writer_connection.close()
            self._writer_connection = None

    def close(self) -> None:
        self.writer.stop(self._release_writer_connection)
        self._readers.shutdown(wait=True)
        self._checkpointer.shutdown(wait=True)
        if self.sqlite:
            with contextlib.suppress(Exception):
                _checkpoint(self.engine, "TRUNCATE")
        self.engine.dispose()


def _checkpoint(engine: Engine, mode: str = "PASSIVE") -> tuple[int, int, int]:
    with engine.connect() as conn:
        return _wal_checkpoint(conn, mode)


def _wal_checkpoint(conn: Connection, mode: str) -> tuple[int, int, int]:
    """``PRAGMA wal_checkpoint``: (1 if it could not finish, frames in the log, frames copied)."""
    cursor = conn.connection.cursor()  # the driver's: SQLAlchemy's would begin a transaction
    try:
        busy, frames, copied = cursor.execute(f"PRAGMA wal_checkpoint({mode})").fetchall()[0]
    finally:
        cursor.close()
    return int(busy), int(frames), int(copied)


def new_code(nbytes: int = 18) -> str:
    """An unguessable URL-safe code (``nbytes`` * 8 bits of randomness; 144 by default).

    Never starting with ``-``: a command line would read such a code as an option
    (``synclab verify -x…``); dropping those costs a 64th of the codes, not a bit of entropy
    worth having.
    """
    for _ in range(1000):
        code = secrets.token_urlsafe(nbytes)
        if not code.startswith("-"):
            return code
    raise RuntimeError("no code without a leading '-' in 1000 draws")  # (63/64)^-1000: never



# --------------------------------------------------------------------------- the monitor's snapshot


def monitor_state(engine: Engine, experiment_id: int) -> dict[str, Any]:
    """Blocks, groups (with members and state) and open connections, for a monitor's snapshot.

    ``last_seq`` is read first: every event after it reaches the monitor live, and the rows
    read after it may already include some of those (applying them again is harmless).
    """
    with engine.connect() as conn:
        last_seq = conn.execute(select(experiments.c.last_seq).where(experiments.c.id == experiment_id)).scalar_one()
        block_rows = conn.execute(
            select(blocks).where(blocks.c.experiment_id == experiment_id).order_by(blocks.c.index)
        ).mappings().all()
        by_block = {b["id"]: b for b in block_rows}
        group_rows = conn.execute(
            select(groups).where(groups.c.experiment_id == experiment_id).order_by(groups.c.block_id, groups.c.index)
        ).mappings().all()
        members: dict[int, list[str]] = {}
        for gid, code in conn.execute(
            select(memberships.c.group_id, participants.c.code)
            .join(participants, participants.c.id == memberships.c.participant_id)
            .where(participants.c.experiment_id == experiment_id)
            .order_by(memberships.c.group_id, memberships.c.position)
        ):
            members.setdefault(gid, []).append(code)
        agents = dict(
            conn.execute(
                select(participants.c.code, connections.c.user_agent)
                .join(participants, participants.c.id == connections.c.participant_id)
                .where(and_(connections.c.experiment_id == experiment_id, connections.c.disconnected_at.is_(None)))
                .order_by(connections.c.connected_at)
            ).all()
        )
    return {
        "last_seq": int(last_seq),
        "blocks": [
            {
                "index": b["index"],
                "period_length": b["period_length"],
                "num_subperiods": b["num_subperiods"],
                "rate_limit": b["rate_limit"],
                "bonus_points": b["bonus_points"],
                "matching": b["matching"],
                "status": b["status"],
            }
            for b in block_rows
        ],
        "groups": [
            {
                "id": g["id"],
                "block": by_block[g["block_id"]]["index"],
                "index": g["index"],
                "phase": g["phase"],
                "members": members.get(g["id"], []),
                "started_at": _ms(g["started_at"]),
                "ends_at": _ms(g["ends_at"]),
                "ended_at": _ms(g["ended_at"]),
                "subperiod": g["subperiod"],
                "num_subperiods": by_block[g["block_id"]]["num_subperiods"],
                "period_length": by_block[g["block_id"]]["period_length"],
                "decisions": g["decisions"] or {},
                "paused_at": _epoch_ms((g["clock"] or {}).get("paused_at")),
                "paused_by": (g["clock"] or {}).get("paused_by"),
            }
            for g in group_rows
        ],
        "user_agents": agents,
    }


def _ms(value: datetime | None) -> int | None:
    return _epoch_ms(to_epoch(value))


def _epoch_ms(epoch: float | None) -> int | None:
    return None if epoch is None else round(epoch * 1000)
