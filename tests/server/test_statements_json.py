"""The batch's JSON values made in one call (:meth:`server.storage.statements.BatchStatements.json_texts`):
the text the engine's serializer makes, value for value."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import create_engine

from server.storage.engine import json_dumps, make_engine
from server.storage.statements import batch_statements

#: JSON values of every kind, and floats that need all their digits
VALUES: list[Any] = [None, 0.1 + 0.2, "é ✓ \"quoted\"", {"nested": [1, 2.5, None, {"x": True}]}, [], 7, 1e300, -0.0, True]


def test_the_batch_s_json_texts_are_synclab_s_serializer_s_value_for_value(tmp_path: Path) -> None:
    """On SQLite with synclab's serializer the texts are made without it, and are its texts."""
    engine = make_engine(f"sqlite:///{tmp_path / 'synclab.db'}")
    try:
        sql = batch_statements(engine)
        assert sql.json is json_dumps
        texts = sql.json_texts(iter(VALUES))
        assert texts == [json_dumps(v) for v in VALUES] and all(type(t) is str for t in texts)
    finally:
        engine.dispose()


def test_another_serializer_makes_the_batch_s_json_texts() -> None:
    """An engine made with a serializer of its own has its values made by it."""
    engine = create_engine("sqlite://", json_serializer=lambda value: f"<{value!r}>")
    try:
        assert batch_statements(engine).json_texts([1, None]) == ["<1>", "<None>"]
    finally:
        engine.dispose()
