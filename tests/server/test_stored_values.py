"""The writer's own conversions store exactly what SQLAlchemy's processors would have."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import JSON, DateTime, bindparam

from server.storage import make_engine
from server.storage.prepared import StoredTimes, sqlite_time
from server.storage.statements import batch_statements


def test_sqlite_times_are_sqlalchemys_text_to_the_microsecond(tmp_path: Path) -> None:
    """``sqlite_time`` against SQLAlchemy's SQLite ``DateTime`` processor, over 1970 to 2096,
    whole seconds and microsecond values included, and through :class:`StoredTimes`."""
    engine = make_engine(f"sqlite:///{tmp_path / 't.db'}")
    try:
        dialect = engine.dialect
        process = DateTime(timezone=True).dialect_impl(dialect).bind_processor(dialect)
        assert process is not None
        stored = StoredTimes(dialect)
        rng = random.Random(7)
        epochs = [0.0, 1.0, 0.000001, 1_796_000_000.999999, 4e9 - 1e-6]
        epochs += [rng.uniform(0, 4e9) for _ in range(20_000)]
        epochs += [float(rng.randrange(0, 4 * 10**9)) for _ in range(5_000)]
        epochs += [rng.randrange(0, 4 * 10**15) / 1e6 for _ in range(20_000)]
        # where the microseconds round: half a microsecond either way (half to even), a fraction
        # that rounds up into the next second, and times before 1970 (a negative fraction)
        for whole in (0.0, 1.0, 1_796_000_000.0, -1.0, -86_400.0, -1_000_000_000.0):
            for micro in (0.5, 1.5, 2.5, 999_999.4, 999_999.5, 999_999.6, 123_456.5):
                near = whole + micro / 1e6
                epochs += [near, math.nextafter(near, -math.inf), math.nextafter(near, math.inf)]
        epochs += [rng.uniform(-4e9, 0) for _ in range(5_000)]
        for epoch in epochs:
            value = datetime.fromtimestamp(epoch, UTC)
            assert sqlite_time(value) == process(value), epoch
            assert stored(epoch) == process(value), epoch
    finally:
        engine.dispose()


def test_sqlite_json_values_are_sqlalchemys_text(tmp_path: Path) -> None:
    """The batch's JSON values on SQLite (the engine's serializer, called directly) against
    SQLAlchemy's JSON processor with that serializer."""
    engine = make_engine(f"sqlite:///{tmp_path / 't.db'}")
    try:
        dialect = engine.dialect
        process = JSON().dialect_impl(dialect).bind_processor(dialect)
        assert process is not None
        as_json = batch_statements(engine).json
        for value in (None, 0, -1.5, 1e300, "text", "ünï", [], {}, [1, None, "a"], {"a": {"b": [0.1, True, False]}}, True):
            assert as_json(value) == process(value), value
    finally:
        engine.dispose()


def test_sqlite_binds_none_and_bools_as_before_through_registered_adapters() -> None:
    """Importing the storage registers sqlite3 adapters for None and bool, so that binding them
    skips the driver's failing adapter look-up (an AttributeError raised and cleared per value);
    what is stored is what the driver stores without them: NULL, and the integers 0 and 1."""
    import sqlite3

    import server.storage  # noqa: F401  (registers them)

    assert (type(None), sqlite3.PrepareProtocol) in sqlite3.adapters
    assert (bool, sqlite3.PrepareProtocol) in sqlite3.adapters
    conn = sqlite3.connect(":memory:")
    try:
        conn.execute("CREATE TABLE t (a, b BOOLEAN, c INTEGER)")
        conn.executemany("INSERT INTO t VALUES (?, ?, ?)", [(None, True, False), (1, False, None)])
        stored = conn.execute("SELECT a, typeof(a), b, typeof(b), c, typeof(c) FROM t ORDER BY rowid").fetchall()
    finally:
        conn.close()
    assert stored == [(None, "null", 1, "integer", 0, "integer"), (1, "integer", 0, "integer", None, "null")]


def test_sqlite_rows_inserted_many_a_statement_are_the_rows_one_at_a_time(tmp_path: Path) -> None:
    """On SQLite a batch's INSERT of several rows goes as statements of many rows each (64, 32, …,
    1: the powers of two they add up to), and stores what the one-row statement run row by row
    (``executemany``) stores: the same rows, values and types, in the same order of ids."""
    from sqlalchemy import insert

    from server.storage import create_schema
    from server.storage.prepared import Prepared
    from server.storage.tables import events

    columns = ("experiment_id", "seq", "timestamp", "group_id", "participant_id", "channel", "value", "client_id", "bot")
    stored: dict[str, list[tuple[object, ...]]] = {}
    for how in ("one by one", "many a statement"):
        rng = random.Random(3)  # the same rows both ways
        engine = make_engine(f"sqlite:///{tmp_path / (how + '.db')}")
        try:
            create_schema(engine)
            prepared = Prepared(insert(events).inline().values({c: bindparam(c) for c in columns}), engine.dialect, columns)
            raw = engine.raw_connection()
            try:
                raw.execute("PRAGMA foreign_keys=OFF")  # no experiment, group or participant rows
                cursor = raw.cursor()
                seq = 0
                for count in (2, 3, 64, 65, 100, 127, 1, 200):
                    rows = []
                    for _ in range(count):
                        seq += 1
                        rows.append((1, seq, f"2026-12-05 16:{seq % 60:02d}:00.{seq:06d}", rng.choice([None, 7]),
                                     rng.choice([None, 3]), "decisions", str(rng.random()), rng.choice([None, f"c{seq}"]),
                                     rng.choice([True, False])))
                    if how == "one by one":
                        cursor.executemany(prepared.sql, rows)
                    else:
                        statements: list[str] = []
                        prepared.run(_Counting(cursor, statements), rows)
                        sizes = [s.count("(?") for s in statements]
                        assert sum(sizes) == count and sizes == sorted(sizes, reverse=True), sizes
                        assert all(size & (size - 1) == 0 and size <= 64 for size in sizes), sizes
                raw.commit()
                stored[how] = [tuple(row) for row in raw.execute(
                    "SELECT *, typeof(timestamp), typeof(value), typeof(bot) FROM events ORDER BY id").fetchall()]
            finally:
                raw.close()
        finally:
            engine.dispose()
    assert len(stored["one by one"]) == 562
    assert stored["many a statement"] == stored["one by one"]


class _Counting:
    """A cursor that keeps the text of each statement it runs."""

    def __init__(self, cursor: object, statements: list[str]) -> None:
        self._cursor, self._statements = cursor, statements

    def execute(self, sql: str, parameters: object) -> object:
        self._statements.append(sql)
        return self._cursor.execute(sql, parameters)  # type: ignore[attr-defined]

    def executemany(self, sql: str, rows: object) -> object:
        self._statements.append(sql)
        return self._cursor.executemany(sql, rows)  # type: ignore[attr-defined]
