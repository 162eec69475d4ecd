"""Server-wide key-value settings stored in the ``meta`` table."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Engine, insert, select
from sqlalchemy.exc import IntegrityError

from .tables import meta


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

