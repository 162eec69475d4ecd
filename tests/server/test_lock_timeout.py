"""A table locked on PostgreSQL (DDL, a migration, ``LOCK TABLE``) does not hang the server.

Every connection of the server gives up waiting for a lock after ``SYNCLAB_LOCK_TIMEOUT``: a REST
read answers 503 with ``Retry-After`` instead of waiting for as long as the lock is held (and, with
the few reader threads taken, every request behind it), and a decision is refused
(``not_persisted``) and stored when its client sends it again. A real lock, taken by another
session on the machine's PostgreSQL.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from server.exceptions import SettingsError
from server.settings import Settings
from server.storage import make_engine
from tests.server.harness import running_server, timeout

LOCK_TIMEOUT = 1.0


@contextmanager
def locked(url: str, table: str) -> Iterator[None]:
    """``table`` locked ACCESS EXCLUSIVE by another session until the block ends."""
    engine = make_engine(url)
    taken, release, done = threading.Event(), threading.Event(), threading.Event()

    def hold() -> None:
        try:
            with engine.begin() as conn:
                conn.exec_driver_sql(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
                taken.set()
                release.wait(60)
        finally:
            done.set()

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    try:
        assert taken.wait(10), "the lock was not taken"
        yield
    finally:
        release.set()
        done.wait(10)
        engine.dispose()


async def test_a_locked_table_answers_503_and_refuses_decisions_until_it_is_free(postgres_url: str) -> None:
    async with running_server(postgres_url, lock_timeout=LOCK_TIMEOUT) as server:
        exp = await server.create(participants=2, group_size=2)
        a, b = [await server.connect(p["code"]) for p in exp["participants"]]
        for client in (a, b):
            assert (await client.expect("state"))["payload"] == "period_start"
        a_code = exp["participants"][0]["code"]
        await b.expect("group_decisions")  # the period's first
        with locked(postgres_url, "events"):
            started = time.monotonic()
            answer = await asyncio.wait_for(server.http.get(f"/api/experiments/{exp['code']}/events"), timeout(15))
            waited = time.monotonic() - started
            assert answer.status_code == 503, answer.text
            assert "locked" in answer.json()["error"], answer.json()
            assert answer.headers["Retry-After"] == "5"
            assert LOCK_TIMEOUT * 0.9 <= waited <= LOCK_TIMEOUT + timeout(4), waited
            await a.send("decisions", 0.7, frame_id="while-locked")
            refused = await a.expect("error", wait=15)
            assert refused["payload"]["code"] == "not_persisted" and refused["payload"]["id"] == "while-locked"
            assert await b.silent(0.3), "the other member heard a decision that was not stored"
        await a.send("decisions", 0.7, frame_id="while-locked")  # the page sends it again
        assert (await a.expect("ack", wait=10))["payload"]["id"] == "while-locked"
        assert (await b.expect("group_decisions"))["payload"][a_code] == 0.7
        stored = await server.events(exp["code"])
        assert [e["value"] for e in stored if e["channel"] == "decisions"] == [0.7]
        assert [e["seq"] for e in stored] == list(range(1, len(stored) + 1))


def test_a_lock_timeout_no_longer_than_a_lease_is_refused_in_a_cluster() -> None:
    settings = Settings.from_env({
        "DATABASE_URL": "postgresql://127.0.0.1/x", "REDIS_URL": "redis://127.0.0.1:6379/0",
        "SYNCLAB_LEASE_SECONDS": "3", "SYNCLAB_LOCK_TIMEOUT": "2",
    })
    try:
        settings.check()
    except SettingsError as exc:
        assert "SYNCLAB_LOCK_TIMEOUT (2 s) must be longer than SYNCLAB_LEASE_SECONDS (3 s)" in str(exc)
    else:
        raise AssertionError("a lock timeout under the lease was accepted")
    Settings.from_env({**{"DATABASE_URL": "postgresql://127.0.0.1/x", "REDIS_URL": "redis://127.0.0.1:6379/0"},
                       "SYNCLAB_LOCK_TIMEOUT": "0"}).check()  # 0: the database's own setting
