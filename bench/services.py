"""PostgreSQL and Redis for the runs that need them, and the CPU time of every process kind.

A run on PostgreSQL gets a schema of its own (``bench_<hex>``) in the database of
:attr:`Services.postgres`, dropped after the run; a cluster run gets a Redis key and channel
prefix of its own (``SYNCLAB_CLUSTER=bench-<hex>``), whose keys are deleted after the run. The
servers' connections to PostgreSQL carry ``application_name=<the schema>``, so the backends
serving the run can be told from any other client's in ``pg_stat_activity``.

CPU time is read from ``/proc/<pid>/stat`` (user + system, every thread) before the first send
and after the last receipt, per process kind (:class:`Meter`): the target's own processes, the
``redis-server`` (its pid from ``INFO server``), PostgreSQL's backends of the run and its
background processes (from ``pg_stat_activity``). A process is known by its pid and its start
time, so a pid reused meanwhile is not mistaken for the one read before; one that started
during the run counts with all its CPU time; one that ended during it is not counted.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from server.storage import WRITER_NAME

from .proc import cpu_seconds, start_ticks

#: this machine's PostgreSQL and Redis (the tests' defaults too)
POSTGRES_URL = os.environ.get("SYNCLAB_BENCH_POSTGRES_URL", "postgresql://127.0.0.1:5432/test")
REDIS_URL = os.environ.get("SYNCLAB_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
#: seconds to wait for PostgreSQL or Redis to answer the harness (it is on loopback)
CONNECT_TIMEOUT = 5
#: keys deleted per command when a run's Redis prefix is cleaned up
DELETE_BATCH = 500
#: at most this many keys are looked at when a prefix is cleaned up (a run makes a few hundred)
MAX_KEYS = 1_000_000

#: (pid, start time in clock ticks since boot) -> CPU seconds
Reading = dict[tuple[int, int], float]


@dataclass(frozen=True)
class Services:
    """Where PostgreSQL and Redis are for the runs that need them.

    ``database_url`` and ``prefix`` given (a test's own schema and Redis prefix, made and
    removed by the caller): every run uses them as they are instead of making its own.
    """

    postgres: str = POSTGRES_URL
    redis: str = REDIS_URL
    database_url: str | None = None
    prefix: str | None = None


def _with_query(url: str, **params: str) -> str:
    """``url`` with ``params`` added to its query string (values percent-encoded)."""
    separator = "&" if "?" in url else "?"
    return url + separator + urllib.parse.urlencode(params, quote_via=urllib.parse.quote)


def _conninfo(url: str) -> str:
    """A libpq URI for psycopg from an SQLAlchemy-style URL (``postgresql+psycopg://`` -> ``postgresql://``)."""
    scheme, rest = url.split("://", 1)
    return "postgresql://" + rest if scheme.startswith("postgres") else url


@dataclass(frozen=True)
class Database:
    """The PostgreSQL database of one run: the URL the servers get, and their ``application_name``."""

    url: str
    application_name: str


@contextlib.contextmanager
def postgres_schema(services: Services) -> Iterator[Database]:
    """A schema of the run's own in ``services.postgres`` (dropped after), or the given ``database_url``."""
    import psycopg

    name = f"bench_{secrets.token_hex(6)}"
    if services.database_url is not None:
        yield Database(_with_query(services.database_url, application_name=name), name)
        return
    base = _conninfo(services.postgres)
    with psycopg.connect(base, autocommit=True, connect_timeout=CONNECT_TIMEOUT) as conn:
        conn.execute(f'CREATE SCHEMA "{name}"')
    try:
        # the servers look their tables up in the schema alone (search_path), as the tests do
        yield Database(_with_query(services.postgres, options=f"-csearch_path={name}", application_name=name), name)
    finally:
        with psycopg.connect(base, autocommit=True, connect_timeout=CONNECT_TIMEOUT) as conn:
            conn.execute(f'DROP SCHEMA "{name}" CASCADE')


@contextlib.contextmanager
def redis_prefix(services: Services) -> Iterator[str]:
    """A key and channel prefix of the run's own (its keys deleted after), or the given ``prefix``."""
    if services.prefix is not None:
        yield services.prefix
        return
    import redis

    prefix = f"bench-{secrets.token_hex(6)}"
    client = redis.Redis.from_url(services.redis, socket_connect_timeout=CONNECT_TIMEOUT)
    try:
        client.ping()  # unreachable: fail before any worker starts
        yield prefix
    finally:
        with contextlib.suppress(redis.RedisError):
            keys: list[Any] = []
            for key in client.scan_iter(f"{prefix}:*", count=DELETE_BATCH):
                keys.append(key)
                if len(keys) >= MAX_KEYS:
                    break
            for start in range(0, len(keys), DELETE_BATCH):
                client.delete(*keys[start : start + DELETE_BATCH])
        client.close()


# ---------------------------------------------------------------------- CPU per process kind


class Meter(Protocol):
    """The processes of one kind: :meth:`read` their CPU time, each by its pid and start time."""

    @property
    def kind(self) -> str: ...

    def read(self) -> Reading: ...


def _reading(pids: Sequence[int]) -> Reading:
    out: Reading = {}
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):  # gone meanwhile
            out[(pid, start_ticks(pid))] = cpu_seconds(pid)
    return out


def used(before: Reading, after: Reading) -> float:
    """CPU seconds the processes used between two readings (all of it for one started since)."""
    return sum(cpu - before.get(key, 0.0) for key, cpu in after.items())


@dataclass(frozen=True)
class Processes:
    """Processes known by pid: the target's own (``kind`` ``target``)."""

    kind: str
    pids: tuple[int, ...]

    def read(self) -> Reading:
        return _reading(self.pids)


class RedisServer:
    """The ``redis-server`` at ``url``: its pid from ``INFO server``, its CPU from ``/proc``.

    A Redis whose pid is not a process here (another host, a container) is read from ``INFO
    cpu`` (Redis's own ``getrusage``, the same figure) under the pseudo-pid 0.
    """

    kind = "redis"

    def __init__(self, url: str) -> None:
        import redis

        self._client = redis.Redis.from_url(url, socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=CONNECT_TIMEOUT)
        self.pid = int(self._client.info("server")["process_id"])
        stat = Path(f"/proc/{self.pid}/stat")
        self._local = stat.exists() and "redis" in stat.read_text().split(")", 1)[0]

    def read(self) -> Reading:
        if self._local:
            return _reading([self.pid])
        cpu = self._client.info("cpu")
        return {(0, 0): float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])}

    def commands(self) -> int:
        """Commands Redis processed since it started (every client's: PUBLISH, EVALSHA, GET, ...)."""
        return int(self._client.info("stats")["total_commands_processed"])

    def close(self) -> None:
        self._client.close()


class Postgres:
    """PostgreSQL's processes, from ``pg_stat_activity`` through a connection of the harness's own.

    ``backends``: the client backends whose ``application_name`` is the run's (the servers'
    connections, a writer's with :data:`server.storage.WRITER_NAME` after it; kind ``postgres``); otherwise every process that is no client backend
    (WAL writer, checkpointer, background writer, autovacuum: kind ``postgres-bg``), which
    serve every database of the PostgreSQL server, other clients' writes included.
    """

    def __init__(self, url: str, application_name: str, *, backends: bool) -> None:
        import psycopg

        self.kind = "postgres" if backends else "postgres-bg"
        self._name = application_name
        self._backends = backends
        self._conn = psycopg.connect(_conninfo(url.split("?", 1)[0]), autocommit=True,
                                     connect_timeout=CONNECT_TIMEOUT, application_name="synclab-bench-meter")

    def pids(self) -> list[int]:
        if self._backends:
            # a writer's session adds to the name (server.storage.WRITER_NAME)
            rows = self._conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name IN (%s, %s)",
                                      (self._name, f"{self._name} {WRITER_NAME}"))
        else:
            rows = self._conn.execute("SELECT pid FROM pg_stat_activity WHERE backend_type <> 'client backend'")
        return [int(pid) for (pid,) in rows.fetchall()]

    def read(self) -> Reading:
        return _reading(self.pids())

    def close(self) -> None:
        self._conn.close()


@contextlib.contextmanager
def measuring(services: Services, database: Database, *, redis: bool) -> Iterator[list[Meter]]:
    """The meters of a run on PostgreSQL (and Redis): its backends, PostgreSQL's background
    processes, the ``redis-server``; their connections closed after."""
    with contextlib.ExitStack() as stack:
        meters: list[Meter] = []
        for backends in (True, False):
            postgres = Postgres(database.url, database.application_name, backends=backends)
            stack.callback(postgres.close)
            meters.append(postgres)
        if redis:
            server = RedisServer(services.redis)
            stack.callback(server.close)
            meters.append(server)
        yield meters
