"""Shutting down: what was queued is stored before the process ends, within a bound.

The writer's last writes are the server's own (the connections' closes, the ticks, the commits
under way when the signal came): nobody is told of them, so only the database shows whether they
were lost. These tests hold a commit inside the database (another transaction holds its lock)
and look at what the shutdown does with the writes queued behind it.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

import pytest
from sqlalchemy import select

from server.exceptions import NotPersisted
from server.experiments import parse_request, plan
from server.runtime import Runtime
from server.settings import Settings
from server.storage import NewEvent, Write, create_schema, events, insert_experiment, make_engine
from tests.server.harness import TOKEN, holding_writes, timeout, until_queued


def _decision(experiment_id: int, value: int) -> Write:
    return Write(experiment_id, [NewEvent("decisions", value, time.time())])


def _new_experiment(database_url: str) -> int:
    engine = make_engine(database_url)
    try:
        create_schema(engine)
        return insert_experiment(engine, plan(parse_request({"game": "bimatrix", "participants": 2, "group_size": 2})))
    finally:
        engine.dispose()


def _stored(database_url: str, experiment_id: int) -> list[Any]:
    """The values of the experiment's stored events, in ``seq`` order."""
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            query = select(events.c.value).where(events.c.experiment_id == experiment_id).order_by(events.c.seq)
            return [row.value for row in conn.execute(query)]
    finally:
        engine.dispose()


class Outcomes:
    """Each write's outcome, as the writer reports it on the loop."""

    def __init__(self) -> None:
        self.committed: list[int] = []
        self.failed: list[NotPersisted] = []

    def submit(self, rt: Runtime, experiment_id: int, value: int) -> None:
        rt.writer.submit(
            _decision(experiment_id, value), lambda w: self.committed.append(w.events[0].value), self.failed.append
        )


async def _held_and_queued(rt: Runtime, experiment_id: int, outcomes: Outcomes, behind: int) -> None:
    """Write 0 taken by the thread (its commit waits for the held lock), writes 1..``behind`` queued behind it."""
    outcomes.submit(rt, experiment_id, 0)
    await until_queued(rt.database, 0)  # the thread took it
    for value in range(1, behind + 1):
        outcomes.submit(rt, experiment_id, value)
    await until_queued(rt.database, behind)


async def test_closing_waits_for_the_writes_queued_behind_a_held_commit_and_stores_them(database_url: str) -> None:
    """Runtime.close() returns only once the held commit and every write queued behind it are stored."""
    experiment_id = _new_experiment(database_url)
    rt = await Runtime.open(Settings(database_url=database_url, admin_token=TOKEN))
    outcomes = Outcomes()
    closing: asyncio.Future[None] | None = None
    try:
        with holding_writes(database_url):
            await _held_and_queued(rt, experiment_id, outcomes, behind=4)
            closing = asyncio.ensure_future(rt.close())
            await asyncio.sleep(0.5)
            assert not closing.done(), "close returned while writes were still queued"
    finally:
        await asyncio.wait_for(closing if closing is not None else rt.close(), timeout(15))
    assert outcomes.committed == [0, 1, 2, 3, 4] and outcomes.failed == []
    assert _stored(database_url, experiment_id) == [0, 1, 2, 3, 4]


async def test_past_the_shutdown_timeout_the_queued_writes_are_refused_and_counted_and_the_held_commit_stored(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """SYNCLAB_SHUTDOWN_TIMEOUT passed: the commit under way still finishes; the rest is refused and logged."""
    experiment_id = _new_experiment(database_url)
    rt = await Runtime.open(Settings(database_url=database_url, admin_token=TOKEN, shutdown_timeout=0.3))
    outcomes = Outcomes()
    closing: asyncio.Future[None] | None = None
    try:
        with holding_writes(database_url):
            await _held_and_queued(rt, experiment_id, outcomes, behind=3)
            closing = asyncio.ensure_future(rt.close())
            await asyncio.sleep(0.8)
            assert not closing.done(), "close waits for the commit under way, past the timeout too"
            assert "3 writes (3 events) were left unstored after" in caplog.text
    finally:
        await asyncio.wait_for(closing if closing is not None else rt.close(), timeout(15))
    assert outcomes.committed == [0]
    assert [str(exc) for exc in outcomes.failed] == ["the event could not be stored: the server stopped before it could be stored"] * 3
    assert _stored(database_url, experiment_id) == [0]


#: a process that queues three writes and lets its main thread end without closing the database
_QUEUE_AND_LEAVE = """
import asyncio, sys, time
from server.storage import Database, EventWriter, NewEvent, Write

async def main(url: str, experiment_id: int) -> None:
    database = Database(url)
    writer = EventWriter(database)
    writer.start()
    for value in range(3):
        writer.submit(Write(experiment_id, [NewEvent("decisions", value, time.time())]), print, print)
    await asyncio.sleep(0.1)
    print("queued", flush=True)

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


async def test_a_process_whose_main_thread_ends_without_closing_stores_what_was_queued_before_it_exits(
    database_url: str,
) -> None:
    """The writer is no daemon: the interpreter waits for the held commit, then the thread ends by itself."""
    experiment_id = _new_experiment(database_url)
    with holding_writes(database_url):
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _QUEUE_AND_LEAVE, database_url, str(experiment_id),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            assert process.stdout is not None and process.stderr is not None
            line = await asyncio.wait_for(process.stdout.readline(), timeout(20))
            assert line == b"queued\n", (line, await process.stderr.read())
            await asyncio.sleep(1.0)
            assert process.returncode is None, "the process ended with its writes unstored"
        except BaseException:
            if process.returncode is None:
                process.kill()
            await process.wait()
            raise
    code = await asyncio.wait_for(process.wait(), timeout(20))
    stderr = (await process.stderr.read()).decode()
    assert code == 0, stderr
    assert "the main thread ended without stopping the writer" in stderr
    assert _stored(database_url, experiment_id) == [0, 1, 2]
