"""When the engines fail: Redis or PostgreSQL gone for seconds mid-period, on servers the test starts
itself (never the machine's shared ones). Safety first, then everything resumes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from server.storage import make_engine
from tests.cluster.harness import Cluster, Participant, ticks
from tests.cluster.test_cluster import check_the_log, play, settle, split_pair, until
from tests.conftest import OwnPostgres, OwnRedis
from tests.server.harness import timeout


def health(cluster: Cluster, name: str) -> tuple[int, dict[str, str]]:
    try:
        answer = httpx.get(f"{cluster.workers[name].base}/healthz", timeout=2)
    except httpx.TransportError:
        return 0, {}
    return answer.status_code, answer.json()


@pytest.fixture
def redis_cluster(tmp_path: Path, postgres_url: str, own_redis: OwnRedis, redis_prefix: str) -> Iterator[Cluster]:
    made = Cluster(tmp_path, postgres_url, own_redis.url, redis_prefix)
    try:
        yield made
    finally:
        made.stop_all()
    for name in made.workers:
        assert "Traceback" not in made.logs(name), made.logs(name)


@pytest.fixture
def postgres_cluster(tmp_path: Path, own_postgres: OwnPostgres, redis_url: str, redis_prefix: str) -> Iterator[Cluster]:
    made = Cluster(tmp_path, own_postgres.url, redis_url, redis_prefix)
    try:
        yield made
    finally:
        made.stop_all()


def refused_as(people: list[Participant], code: str) -> int:
    return sum(1 for p in people for f in p.frames if f["channel"] == "error" and f["payload"].get("code") == code)


async def test_redis_gone_for_five_seconds_stops_every_authority_then_everything_resumes(
    redis_cluster: Cluster, own_redis: OwnRedis
) -> None:
    """Redis killed mid-period: /healthz answers 503 with the reason, the group's worker stops acting
    once its lease ends, frames get ``unavailable`` and are not acked; Redis back (empty: it kept
    nothing): a worker takes the group again (its epoch above the old one), the members get the
    whole state again, the ticks that fell due are applied late, the decisions sent again are
    stored once, and ``seq`` has no gap."""
    cluster = redis_cluster
    exp, row, col, _group = await split_pair(cluster, period_length=16, num_subperiods=8)
    people = [row, col]
    player = asyncio.ensure_future(play(people, until_end=45))
    await asyncio.sleep(1.5)
    hellos = [p.hellos for p in people]
    own_redis.kill()
    await until(lambda: all(health(cluster, n)[0] == 503 for n in ("w1", "w2")), 10, "both workers unhealthy")
    assert "Redis" in health(cluster, "w1")[1]["reason"]
    await until(lambda: refused_as(people, "unavailable") > 0, 10, "a frame refused as unavailable")
    await asyncio.sleep(3.5)
    own_redis.start()
    await until(lambda: all(health(cluster, n)[0] == 200 for n in ("w1", "w2")), 15, "both workers healthy again")
    await player
    await settle(people, wait=15)
    assert all(p.hellos > h for p, h in zip(people, hellos, strict=True))  # the state sent again
    for person in people:
        await person.stop()
    check_the_log(cluster, exp["code"], people)
    engine = make_engine(cluster.env["DATABASE_URL"])
    try:
        timed = ticks(engine, exp["code"])
    finally:
        engine.dispose()
    assert sorted((t["kind"], t["index"]) for t in timed) == sorted(
        [("subperiod", i) for i in range(8)] + [("period_end", 0)]
    )
    assert any(t["late"] for t in timed)


async def test_postgresql_restarted_mid_period_refuses_then_stores_everything_sent_again(
    postgres_cluster: Cluster, own_postgres: OwnPostgres
) -> None:
    """PostgreSQL stopped for three seconds mid-period and started again: frames meanwhile are
    refused (``not_persisted``, or ``unavailable``) and not acked, the ticks that fell due are
    stored once it is back, and the decisions sent again are stored once; ``seq`` has no gap."""
    cluster = postgres_cluster
    exp, row, col, _group = await split_pair(cluster, period_length=14, num_subperiods=7)
    people = [row, col]
    player = asyncio.ensure_future(play(people, until_end=40))
    await asyncio.sleep(1.5)
    own_postgres.stop()
    await until(lambda: refused_as(people, "not_persisted") + refused_as(people, "unavailable") > 0, 10,
                "a frame refused while the database is away")
    status, body = await asyncio.to_thread(health, cluster, "w2")  # what a load balancer asks
    assert status == 503 and body["reason"].startswith("the database is unreachable"), (status, body)
    await asyncio.sleep(2)
    own_postgres.start()
    await until(lambda: health(cluster, "w2")[0] == 200, 10, "/healthz ok once the database is back")
    await player
    await settle(people, wait=15)
    for person in people:
        await person.stop()
    check_the_log(cluster, exp["code"], people)
    engine = make_engine(cluster.env["DATABASE_URL"])
    try:
        timed = ticks(engine, exp["code"])
    finally:
        engine.dispose()
    assert sorted((t["kind"], t["index"]) for t in timed) == sorted(
        [("subperiod", i) for i in range(7)] + [("period_end", 0)]
    )


def test_serve_with_workers_whose_workers_cannot_start_exits_with_a_startup_failure(
    postgres_cluster: Cluster, own_postgres: OwnPostgres
) -> None:
    """``synclab serve --workers 2``: the database takes no connections once the supervisor has
    prepared it and before its workers start. A worker's startup fails, uvicorn stops the others,
    and the command exits 3 (uvicorn's supervisor returns as from a clean stop: until 2026-12-04
    the command exited 0, and a service manager took the failure for a stop)."""
    worker = postgres_cluster.start("pair", None, "--workers", "2")
    deadline = time.monotonic() + timeout(30)
    while "synclab: monitor at" not in worker.log.read_text(errors="replace"):  # prepared: the workers come next
        assert time.monotonic() < deadline and worker.alive, postgres_cluster.logs("pair")
        time.sleep(0.02)
    connections_allowed(own_postgres, False)
    try:
        status = postgres_cluster.wait("pair", 60)
    finally:
        connections_allowed(own_postgres, True)
    logs = postgres_cluster.logs("pair")
    assert "is not currently accepting connections" in logs and "failed to start" in logs, logs
    assert status == 3, logs


def connections_allowed(server: OwnPostgres, allowed: bool) -> None:
    """Whether ``server``'s database ``postgres`` takes new connections (those open stay)."""
    with psycopg.connect(f"postgresql://postgres@127.0.0.1:{server.port}/template1", autocommit=True) as admin:
        admin.execute(f"ALTER DATABASE postgres ALLOW_CONNECTIONS {str(allowed).lower()}")
