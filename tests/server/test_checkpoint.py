"""SQLite's write-ahead log is copied back by Database.checkpoint, never inside a commit."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import text

from server.database import Database, create_schema
from tests.server.harness import timeout


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
