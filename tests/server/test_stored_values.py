"""The writer's own conversions store exactly what SQLAlchemy's processors would have."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import JSON, DateTime

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
