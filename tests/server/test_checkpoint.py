"""SQLite's write-ahead log is copied back by Database.checkpoint, never inside a commit."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import Engine, select, text

from server.storage import (
    Database,
    EventWriter,
    GroupUpdate,
    NewBlock,
    NewEvent,
    NewExperiment,
    Write,
    create_schema,
    insert_experiment,
    make_engine,
    new_code,
)
from server.storage import groups as groups_table
from server.storage import participants as participants_table
from server.storage.engine import SQLITE_PAGE_SIZE
from tests.server.harness import eventually, timeout


async def test_commits_leave_the_log_to_the_checkpointer_which_copies_it_back(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    db = Database(f"sqlite:///{path}")
    try:
        await db.write(create_schema)

        def fill(engine: object) -> None:
            with db.engine.begin() as conn:
                conn.execute(text("CREATE TABLE filler (x TEXT)"))
                for _ in range(200):
                    conn.execute(text("INSERT INTO filler VALUES (:x)"), {"x": "y" * 2000})

        await db.write(fill)
        size_before = size(path)
        assert size(Path(f"{path}-wal")) > 400_000, "the commit wrote the log, not the database"
        running = db.checkpoint()
        assert running is not None
        assert db.checkpoint() is running, "one checkpoint at a time"
        await asyncio.wait_for(running, timeout(5))
        # the second call came while the first ran, maybe after a commit that the first missed:
        # another checkpoint follows it
        await eventually(lambda: db.checkpoints == 2)
        assert size(path) > size_before + 400_000, "the checkpoint copied the log into the database"
        def count(engine: object) -> int:
            with db.engine.connect() as conn:
                return int(conn.execute(text("SELECT count(*) FROM filler")).scalar_one())

        assert await db.read(count) == 200
    finally:
        db.close()
    assert size(Path(f"{path}-wal")) == 0, "close truncates the log"


def size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


async def test_postgres_needs_no_checkpoint(postgres_url: str) -> None:
    db = Database(postgres_url)
    try:
        assert not db.sqlite
        assert db.checkpoint() is None
    finally:
        db.close()


@pytest.mark.parametrize("restart_after", [256, 10**9], ids=["past-256-frames", "never"])
async def test_under_steady_writes_the_log_starts_over_instead_of_growing(
    tmp_path: Path, restart_after: int
) -> None:
    """A checkpoint that runs while the writer commits never finds the log's end by itself;
    the writer finishes it once the log holds ``restart_log_after`` frames, so the next commit
    writes the log from its start again. Below that the writer leaves the log to grow (the
    second case: never restarted, and so it grows with every commit)."""
    path = tmp_path / "steady.db"
    db = Database(f"sqlite:///{path}", restart_log_after=restart_after)
    writer = EventWriter(db, checkpoint_every=0.05)
    try:
        await db.write(create_schema)
        codes = [new_code() for _ in range(2)]
        block = NewBlock(0, 60.0, 3, None, 0.0, "fixed", [[0, 1]])
        spec = NewExperiment(new_code(), "bimatrix", {}, 2, codes, [block], 1e9)
        experiment_id = await db.write(insert_experiment, spec)
        group_id, participant_id = await db.read(first_group_and_member, experiment_id)
        writer.start()
        loop = asyncio.get_running_loop()
        commits, deadline = 0, loop.time() + timeout(3)
        while commits < 3000 and loop.time() < deadline:  # one commit at a time, back to back
            done: asyncio.Future[Write] = loop.create_future()
            write = Write(
                experiment_id,
                [NewEvent("decisions", {"x": "y" * 400, "n": commits}, 1e9 + commits, group_id, participant_id, None)],
                GroupUpdate(group_id, "running", 1e9, 1e9 + 60, None, 0, {codes[0]: commits}, {}),
            )
            writer.submit(write, done.set_result, done.set_exception)
            await done
            commits += 1
        assert commits >= 300, f"too few commits to judge: {commits}"
        await writer.close()
        log_size = size(Path(f"{path}-wal"))
        # every commit adds at least two pages (the event's and the group's); the file
        # keeps the size of the longest stretch between two restarts (a stalled checkpoint on a
        # busy machine makes one longer), so the bound is a fraction, not a few commits' worth
        never_restarted = commits * 2 * 4096
        if restart_after > 10**6:
            # SQLite starts the log over by itself at a commit that finds it wholly copied, which a
            # checkpoint can do while the writer waits for the core (seen with three test processes
            # on two cores): the log grew well past what the restarted case must stay under, not
            # by every commit's pages (two of SQLITE_PAGE_SIZE each, at least)
            assert db.log_restarts == 0
            assert log_size >= never_restarted / 3, f"the log holds {log_size} bytes after {commits} commits"
            return
        assert db.log_restarts >= 1
        assert log_size < never_restarted / 3, (
            f"the log holds {log_size} bytes after {commits} commits: it never started over"
        )
    finally:
        await writer.close()
        db.close()


def first_group_and_member(engine: Engine, experiment_id: int) -> tuple[int, int]:
    with engine.connect() as conn:
        group_id = conn.execute(
            select(groups_table.c.id).where(groups_table.c.experiment_id == experiment_id)
        ).scalar_one()
        participant_id = conn.execute(
            select(participants_table.c.id).where(participants_table.c.experiment_id == experiment_id).limit(1)
        ).scalar_one()
    return int(group_id), int(participant_id)


def test_a_new_database_has_2_kib_pages_and_an_older_one_keeps_its_own(tmp_path: Path) -> None:
    """New SQLite files get SQLITE_PAGE_SIZE; a file made with other pages (every database made
    before 2026-12-02: 4 KiB) keeps them, and a server works on it as before."""
    new = make_engine(f"sqlite:///{tmp_path / 'new.db'}")
    try:
        create_schema(new)
        assert page_size(new) == SQLITE_PAGE_SIZE == 2048
    finally:
        new.dispose()
    old_path = tmp_path / "old.db"
    made = sqlite3.connect(old_path)
    made.execute("PRAGMA page_size=4096")
    made.execute("PRAGMA journal_mode=WAL")
    made.close()
    old = make_engine(f"sqlite:///{old_path}")
    try:
        create_schema(old)
        with old.begin() as conn:
            conn.execute(text("INSERT INTO meta (key, value) VALUES ('k', 'v')"))
        assert page_size(old) == 4096
    finally:
        old.dispose()


def page_size(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("PRAGMA page_size")).scalar_one())
