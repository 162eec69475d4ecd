"""A cluster's workers end the database sessions of writers stopped inside a batch's pipeline.

PostgreSQL never times out a session that has had part of a pipeline and waits for the rest
(tests/server/test_stalled_writer.py stops a real writer there). Here a session named as a
writer of the cluster's URL waits so, holding a group's row, beside a real worker: the worker
ends it within about a lease and a half, and says so in its log; the same kind of session of
another URL (another lab on the same database) is left alone.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import Connection

from server.storage import make_engine, writer_connection
from tests.cluster.harness import LEASE, Cluster, running_cluster


def _named(url: str, name: str) -> str:
    return url + ("&" if "?" in url else "?") + f"application_name={name}"


@contextlib.contextmanager
def waiting_inside_a_pipeline(url: str) -> Iterator[Any]:
    """A writer's session of ``url`` that has sent a batch's first statement (a group's row
    locked) and waits: the driver's connection."""
    engine = make_engine(url)
    conn: Connection = writer_connection(engine, LEASE)
    raw: Any = conn.connection.dbapi_connection
    try:
        with contextlib.ExitStack() as pipeline:
            pipeline.enter_context(raw.pipeline())
            raw.execute("SELECT id FROM groups ORDER BY id LIMIT 1 FOR UPDATE")
            yield raw
            pipeline.pop_all()  # ended or not, the test looked at it; nothing more is sent
    finally:
        with contextlib.suppress(Exception):
            conn.invalidate()
        engine.dispose()


def test_a_worker_ends_a_writer_session_of_its_cluster_stopped_inside_a_pipeline(
    tmp_path: Path, postgres_url: str, redis_url: str, redis_prefix: str
) -> None:
    lab = f"lab-{secrets.token_hex(4)}"
    url = _named(postgres_url, lab)
    with contextlib.contextmanager(running_cluster)(tmp_path, url, redis_url, redis_prefix) as cluster:
        cluster.start("w1")
        cluster.healthy("w1")  # its schema made
        with (
            waiting_inside_a_pipeline(url) as ours,
            waiting_inside_a_pipeline(_named(postgres_url, f"other-{lab}")) as theirs,
        ):
            pids = ours.info.backend_pid, theirs.info.backend_pid
            deadline = time.monotonic() + 3 * LEASE + 5
            while _alive(postgres_url, pids[0]):
                assert time.monotonic() < deadline, f"no worker ended the stopped writer's session: {cluster.logs('w1')}"
                time.sleep(0.1)
            assert _alive(postgres_url, pids[1]), "a worker ended another cluster's writer"
            with pytest.raises(psycopg.OperationalError):
                ours.execute("SELECT 1")
                ours.sync()
        _await_log(cluster, f"ended the database sessions {pids[0]}")
        cluster.healthy("w1")


def _alive(url: str, pid: int) -> bool:
    with psycopg.connect(url.split("?", 1)[0], autocommit=True) as conn:
        return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone() == (1,)


def _await_log(cluster: Cluster, text: str) -> None:
    deadline = time.monotonic() + 5
    while text not in cluster.logs("w1"):
        assert time.monotonic() < deadline, cluster.logs("w1")
        time.sleep(0.1)
