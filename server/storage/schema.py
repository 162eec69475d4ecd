"""The schema: creating it in a new database, and refusing one made by another version."""

from __future__ import annotations

from sqlalchemy import Engine, inspect, text
from sqlalchemy.schema import CreateIndex, CreateTable
from sqlmodel import SQLModel

from ..exceptions import SchemaError

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

