"""The writer's statements, compiled once per engine, and their value converters (see :mod:`.batch`)."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import JSON, BigInteger, Engine, bindparam, func, insert, select, update

from .engine import json_dumps
from .prepared import Prepared, StoredTimes
from .tables import client_ids, connections, events, experiments, groups, results, ticks


@dataclass(frozen=True, slots=True)
class SeqStatements:
    """The statements whose rows carry a ``seq``: events, groups' states, results, client ids."""

    events: Prepared
    group: Prepared
    results: Prepared
    client_ids: Prepared


class BatchStatements:
    """The statements of :func:`.batch.commit_writes`, compiled once per engine, and their value converters."""

    def __init__(self, dialect: Any) -> None:
        def prepare(statement: Any, columns: Sequence[str]) -> Prepared:
            return Prepared(statement, dialect, columns)

        def inserting(table: Any, columns: Sequence[str]) -> Prepared:
            return prepare(insert(table).inline().values({c: bindparam(c) for c in columns}), columns)

        #: a time (epoch seconds) as the driver takes it
        self.time = StoredTimes(dialect)
        #: a JSON value as the driver takes it: SQLAlchemy's processor, with the engine's
        #: serializer; on SQLite that processor is the serializer alone, called here directly
        self.json: Callable[[Any], Any] = (
            dialect._json_serializer if dialect.name == "sqlite" and dialect._json_serializer is not None
            else JSON().dialect_impl(dialect).bind_processor(dialect) or (lambda v: v)
        )
        #: a bool as the driver takes it, ``flag[value]``: on SQLite the integer it stores, which
        #: the driver binds at once (a bool it looks up as an adapter first, :mod:`.engine`: the
        #: journal's apply, two a decision, took 3,600 instructions a decision more), elsewhere
        #: the bool (PostgreSQL refuses an integer for a boolean column)
        self.flag: tuple[Any, Any] = (0, 1) if dialect.name == "sqlite" else (False, True)
        #: SQLite with synclab's serializer: :meth:`json_texts` makes its text itself
        self._orjson_text = dialect.name == "sqlite" and self.json is json_dumps
        self.next_seq = prepare(
            update(experiments)
            .where(experiments.c.id == bindparam("eid"))
            .values(last_seq=experiments.c.last_seq + bindparam("count", type_=BigInteger))
            .returning(experiments.c.last_seq),
            ("eid", "count"),
        )
        self._prepare = prepare
        self._fences: dict[int, Prepared] = {}
        self.ticks = inserting(ticks, _TICK_COLUMNS)
        self.opened = inserting(connections, _CONNECTION_COLUMNS)
        self.closed = prepare(
            update(connections)
            .where(connections.c.id == bindparam("cid"))
            .values(disconnected_at=bindparam("disconnected_at"), close_code=bindparam("close_code")),
            ("cid", "disconnected_at", "close_code"),
        )

        def seq_statements(seq: Callable[[Any, str], Any]) -> SeqStatements:
            """The statements that store a ``seq``, with the ``seq`` column's value ``seq(experiment id, bind name)``."""
            def inserting_with_seq(table: Any, columns: Sequence[str]) -> Prepared:
                values: dict[str, Any] = {c: bindparam(c) for c in columns}
                values["seq"] = seq(bindparam("experiment_id"), "seq")
                return prepare(insert(table).inline().values(values), columns)

            return SeqStatements(
                inserting_with_seq(events, _EVENT_COLUMNS),
                prepare(
                    update(groups)
                    .where(groups.c.id == bindparam("gid"))
                    .values({
                        **{c: bindparam(c) for c in _GROUP_COLUMNS},
                        "last_seq": func.coalesce(seq(groups.c.experiment_id, "last_seq"), groups.c.last_seq),
                    }),
                    (*_GROUP_COLUMNS, "last_seq", "gid"),
                ),
                inserting_with_seq(results, _RESULT_COLUMNS),
                inserting_with_seq(client_ids, _CLIENT_ID_COLUMNS),
            )

        #: the rows carry each ``seq`` itself
        self.numbered = seq_statements(lambda _experiment, name: bindparam(name, type_=BigInteger))
        #: SQLite: a batch without period changes or statuses is committed on the driver's own
        #: connection (:func:`.batch._commit_direct`)
        self.direct = dialect.name == "sqlite"
        #: PostgreSQL (psycopg): the rows carry how far below the experiment's raised counter
        #: each ``seq`` is, for :func:`.batch._commit_pipelined`
        self.pipelined: SeqStatements | None = None
        if dialect.name == "postgresql" and dialect.driver == "psycopg":
            self.pipelined = seq_statements(
                lambda experiment, name: select(experiments.c.last_seq).where(experiments.c.id == experiment)
                .scalar_subquery() - bindparam(name, type_=BigInteger)
            )

    def json_texts(self, values: Iterable[Any]) -> list[Any]:
        """Each value as :attr:`json` makes it, in one call for many: on SQLite with synclab's
        serializer, orjson's text as :func:`.engine.json_dumps` makes it, without that Python
        function's call per value (five a decision, some 700 instructions each, on the journal's apply)."""
        if self._orjson_text:
            dumps = orjson.dumps
            return [dumps(value).decode() for value in values]
        as_json = self.json
        return [as_json(value) for value in values]

    #: PostgreSQL: locks the rows of the groups in ``ids`` whose epoch is the one at the same
    #: place in ``epochs`` (in the groups' order, as :meth:`fence` does) and fails with a
    #: division by zero unless all ``n`` are: the fence of :func:`.batch._commit_pipelined`, in
    #: its pipeline. The division is by a count, not a constant, so the planner cannot fold it.
    FENCE_OR_FAIL = (
        "SELECT 1 / (count(*) = %(n)s)::int FROM ("
        "SELECT g.id FROM groups AS g"
        " JOIN unnest(%(ids)s::bigint[], %(epochs)s::bigint[]) AS w(id, epoch) ON g.id = w.id AND g.epoch = w.epoch"
        " ORDER BY g.id FOR UPDATE OF g) AS locked"
    )

    def fence(self, group_ids: Sequence[int]) -> tuple[Prepared, tuple[int, ...]]:
        """The statement that locks these groups' rows and reads their epochs, and its row.

        One statement per power of two of groups, the list padded with its last id (an ``IN``
        takes a repeated value as one), so that a handful of statements serve every batch.
        """
        size = 1 << max(len(group_ids) - 1, 0).bit_length()
        fence = self._fences.get(size)
        if fence is None:
            names = [f"g{i}" for i in range(size)]
            fence = self._fences[size] = self._prepare(
                select(groups.c.id, groups.c.epoch)
                .where(groups.c.id.in_([bindparam(n, type_=BigInteger) for n in names]))
                .order_by(groups.c.id)
                .with_for_update(),
                names,
            )
        return fence, (*group_ids, *[group_ids[-1]] * (size - len(group_ids)))


_EVENT_COLUMNS = (
    "experiment_id", "seq", "timestamp", "group_id", "participant_id", "channel", "value", "client_id", "bot", "recipient_id"
)
#: in the table's order (SQLite inserts many rows in one statement only then: :class:`.prepared.Prepared`)
_CLIENT_ID_COLUMNS = ("participant_id", "client_id", "experiment_id", "seq")
_RESULT_COLUMNS = ("session_id", "experiment_id", "seq", "subperiod", "decision", "score")
_TICK_COLUMNS = ("experiment_id", "group_id", "kind", "index", "scheduled_at", "actual_at", "late", "snapshot")
_CONNECTION_COLUMNS = (
    "id", "participant_id", "experiment_id", "connected_at", "user_agent", "address", "route", "worker"
)
_GROUP_COLUMNS = ("phase", "started_at", "ends_at", "ended_at", "subperiod", "decisions", "vars", "clock")
_batch_statements: weakref.WeakKeyDictionary[Engine, BatchStatements] = weakref.WeakKeyDictionary()


def batch_statements(engine: Engine) -> BatchStatements:
    prepared = _batch_statements.get(engine)
    if prepared is None:
        prepared = _batch_statements[engine] = BatchStatements(engine.dialect)
    return prepared
