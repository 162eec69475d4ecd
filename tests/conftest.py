"""Fixtures: a database on SQLite and on this machine's PostgreSQL, Redis, and a real server on port 0.

PostgreSQL comes from ``SYNCLAB_TEST_POSTGRES_URL`` (default: database ``test`` on
127.0.0.1:5432). Each test gets a schema of its own there. Redis comes from
``SYNCLAB_TEST_REDIS_URL`` (default 127.0.0.1:6379, database 0); each test gets a key prefix of
its own (``redis_prefix``). A test that stops Redis starts its own (``own_redis``). When
PostgreSQL or Redis is missing the tests that need it skip loudly, except with ``CI=true``,
where they fail.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text

from server.storage import create_schema, make_engine, normalise_url
from tests.server.harness import Harness, running_server

POSTGRES_URL = os.environ.get("SYNCLAB_TEST_POSTGRES_URL", "postgresql://127.0.0.1:5432/test")
REDIS_URL = os.environ.get("SYNCLAB_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# Bytecode cached, whatever the machine says (its PYTHONDONTWRITEBYTECODE=1): each test process
# rewrote the asserts of every test module anew (10 s of CPU at each of the three workers' start)
# and each of the ~300 synclab processes the suite starts compiled synclab from source (~0.15 s)
sys.dont_write_bytecode = False
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)


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
    """A real server, once on SQLite (with the journal, its default) and once on PostgreSQL."""
    async with running_server(database_url) as harness:
        yield harness


@pytest.fixture
async def direct_server(database_url: str) -> AsyncIterator[Harness]:
    """A real server whose writer commits each batch to the database before it acknowledges it
    (``SYNCLAB_JOURNAL=off``, PostgreSQL's only writer), once on SQLite and once on PostgreSQL."""
    async with running_server(database_url, journal="off") as harness:
        yield harness


def _missing(what: str, why: str) -> None:
    message = f"{what} {why}"
    if IN_CI:
        pytest.fail(f"{message} (CI=true: the tests that need it must run)")
    pytest.skip(f"SKIPPING — {message}")


@pytest.fixture
def redis_url() -> str:
    """This machine's Redis (shared: use ``redis_prefix`` for keys and channels)."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        _missing(f"Redis at {REDIS_URL}", f"is not reachable: {exc}")
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key and channel prefix of this test's own; its keys are deleted afterwards."""
    import redis

    prefix = f"test-{uuid.uuid4().hex[:10]}"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(f"{prefix}:*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@dataclass
class OwnRedis:
    """A redis-server of this test's own, which the test may stop and start again on its port."""

    port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None
    #: more of redis-server's options (``--requirepass``, say), for the next :meth:`start`
    options: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.directory), *self.options],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)

    def pause(self) -> None:
        """SIGSTOP: the port still accepts connections (the kernel does), nothing answers."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
        self.process = None


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    """A redis-server started for this test on a free port (never the machine's shared one)."""
    if shutil.which("redis-server") is None:
        _missing("redis-server", "is not installed")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = OwnRedis(port, tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()


@dataclass
class OwnPostgres:
    """A PostgreSQL server of this test's own (``initdb`` + ``pg_ctl`` in a temp dir), to stop and start."""

    port: int
    directory: Path

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*as_postgres, *args], check=True, capture_output=True, timeout=60)

    def init(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres", "postgres")
        self._run(_pg_bin("initdb"), "-D", str(self.directory / "data"), "-A", "trust", "-U", "postgres", "--no-sync")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(_pg_bin("pg_ctl"), "-D", str(self.directory / "data"), "-o", options,
                  "-l", str(self.directory / "log"), "-w", "start")

    def stop(self) -> None:
        self._run(_pg_bin("pg_ctl"), "-D", str(self.directory / "data"), "-m", "immediate", "-w", "stop")


def _pg_bin(name: str) -> str:
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    return str(found[-1]) if found else name


@pytest.fixture
def own_postgres() -> Iterator[OwnPostgres]:
    """A PostgreSQL server started for this test on a free port (never the machine's shared one)."""
    if not Path(_pg_bin("initdb")).exists():
        _missing("initdb", "is not installed")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # its own directory right under the temp dir: the postgres user cannot enter pytest's (0700, root's)
    server = OwnPostgres(port, Path(tempfile.mkdtemp(prefix="synclab-pg-")))
    try:
        server.init()
        server.start()
        yield server
    finally:
        with contextlib.suppress(subprocess.SubprocessError):
            server.stop()
        shutil.rmtree(server.directory, ignore_errors=True)
