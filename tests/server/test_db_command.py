"""``synclab db``: what each action accepts, a database where it is asked to go already, and a
schema change refused while a server runs on the database."""

from __future__ import annotations

import fcntl
import os
import signal
import sqlite3
import time
from contextlib import closing
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import Connection

from server.exceptions import SchemaError
from server.storage import head, history, make_engine
from server.storage.recovery import lock_database
from tests.server.harness import timeout
from tests.server.test_cli import (
    HEALTHY_SECONDS,
    Running,
    free_port,
    run,
    started,
    wait_until_healthy,
)
from tests.server.test_downgrade import db, snapshot
from tests.server.test_migrations import Hold, newer_synclab, release_database


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_database_0_1_0_made_and_never_upgraded_is_at_0_1_0_already(
    tmp_path: Path, kind: str, request: pytest.FixtureRequest,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``db downgrade 0.1.0`` (or its revision) of the release's own database says it is there
    already and exits 0, changing nothing (no version table is added); a revision after the
    release's is refused (exit 2) with the command that goes forward."""
    monkeypatch.chdir(tmp_path)
    url = release_database(tmp_path, "sqlite://" if kind == "sqlite" else str(request.getfixturevalue("postgres_url")))
    before = snapshot(url)
    assert before[0] is None and "alembic_version" not in before[1]
    for target in ("0.1.0", "0001_baseline"):
        status, out, err = db(capsys, monkeypatch, url, "downgrade", target)
        assert status == 0, err
        assert "already at synclab 0.1.0's schema (0001_baseline): it was never upgraded; nothing changed" in out
        assert snapshot(url) == before
    status, _, err = db(capsys, monkeypatch, url, "downgrade", "0004_online")
    assert status == 2 and "made by synclab 0.1.0 and never upgraded" in err
    assert "before 0004_online" in err and "synclab db upgrade" in err
    assert snapshot(url) == before


def test_yes_is_refused_by_every_action_but_downgrade(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--yes`` means "lose the values the older schema cannot hold": the actions that lose nothing
    refuse it (exit 2, one line, nothing done) rather than ignore it; downgrade still takes it."""
    monkeypatch.chdir(tmp_path)
    url = release_database(tmp_path, "sqlite://")
    before = snapshot(url)
    for action in ("upgrade", "current", "history", "check"):
        status, out, err = db(capsys, monkeypatch, url, action, "--yes")
        assert status == 2, (action, out, err)
        assert out == "" and err == f"synclab: synclab db {action} takes no --yes: it loses nothing " \
            "(only `synclab db downgrade` asks for it)\n"
    assert snapshot(url) == before  # the upgrade refused did not run
    assert db(capsys, monkeypatch, url, "upgrade")[0] == 0
    status, out, err = db(capsys, monkeypatch, url, "downgrade", "0.1.0", "--yes")
    assert status == 0, err
    assert snapshot(url)[0] == "0001_baseline" and snapshot(url)[0] != head()


# --------------------------------------------------------------------------- a server running on the database


def _serving_sessions(url: str) -> int:
    """PostgreSQL: the sessions that hold the servers' mark on the schema of ``url``."""
    from server.storage import SERVING_LOCK  # here: this file's other tests run without it too

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND classid = :key"
                " AND objsubid = 2 AND objid = (hashtext(current_schema())::bigint & 4294967295)::oid"
            ), {"key": SERVING_LOCK}).scalar_one())
    finally:
        engine.dispose()


@pytest.mark.parametrize("kind", ["sqlite", "sqlite-direct", "postgres"])
def test_db_upgrade_and_downgrade_refuse_while_a_server_runs_and_a_killed_one_does_not_block_them(
    tmp_path: Path, kind: str, request: pytest.FixtureRequest
) -> None:
    """A real ``synclab serve`` on the database (SQLite with its journal, SQLite direct, PostgreSQL):
    the newer synclab's ``db upgrade`` and a ``db downgrade --yes`` exit 2 in one line that says a
    server runs there (SQLite: its process id; PostgreSQL: its session) and what to do, changing
    nothing and announcing nothing; the server serves on. An upgrade with nothing to do is not
    refused. Once the server is killed (SIGKILL, no shutdown), both run."""
    url = f"sqlite:///{tmp_path}/synclab.db" if kind != "postgres" else str(request.getfixturevalue("postgres_url"))
    env = {"DATABASE_URL": url, "SYNCLAB_ADMIN_TOKEN": "a-token-for-the-test"}
    if kind == "sqlite-direct":
        env["SYNCLAB_JOURNAL"] = "off"
    assert run(tmp_path, "db", "upgrade", **env).returncode == 0
    newer = newer_synclab(tmp_path)
    before_head = history()[0][1]
    assert before_head is not None
    port = free_port()
    with started(tmp_path, "serve", "--port", str(port), **env) as server:
        wait_until_healthy(f"http://127.0.0.1:{port}", server=server)
        before = snapshot(url)
        for args, extra in ((["upgrade"], newer), (["downgrade", before_head, "--yes"], {})):
            refused = run(tmp_path, "db", *args, **env, **extra)
            assert refused.returncode == 2, (args, refused.stdout, refused.stderr)
            assert refused.stdout == "", refused.stdout  # nothing announced
            lines = refused.stderr.strip().splitlines()
            assert len(lines) == 1, refused.stderr
            assert lines[0].startswith("synclab: a synclab server is running on the database "), lines
            assert lines[0].endswith(", or a command (export, verify, token) reads it: stop the server (every process of it) "
                                         "or let the command end, and run this again; nothing was changed")
            held = f"(process {server.process.pid})" if kind != "postgres" else "(its session "
            assert held in lines[0], lines
            assert snapshot(url) == before
        same = run(tmp_path, "db", "upgrade", **env)
        assert same.returncode == 0 and "is already at" in same.stdout, (same.stdout, same.stderr)
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=timeout(10)).status_code == 200
        server.process.kill()
        assert server.process.wait(timeout(10)) == -signal.SIGKILL
    if kind == "postgres":  # its session ends once PostgreSQL reads the closed socket: at once, bounded here
        deadline = time.monotonic() + timeout(10)
        while _serving_sessions(url):
            assert time.monotonic() < deadline, "the killed server's session kept its mark"
            time.sleep(0.05)
    down = run(tmp_path, "db", "downgrade", before_head, "--yes", **env)
    assert down.returncode == 0, down.stderr
    assert f"to {before_head}" in down.stdout
    up = run(tmp_path, "db", "upgrade", **env, **newer)
    assert up.returncode == 0, up.stderr
    assert "to 0099_throwaway" in up.stdout


def test_a_server_starting_while_a_db_command_changes_the_schema_waits_and_finds_the_revision_it_left(
    tmp_path: Path, postgres_url: str
) -> None:
    """PostgreSQL: while a ``db`` command's transaction holds the servers' mark exclusively (as it
    does from its look to its commit) and has taken the schema back a revision, a ``synclab
    serve`` starting says that it waits, naming the command's session, and waits in the mark's
    queue; once the command commits, the server reads the revision it left and refuses to serve it
    (exit 2, as ``serve`` refuses a database behind, one line naming ``synclab db upgrade``: it
    waits before its first look at the revision; until 2026-12-05 only the app's start waited,
    which refused it with exit 3)."""
    from server.storage import SERVING_LOCK

    env = {"DATABASE_URL": postgres_url, "SYNCLAB_ADMIN_TOKEN": "a-token-for-the-test"}
    assert run(tmp_path, "db", "upgrade", **env).returncode == 0
    before_head = history()[0][1]
    engine = make_engine(postgres_url)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(:key, hashtext(current_schema()))"), {"key": SERVING_LOCK})
            conn.execute(text("UPDATE alembic_version SET version_num = :rev"), {"rev": before_head})
            with started(tmp_path, "serve", "--port", str(free_port()), **env) as server:
                deadline = time.monotonic() + timeout(HEALTHY_SECONDS)  # its start: imports first
                while not _waiting_servers(conn, SERVING_LOCK):
                    assert server.process.poll() is None, server.stderr()
                    assert time.monotonic() < deadline, f"the server never waited for the mark; {server.stderr()}"
                    time.sleep(0.05)
                command = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
                said = [line for line in server.stderr_path.read_text().splitlines() if "is changing the schema" in line]
                assert said == [f"synclab: a `synclab db` command (its session {command}) is changing the schema of "
                                f"the database {engine.url.render_as_string(hide_password=True)}: "
                                "this server waits for it to finish (up to 30 s)"], server.stderr()
                conn.commit()
                assert server.process.wait(timeout(30)) == 2, server.stderr()
                stderr = server.stderr_path.read_text()
                assert f"is at revision {before_head}; this synclab needs {head()}" in stderr, stderr
                assert "synclab db upgrade" in stderr
    finally:
        engine.dispose()


def _waiting_servers(conn: Connection, key: int) -> int:
    """Sessions waiting for the servers' mark (not granted) on this schema, seen from ``conn``'s own transaction."""
    return int(conn.execute(text(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND classid = :key"
        " AND objsubid = 2 AND objid = (hashtext(current_schema())::bigint & 4294967295)::oid"
    ), {"key": key}).scalar_one())


def test_a_server_whose_mark_session_ended_takes_the_mark_again(tmp_path: Path, postgres_url: str) -> None:
    """PostgreSQL: the session that holds a running server's mark is ended (as a restart of the
    database ends it); within the renewal's period the server holds it again on a new session, and
    ``db downgrade`` is refused again."""
    from server.storage import RENEW_EVERY, SERVING_LOCK

    env = {"DATABASE_URL": postgres_url, "SYNCLAB_ADMIN_TOKEN": "a-token-for-the-test"}
    assert run(tmp_path, "db", "upgrade", **env).returncode == 0
    before_head = history()[0][1]
    assert before_head is not None
    port = free_port()
    engine = make_engine(postgres_url)
    try:
        with started(tmp_path, "serve", "--port", str(port), **env) as server:
            wait_until_healthy(f"http://127.0.0.1:{port}", server=server)
            first = _mark_sessions(engine, SERVING_LOCK)
            assert len(first) == 1, first
            with engine.begin() as conn:
                assert conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first[0]}).scalar()
            deadline = time.monotonic() + timeout(RENEW_EVERY * 4)
            while not (again := _mark_sessions(engine, SERVING_LOCK)) or again == first:
                assert server.process.poll() is None, server.stderr()
                assert time.monotonic() < deadline, f"the mark was not taken again: {again}; {server.stderr()}"
                time.sleep(0.1)
            refused = run(tmp_path, "db", "downgrade", before_head, "--yes", **env)
            assert refused.returncode == 2 and f"(its session {again[0]}" in refused.stderr, refused.stderr
            assert "lost this server's mark on the database" in server.stderr_path.read_text()
    finally:
        engine.dispose()


def _mark_sessions(engine: Engine, key: int) -> list[int]:
    """The sessions holding the servers' mark on this schema."""
    with engine.connect() as conn:
        return [int(pid) for pid in conn.execute(text(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND classid = :key"
            " AND objsubid = 2 AND objid = (hashtext(current_schema())::bigint & 4294967295)::oid ORDER BY pid"
        ), {"key": key}).scalars()]


# --------------------------------------------------------------------------- SQLite: a server started mid-upgrade


def _until_the_file_is_held(path: Path, command: Running) -> None:
    """Until a process holds the ``flock`` of the SQLite file ``path`` (a command inside its migration)."""
    deadline = time.monotonic() + timeout(HEALTHY_SECONDS)
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                fcntl.flock(fd, fcntl.LOCK_UN)
            except BlockingIOError:
                return
            assert command.process.poll() is None, command.stderr()
            assert time.monotonic() < deadline, f"the command never held the file; {command.stderr()}"
            time.sleep(0.05)
    finally:
        os.close(fd)


def test_a_server_starting_on_sqlite_while_db_upgrade_changes_the_schema_waits_for_it_then_serves(
    tmp_path: Path,
) -> None:
    """SQLite: a ``db upgrade`` whose migration takes longer (until the test lets it go) than the
    2 s a server waits for the file's lock; a ``synclab serve`` of the new synclab started meanwhile (a platform's ``web``
    after its ``release``) says that it waits for the schema change and for which process, waits,
    and serves the revision the command left. Until 2026-12-05 it was refused after 2 s ("another
    synclab process has the database"), exit 2. A server started beside that running server is
    still refused as before, without waiting: no mark of the finished change is left behind."""
    path = tmp_path / "synclab.db"
    env = {"DATABASE_URL": f"sqlite:///{path}", "SYNCLAB_ADMIN_TOKEN": "a-token-for-the-test"}
    assert run(tmp_path, "db", "upgrade", **env).returncode == 0
    hold = Hold(tmp_path / "hold")
    newer = newer_synclab(tmp_path, hold)
    for name in ("upgrading", "serving", "beside"):
        (tmp_path / name).mkdir()
    port = free_port()
    with started(tmp_path / "upgrading", "db", "upgrade", **env, **newer) as upgrade:
        hold.until_holding(upgrade)
        _until_the_file_is_held(path, upgrade)
        with started(tmp_path / "serving", "serve", "--port", str(port), **env, **newer) as server:
            deadline = time.monotonic() + timeout(HEALTHY_SECONDS)  # its start: imports first
            while "waits for it" not in server.stderr():
                assert server.process.poll() is None, server.stderr()
                assert time.monotonic() < deadline, f"the server never said it waits; {server.stderr()}"
                time.sleep(0.05)
            assert upgrade.process.poll() is None, "the upgrade ended before the server waited for it"
            said = next(line for line in server.stderr_path.read_text().splitlines() if "waits for it" in line)
            assert f"(process {upgrade.process.pid})" in said and str(path) in said, said
            hold.release()
            assert upgrade.process.wait(timeout(30)) == 0, upgrade.stderr()
            assert not Path(f"{path}.synclab-schema-change").exists()  # its mark, as README names it, removed
            assert wait_until_healthy(f"http://127.0.0.1:{port}", server=server).status_code == 200
            with closing(sqlite3.connect(path)) as look:
                assert look.execute("SELECT version_num FROM alembic_version").fetchall() == [("0099_throwaway",)]
            beside = run(tmp_path / "beside", "serve", "--port", str(free_port()), **env, **newer)
            assert beside.returncode == 2, beside.stdout + beside.stderr
            assert beside.stderr.startswith("synclab: another synclab process has the database"), beside.stderr
            assert "waits for it" not in beside.stderr
            assert server.process.poll() is None, server.stderr()


def test_a_server_gives_up_on_a_schema_change_past_its_wait_and_a_killed_upgrade_keeps_none_waiting(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """SQLite: a server's wait for a ``db upgrade`` changing the schema is bounded (here 1 s, 30 s
    when it serves): past it, a one-line :class:`SchemaError` that says so. The command killed
    (SIGKILL, mid-migration: nothing changed) leaves its mark's file behind, unlocked: it keeps no
    server waiting, and one starts at once on the revision the database kept."""
    from server.storage.serving import CHANGING_SUFFIX  # here: the test before runs without it too

    path = tmp_path / "synclab.db"
    env = {"DATABASE_URL": f"sqlite:///{path}", "SYNCLAB_ADMIN_TOKEN": "a-token-for-the-test"}
    assert run(tmp_path, "db", "upgrade", **env).returncode == 0
    hold = Hold(tmp_path / "hold")  # never released: the command is killed inside its migration
    newer = newer_synclab(tmp_path, hold)
    (tmp_path / "upgrading").mkdir()
    with started(tmp_path / "upgrading", "db", "upgrade", **env, **newer) as upgrade:
        hold.until_holding(upgrade)
        _until_the_file_is_held(path, upgrade)
        with pytest.raises(SchemaError, match=r"^a `synclab db` command has been changing the schema of the "
                           r"database '.*synclab.db' for over 1 s: start the server once it has finished$"):
            lock_database(str(path), exclusive=True, wait=0.1, change_wait=1.0)
        assert f"(process {upgrade.process.pid}) is changing the schema" in caplog.text
        upgrade.process.kill()
        assert upgrade.process.wait(timeout(10)) == -signal.SIGKILL
    assert Path(str(path) + CHANGING_SUFFIX).exists()  # left behind by the kill
    port = free_port()
    with started(tmp_path, "serve", "--port", str(port), **env) as server:
        assert wait_until_healthy(f"http://127.0.0.1:{port}", server=server).status_code == 200
        assert "waits for it" not in server.stderr()
    with closing(sqlite3.connect(path)) as look:
        assert look.execute("SELECT version_num FROM alembic_version").fetchall() == [(head(),)]
