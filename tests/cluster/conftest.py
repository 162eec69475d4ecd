"""The cluster tests' workers: ``cluster``, a test's own (:func:`tests.cluster.harness.running_cluster`),
and ``pair``, w1 and w2 shared by the tests of a test process that only play on them
(:func:`tests.cluster.harness.shared_pair`)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text

from server.storage import normalise_url
from tests.cluster.harness import Cluster, pair_for_a_test, running_cluster, shared_pair
from tests.conftest import POSTGRES_URL, REDIS_URL, _postgres_or_skip

cluster = pytest.fixture(name="cluster")(running_cluster)


@pytest.fixture(scope="session")
def _shared_pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """w1 and w2 on a PostgreSQL schema and a Redis prefix of their own, as ``postgres_url`` and
    ``redis_prefix`` give a test (those are a test's: these outlive it); both dropped after."""
    import redis

    _postgres_or_skip()
    schema, prefix = f"t_{uuid.uuid4().hex[:12]}", f"test-{uuid.uuid4().hex[:10]}"
    admin = create_engine(normalise_url(POSTGRES_URL))
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    separator = "&" if "?" in POSTGRES_URL else "?"
    try:
        yield from shared_pair(tmp_path_factory.mktemp("pair"), f"{POSTGRES_URL}{separator}options=-csearch_path%3D{schema}",
                               REDIS_URL, prefix)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
        client = redis.Redis.from_url(REDIS_URL)
        try:
            keys = list(client.scan_iter(f"{prefix}:*"))
            if keys:
                client.delete(*keys)
        finally:
            client.close()


@pytest.fixture
def pair(redis_url: str, _shared_pair: Cluster) -> Iterator[Cluster]:
    """w1 and w2 up, shared with the other tests of this test process that only play on them:
    a test starts, stops, kills or restarts none. Its part of their logs is checked after it."""
    yield from pair_for_a_test(_shared_pair)
