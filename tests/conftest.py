"""Fixtures: a database on SQLite and on this machine's PostgreSQL, and a real server on port 0.

PostgreSQL comes from ``SYNCLAB_TEST_POSTGRES_URL`` (default: database ``test`` on
127.0.0.1:5432). Each test gets a schema of its own there. When PostgreSQL is missing the
tests that need it skip loudly, except with ``CI=true``, where they fail.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from sqlalchemy import Engine, create_engine, text

from server.storage import create_schema, make_engine, normalise_url
from tests.server.harness import Harness, running_server

POSTGRES_URL = os.environ.get("SYNCLAB_TEST_POSTGRES_URL", "postgresql://127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _postgres_or_skip() -> None:
    try:
        engine = create_engine(normalise_url(POSTGRES_URL))
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
    except Exception as exc:
        message = f"PostgreSQL at {POSTGRES_URL} is not reachable: {exc}"
        if IN_CI:
            pytest.fail(f"{message} (CI=true: the PostgreSQL tests must run)")
        pytest.skip(f"SKIPPING POSTGRESQL TESTS — {message}")


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """An engine with the schema, once on SQLite and once on PostgreSQL."""
    engine = make_engine(database_url)
    create_schema(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def sqlite_url(tmp_path: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path}/synclab.db"  # type: ignore[operator]


@pytest.fixture
def postgres_url() -> Iterator[str]:
    _postgres_or_skip()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(normalise_url(POSTGRES_URL))
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    separator = "&" if "?" in POSTGRES_URL else "?"
    try:
        yield f"{POSTGRES_URL}{separator}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Each test that uses it runs twice: on SQLite and on PostgreSQL."""
    name = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    return str(request.getfixturevalue(name))


@pytest.fixture
async def server(sqlite_url: str) -> AsyncIterator[Harness]:
    """A real server (uvicorn on port 0) on SQLite."""
    async with running_server(sqlite_url) as harness:
        yield harness


@pytest.fixture
async def any_server(database_url: str) -> AsyncIterator[Harness]:
    """A real server, once on SQLite and once on PostgreSQL."""
    async with running_server(database_url) as harness:
        yield harness
