"""Alembic's entry point for synclab's migrations.

synclab runs them itself (``synclab db upgrade``, :mod:`server.storage.schema`), on a connection
it has opened, locked and begun a transaction on, passed in ``config.attributes["connection"]``.
Run by the ``alembic`` command instead (a developer writing a migration:
``alembic -c server/storage/migrations/alembic.ini revision --autogenerate -m "…"``), it opens
``DATABASE_URL`` (default ``sqlite:///./synclab.db``) itself.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy.engine import Connection
from sqlmodel.sql.sqltypes import AutoString

from server.storage.engine import make_engine
from server.storage.tables import metadata


def _render_item(kind: str, obj: Any, _context: AutogenContext) -> str | Literal[False]:
    """SQLModel's string type written as SQLAlchemy's: a migration imports nothing of SQLModel."""
    if kind == "type" and isinstance(obj, AutoString):
        return f"sa.String(length={obj.length})" if obj.length else "sa.String()"
    return False


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        # SQLite alters a table by copying it; the same migration runs on both databases
        render_as_batch=True,
        compare_type=True,
        render_item=_render_item,
    )
    with context.begin_transaction():
        context.run_migrations()


given = context.config.attributes.get("connection")
if given is not None:
    _run(given)
else:
    engine = make_engine(os.environ.get("DATABASE_URL") or "sqlite:///./synclab.db")
    try:
        with engine.begin() as connection:
            _run(connection)
    finally:
        engine.dispose()
