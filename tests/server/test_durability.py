"""``SYNCLAB_DURABILITY``: what an acknowledged decision survives.

``power-loss`` (the default) syncs every commit to the disk; ``crash`` (SQLite only) leaves the
sync to SQLite's checkpoints, so an acknowledged decision survives a crash of the server's process (kill -9, here with a real process and a real signal) but a power loss may
take about the last second's. The checkpoint after the last commit is what bounds that second:
it comes without any further commit.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, select

from server.exceptions import SettingsError
from server.settings import Settings
from server.storage import (
    Database,
    EventWriter,
    NewBlock,
    NewEvent,
    NewExperiment,
    Write,
    create_schema,
    events,
    insert_experiment,
    make_engine,
    new_code,
)
from tests.server.harness import eventually, timeout
from tests.server.test_checkpoint import first_group_and_member
from tests.server.test_cli import free_port, started, wait_until_healthy
from tests.server.test_restart import participant, until

TOKEN = "durability-token"


def test_every_commit_is_synced_unless_crash_is_asked_for_and_a_bad_value_is_refused() -> None:
    default = Settings.from_env({})
    # on SQLite the journal's appends, each synced, too cheap to wait for company
    assert (default.durability, default.journaled, default.group_commit_wait) == ("power-loss", True, 0.0)
    direct = Settings.from_env({"SYNCLAB_JOURNAL": "off"})
    assert (direct.durability, direct.journaled, direct.group_commit_wait) == ("power-loss", False, 0.001)
    on_postgres = Settings.from_env({"DATABASE_URL": "postgresql://127.0.0.1/test"})
    assert (on_postgres.journaled, on_postgres.group_commit_wait) == (False, 0.001)
    crash = Settings.from_env({"SYNCLAB_DURABILITY": "crash"})
    # a commit that is not synced costs too little to wait for company
    assert (crash.durability, crash.journaled, crash.group_commit_wait) == ("crash", False, 0.0)
    waits = Settings.from_env({"SYNCLAB_DURABILITY": "crash", "SYNCLAB_COMMIT_DELAY": "0.002"})
    assert waits.group_commit_wait == 0.002
    with pytest.raises(SettingsError, match=r"SYNCLAB_DURABILITY: expected one of power-loss, crash, got 'fast'"):
        Settings.from_env({"SYNCLAB_DURABILITY": "fast"})


def test_sqlite_syncs_each_commit_only_by_default(tmp_path: Path) -> None:
    for synced, expected in ((True, 2), (False, 1)):  # FULL, NORMAL
        engine = make_engine(f"sqlite:///{tmp_path / f'{synced}.db'}", synced=synced)
        try:
            with engine.connect() as first, engine.connect() as second:  # every connection of the pool
                for conn in (first, second):
                    assert conn.exec_driver_sql("PRAGMA synchronous").scalar_one() == expected
                    assert conn.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"
        finally:
            engine.dispose()


def test_postgres_refuses_crash_durability() -> None:
    """PostgreSQL could lose its last commits in its own crash while the workers run on with what
    they held: the setting is for SQLite, where whatever loses commits (power) ends the server too."""
    settings = Settings.from_env({"DATABASE_URL": "postgresql://127.0.0.1/test", "SYNCLAB_DURABILITY": "crash"})
    with pytest.raises(SettingsError, match=r"SYNCLAB_DURABILITY=crash is for SQLite"):
        settings.check()
    Settings.from_env({"DATABASE_URL": "postgresql://127.0.0.1/test"}).check()
    Settings.from_env({"SYNCLAB_DURABILITY": "crash"}).check()


async def test_a_lone_commit_reaches_the_database_file_within_a_checkpoint_interval(tmp_path: Path) -> None:
    """Not synced per commit, the log is synced by the checkpoint that copies it: one comes after
    the last commit without another commit to bring it (the database file alone, copied without
    its log, holds the decision within about ``checkpoint_every``)."""
    path = tmp_path / "lone.db"
    db = Database(f"sqlite:///{path}", synced=False)
    try:
        experiment_id = await db.write(insert_experiment, await schema_and_spec(db))
        group_id, participant_id = await db.read(first_group_and_member, experiment_id)
        writer = EventWriter(db, checkpoint_every=0.3)
        writer.start()
        done: asyncio.Future[Write] = asyncio.get_running_loop().create_future()
        decision = NewEvent("decisions", 0.75, 1e9, group_id, participant_id, "lone-1")
        writer.submit(Write(experiment_id, [decision]), done.set_result, done.set_exception)
        committed = await asyncio.wait_for(done, timeout(5))
        # only a checkpoint that began after the commit can have copied it
        await eventually(lambda: in_file_alone(path, tmp_path / "copy.db") == committed.seqs)
        await writer.close()
    finally:
        db.close()


async def test_what_a_job_commits_reaches_the_database_file_too(tmp_path: Path) -> None:
    """Not only the event batches: an experiment created (a job on the writer thread, no event
    after it) is in the database file alone within about a second."""
    path = tmp_path / "job.db"
    db = Database(f"sqlite:///{path}", synced=False)
    try:
        spec = await schema_and_spec(db)
        await db.write(insert_experiment, spec)
        await eventually(lambda: experiment_codes(path, tmp_path / "copy.db") == [spec.code])
    finally:
        db.close()


async def schema_and_spec(db: Database) -> NewExperiment:
    """The schema made (a commit of its own), and an experiment of one group of two to insert."""
    await db.write(create_schema)
    block = NewBlock(0, 60.0, 3, None, 0.0, "fixed", [[0, 1]])
    return NewExperiment(new_code(), "bimatrix", {}, 2, [new_code(), new_code()], [block], 1e9)


def experiment_codes(path: Path, copy: Path) -> list[str]:
    return [str(row[0]) for row in rows_of_file_alone(path, copy, "SELECT code FROM experiments")]


def in_file_alone(path: Path, copy: Path) -> list[int]:
    """The ``seq`` of every decision the database file holds by itself (a copy without its log)."""
    query = "SELECT seq FROM events WHERE channel = 'decisions' ORDER BY seq"
    return [int(row[0]) for row in rows_of_file_alone(path, copy, query)]


def rows_of_file_alone(path: Path, copy: Path, query: str) -> list[tuple[object, ...]]:
    for leftover in (copy, Path(f"{copy}-wal"), Path(f"{copy}-shm")):
        leftover.unlink(missing_ok=True)
    shutil.copyfile(path, copy)
    conn = sqlite3.connect(copy)
    try:
        return list(conn.execute(query))
    except sqlite3.DatabaseError:  # caught in the middle of the checkpoint's writes, or no table yet
        return []
    finally:
        conn.close()


async def test_a_killed_server_keeps_every_decision_it_acknowledged(tmp_path: Path) -> None:
    """``crash``, a real ``synclab serve`` and SIGKILL right after the last ack: every acknowledged
    decision is stored, and the server said at the start what it promises."""
    database_url = f"sqlite:///{tmp_path / 'killed.db'}"
    killed = await killed_after_acks(tmp_path, 30, DATABASE_URL=database_url, SYNCLAB_DURABILITY="crash")
    assert killed.status["durability"] == "crash"
    assert "SYNCLAB_DURABILITY=crash" in killed.stderr
    engine = make_engine(database_url)
    try:
        stored = stored_decisions(engine)
    finally:
        engine.dispose()
    assert {seq: stored.get(seq) for seq in killed.acked} == killed.acked


@dataclass
class Killed:
    """What a server killed after its last ack had acknowledged (``seq``: value), and said."""

    code: str
    acked: dict[int, float]
    #: its ``GET /api/server`` at the start
    status: dict[str, Any]
    stderr: str


async def killed_after_acks(tmp_path: Path, sends: int, **env: str) -> Killed:
    """A real ``synclab serve`` (``env`` added), an experiment of one group of two started, ``sends``
    decisions each sent once the one before was acknowledged, then SIGKILL right after the last ack."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    acked: dict[int, float] = {}
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=timeout(5)) as http:
        with started(tmp_path, "serve", "--port", str(port), SYNCLAB_ADMIN_TOKEN=TOKEN, **env) as server:
            wait_until_healthy(base, server=server)
            status = (await http.get("/api/server")).json()
            created = await http.post(
                "/api/experiments",
                json={"game": "public_goods", "participants": 2, "group_size": 2, "period_length": 60},
            )
            assert created.status_code == 201, created.text
            codes = [p["code"] for p in created.json()["participants"]]
            first, second = [await participant(base, code) for code in codes]
            await until(first, "state", "period_start")
            for i in range(sends):
                value = float(i % 10)
                await first.send("decisions", value, f"d{i}")
                ack = await until(first, "ack")
                assert ack["payload"]["id"] == f"d{i}"
                acked[ack["payload"]["seq"]] = value
            server.process.send_signal(signal.SIGKILL)
            server.process.wait(timeout(5))
            for client in (first, second):
                await client.close()
            return Killed(created.json()["code"], acked, status, server.stderr())


def stored_decisions(engine: Engine) -> dict[int, float]:
    with engine.connect() as conn:
        rows = conn.execute(select(events.c.seq, events.c.value).where(events.c.channel == "decisions"))
        return {int(seq): value for seq, value in rows}
