"""Shutting down: what was queued is stored before the process ends, within a bound.

A write is acknowledged only once committed, so a lost acknowledged write would take a broken
writer; what a careless shutdown loses are the writes nobody was told of yet: the frames under
way when the signal came and the server's own last writes (the connections' closes). The SIGTERM
test looks for them in the database; the others hold a commit inside the database (another
transaction holds its lock) and look at what the shutdown does with the writes queued behind it,
which a real signal cannot be timed to catch.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import select
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

import server.runtime as runtime_module
from server.exceptions import NotPersisted
from server.experiments import parse_request, plan
from server.frames import WS_MAX_SIZE
from server.runtime import Runtime
from server.settings import Settings
from server.storage import (
    NewEvent,
    Write,
    connections,
    create_schema,
    events,
    experiment_row,
    experiments,
    insert_experiment,
    make_engine,
)
from tests.server.harness import TOKEN, eventually, holding_writes, timeout, until_queued
from tests.server.test_cli import HEALTHY_SECONDS, free_port, started, wait_until_healthy


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
    """SYNCLAB_SHUTDOWN_TIMEOUT passed: the commit under way still finishes; the rest is refused and logged.

    The direct writer, whose commit the held transaction holds (the journal's append is not).
    """
    experiment_id = _new_experiment(database_url)
    rt = await Runtime.open(Settings(database_url=database_url, admin_token=TOKEN, shutdown_timeout=0.3, journal="off"))
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


async def test_a_shutdown_that_takes_long_logs_where_its_tasks_and_threads_wait(
    database_url: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shutdown still under way after ``SLOW_SHUTDOWN`` seconds (10; here 0.3) logs the stacks of
    its tasks (the close waiting for the writer) and threads (the writer in its held commit), once.
    A cluster's worker was seen not to end after SIGTERM, with nothing in its log to say where."""
    monkeypatch.setattr(runtime_module, "SLOW_SHUTDOWN", 0.3)
    experiment_id = _new_experiment(database_url)
    rt = await Runtime.open(Settings(database_url=database_url, admin_token=TOKEN, journal="off"))
    outcomes = Outcomes()
    closing: asyncio.Future[None] | None = None
    try:
        with holding_writes(database_url):
            await _held_and_queued(rt, experiment_id, outcomes, behind=1)
            closing = asyncio.ensure_future(rt.close())
            await asyncio.sleep(0.8)
            said = [r.getMessage() for r in caplog.records if "the shutdown has taken" in r.getMessage()]
            assert len(said) == 1, said
            assert said[0].startswith("synclab: the shutdown has taken over 0.3 s; its tasks and threads:\n"), said
            assert "in close" in said[0] and "Thread synclab-writer" in said[0], said
    finally:
        await asyncio.wait_for(closing if closing is not None else rt.close(), timeout(15))
    assert outcomes.committed == [0, 1] and outcomes.failed == []


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
            # its imports first: 8 to 20 s on a loaded machine (20 s was the bound)
            line = await asyncio.wait_for(process.stdout.readline(), timeout(HEALTHY_SECONDS))
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


# --------------------------------------------------------------------------- SIGTERM under load

#: decisions per second each participant sends: under the server's 50 frames/s per connection
RATE = 40.0
#: seconds of load before the signal
LOAD = 1.0
#: with the commit held: seconds of frames queued behind it before the signal, and of the hold after
HELD_BEFORE, HELD_AFTER = 0.3, 1.0
#: seconds each participant's socket is read, and sent to, at most: the whole test's bound
READ_SECONDS = 90.0


@dataclass(eq=False)
class Participant:
    """One participant's socket: it sends decisions at :data:`RATE` and records every ``ack``."""

    code: str
    ws: ClientConnection
    started: asyncio.Event = field(default_factory=asyncio.Event)
    sent: list[str] = field(default_factory=list)
    acked: dict[str, int] = field(default_factory=dict)
    errors: list[dict[str, Any]] = field(default_factory=list)

    async def read(self, wait: float) -> None:
        """Every frame until the server closes the socket (or ``wait`` seconds pass)."""
        async with asyncio.timeout(timeout(wait)):
            with contextlib.suppress(ConnectionClosed):  # 1012 is no normal closure: iterating raises
                await self._frames()

    async def _frames(self) -> None:
        async for raw in self.ws:
            frame = orjson.loads(raw)
            channel, payload = frame["channel"], frame["payload"]
            if channel == "ack":
                assert payload["id"] not in self.acked, f"acknowledged twice: {payload}"
                self.acked[payload["id"]] = payload["seq"]
            elif channel == "error":
                self.errors.append(payload)
            elif channel == "state" and payload == "period_start":
                self.started.set()

    async def send(self, most: int) -> None:
        """Decisions at :data:`RATE`, each with its own id, until the socket closes (at most ``most``)."""
        begin = time.monotonic()
        for n in range(most):
            # absolute times: a late send is not followed by a burst that would pass the limit
            await asyncio.sleep(max(0.0, begin + n / RATE - time.monotonic()))
            frame_id = f"{self.code}-{n}"
            try:
                await self.ws.send(orjson.dumps({"channel": "decisions", "payload": n % 11, "id": frame_id}).decode())
            except ConnectionClosed:
                return
            self.sent.append(frame_id)


@pytest.mark.parametrize("held", [False, True], ids=["free", "commit-held"])
async def test_a_sigterm_under_load_loses_no_acknowledged_write_and_the_process_exits_0(
    tmp_path: Path, database_url: str, held: bool
) -> None:
    """SIGTERM mid-load: the server exits 0 by itself; every acked id is stored once with its seq, no seq gap.

    ``commit-held``: another transaction holds the database from just before the signal until a
    second after the sockets closed, so the frames under way and the connections' closes wait in
    the writer's queue at shutdown: the server must wait for them and store them all. The direct
    writer then, whose commits the held transaction holds (the journal's appends are not).
    """
    await stopped_under_load(tmp_path, database_url, held, **({"SYNCLAB_JOURNAL": "off"} if held else {}))


async def test_a_sigterm_under_load_with_the_journal_applies_everything_before_it_exits(
    tmp_path: Path, sqlite_url: str
) -> None:
    """The same with ``SYNCLAB_JOURNAL=on`` (the apply every 5 s): what the journal holds is in
    the database once the process has exited, read by another connection."""
    await stopped_under_load(tmp_path, sqlite_url, False, SYNCLAB_JOURNAL="on", SYNCLAB_APPLY_EVERY="5")


async def under_load(port: int, people: list[Participant]) -> tuple[str, list[asyncio.Future[None]], list[asyncio.Future[None]]]:
    """On the server at ``port``: two groups of four playing, each member (added to ``people``)
    sending at :data:`RATE` for :data:`LOAD` seconds so far; the experiment's code, the readers, the senders."""
    base = f"http://127.0.0.1:{port}"
    wait_until_healthy(base)
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=timeout(5)) as http:
        created = await http.post("/api/experiments", json={
            "game": "public_goods", "participants": 8, "group_size": 4, "period_length": 30,
        })
    assert created.status_code == 201, created.text
    for person in created.json()["participants"]:
        ws = await connect(
            f"ws://127.0.0.1:{port}/ws/p/{person['code']}",
            max_size=WS_MAX_SIZE, max_queue=None, open_timeout=timeout(5), close_timeout=timeout(2),
        )
        people.append(Participant(person["code"], ws))
    readers = [asyncio.ensure_future(p.read(wait=READ_SECONDS)) for p in people]
    async with asyncio.timeout(timeout(10)):
        for p in people:
            await p.started.wait()  # both groups' periods run: every member is connected
    senders = [asyncio.ensure_future(p.send(most=int(RATE * READ_SECONDS))) for p in people]
    await asyncio.sleep(LOAD)
    # and half of what was sent acknowledged: a loaded machine's server acks late, and the signal
    # right after LOAD seconds then came with too little load before it
    await until_sent_or_acked(people, acked=int(RATE * LOAD * len(people) / 2))
    return created.json()["code"], readers, senders


async def until_sent_or_acked(people: list[Participant], *, sent: int = 0, acked: int = 0, wait: float = 30) -> None:
    """Until the participants have sent (from now on) and have had acknowledged that many decisions in all."""
    before = sum(len(p.sent) for p in people)
    await eventually(
        lambda: sum(len(p.sent) for p in people) - before >= sent and sum(len(p.acked) for p in people) >= acked, wait
    )


async def stopped_under_load(tmp_path: Path, database_url: str, held: bool, **env: str) -> None:
    """A server (``env`` added) under load, SIGTERM, and what it stored checked (see the tests above)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    people: list[Participant] = []
    with started(
        tmp_path, "serve", "--port", str(port), DATABASE_URL=database_url, SYNCLAB_ADMIN_TOKEN=TOKEN, **env
    ) as running:
        code, readers, senders = await under_load(port, people)
        acked_before = sum(len(p.acked) for p in people)
        with holding_writes(database_url) if held else contextlib.nullcontext():
            if held:  # frames keep coming (counted by what was sent: a loaded machine sends late), none is committed now
                await until_sent_or_acked(people, sent=int(RATE * HELD_BEFORE * len(people)))
            running.process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            await asyncio.wait_for(asyncio.gather(*senders, *readers), timeout(20))
            if held:
                await asyncio.sleep(HELD_AFTER)
                assert running.process.poll() is None, "the server exited with its last writes queued"
                async with httpx.AsyncClient(timeout=timeout(2)) as late:
                    with pytest.raises(httpx.ConnectError):  # while it waits for them, it accepts nothing new
                        await late.get(f"{base}/healthz")
        status = await asyncio.to_thread(running.process.wait, timeout(20))
        took = time.monotonic() - signalled - (HELD_AFTER if held else 0.0)
        stderr = running.stderr_path.read_text()
    assert status == 0, f"exit status {status}: {stderr[-2000:]}"
    assert took < timeout(10), f"the server took {took:.1f} s to stop"
    assert "Traceback" not in stderr and "left unstored" not in stderr, stderr[-2000:]
    assert [p.ws.close_code for p in people] == [1012] * len(people), "uvicorn closes every socket: service restart"
    assert acked_before >= RATE * LOAD * len(people) / 2, f"too little load before the signal: {acked_before} acks"
    assert not [e for p in people for e in p.errors], "nothing refused before the signal (the rate limit, say)"

    engine = make_engine(database_url)
    try:
        row = experiment_row(engine, code)
        assert row is not None
        with engine.connect() as conn:
            stored = conn.execute(
                select(events.c.client_id, events.c.seq).where(events.c.experiment_id == row["id"]).order_by(events.c.seq)
            ).all()
            last_seq = conn.execute(select(experiments.c.last_seq).where(experiments.c.id == row["id"])).scalar_one()
            closed = conn.execute(
                select(connections.c.disconnected_at, connections.c.close_code).where(
                    connections.c.experiment_id == row["id"]
                )
            ).all()
    finally:
        engine.dispose()
    seqs = [r.seq for r in stored]
    assert seqs == list(range(1, last_seq + 1)), "the experiment's seq has no gap and ends at its last_seq"
    times_stored = Counter(r.client_id for r in stored if r.client_id is not None)
    seq_of = {r.client_id: r.seq for r in stored if r.client_id is not None}
    acked = {frame_id: seq for p in people for frame_id, seq in p.acked.items()}
    assert acked and all(times_stored[i] == 1 for i in acked), "every acknowledged id is stored exactly once"
    assert {i: seq_of[i] for i in acked} == acked, "with the seq its ack gave"
    sent = {i for p in people for i in p.sent}
    assert set(times_stored) <= sent and max(times_stored.values()) == 1
    if held:  # the frames queued behind the held commit were never acked, yet they were stored
        assert len(set(times_stored) - set(acked)) >= RATE * HELD_BEFORE * len(people) / 2
    # the server's own last writes, told to nobody: each connection's close, queued at shutdown
    assert len(closed) == len(people)
    assert all(c.disconnected_at is not None and c.close_code == 1012 for c in closed), closed
