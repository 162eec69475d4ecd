"""The commands that open a database (``export``, ``verify``, ``token``, ``db``) started while
``synclab db upgrade`` changes its schema: each waits for the change, as a server does, saying so
once, then reads the schema it left; or gives up in one line after the server's 30 s.

The upgrade is a real ``synclab db upgrade`` of a newer synclab (:func:`newer_synclab`) whose
migration waits inside its transaction, with the schema lock and the servers' mark held, until the
test releases it (:class:`Hold`)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from sqlalchemy import Engine, event, text

from server.exceptions import SchemaError, StoppedWaiting
from server.experiments import parse_request, plan
from server.runtime import stopped_while_waiting
from server.storage import (
    SERVING_LOCK,
    hold_serving,
    insert_experiment,
    make_engine,
    wait_for_change,
)
from tests.server.harness import timeout
from tests.server.test_cli import (
    SYNCLAB,
    Running,
    environment,
    free_port,
    run,
    started,
    wait_until_healthy,
)
from tests.server.test_db_command import _until_the_file_is_held
from tests.server.test_migrations import Hold, newer_synclab

#: what a command says, once, as it starts to wait
WAITS = "this command waits for it to finish (up to 30 s)"


@dataclass
class _Command:
    """A ``synclab`` command run to its end, its stdout and stderr in files (nothing read while it runs)."""

    process: subprocess.Popen[bytes]
    here: Path

    def stdout(self) -> str:
        return (self.here / "stdout").read_text()

    def stderr(self) -> str:
        return (self.here / "stderr").read_text()

    def end(self, wait: float) -> int:
        return self.process.wait(timeout(wait))


@contextlib.contextmanager
def _commands(tmp_path: Path, runs: dict[str, list[str]], env: dict[str, str]) -> Iterator[dict[str, _Command]]:
    """Start each of ``runs`` (name: the arguments of ``synclab``, or a whole command line when the
    first is the interpreter) at once, each in a directory of its own; killed at the end."""
    started_ = {}
    try:
        for name, args in runs.items():
            here = tmp_path / name
            here.mkdir()
            with (here / "stdout").open("wb") as out, (here / "stderr").open("wb") as err:
                argv = args if args[:1] == SYNCLAB[:1] else [*SYNCLAB, *args]
                process = subprocess.Popen(argv, cwd=here, env=environment(here, **env), stdout=out, stderr=err)
            started_[name] = _Command(process, here)
        yield started_
    finally:
        for command in started_.values():
            if command.process.poll() is None:
                command.process.kill()
                command.process.wait(timeout(10))


def _setting_up(tmp_path: Path, kind: str, request: pytest.FixtureRequest) -> tuple[dict[str, str], str]:
    """A database at this synclab's revision with one experiment: the environment and its code."""
    url = f"sqlite:///{tmp_path}/synclab.db" if kind == "sqlite" else request.getfixturevalue("postgres_url")
    env = {"DATABASE_URL": url, "SYNCLAB_ADMIN_TOKEN": "a-token-for-the-test"}
    made = run(tmp_path, "db", "upgrade", **env)
    assert made.returncode == 0, made.stderr
    spec = plan(parse_request({"game": "bimatrix", "participants": 2, "group_size": 2, "period_length": 60}))
    engine = make_engine(url)
    try:
        insert_experiment(engine, spec)
    finally:
        engine.dispose()
    return env, spec.code


def _until_changing(tmp_path: Path, url: str, upgrade: Running) -> str:
    """Until the upgrade holds its change (in its migration's transaction): its process or session, in words."""
    if url.startswith("sqlite"):
        _until_the_file_is_held(tmp_path / "synclab.db", upgrade)
        return f"process {upgrade.process.pid}"
    engine = make_engine(url)
    deadline = time.monotonic() + timeout(30)
    try:
        while True:
            with engine.connect() as conn:
                holder = conn.execute(text(
                    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND mode = 'ExclusiveLock'"
                    " AND classid = :key AND objsubid = 2"
                    " AND objid = (hashtext(current_schema())::bigint & 4294967295)::oid"
                ), {"key": SERVING_LOCK}).scalar()
            if holder is not None:
                return f"its session {holder}"
            assert upgrade.process.poll() is None, upgrade.stderr()
            assert time.monotonic() < deadline, f"the upgrade never held the servers' mark; {upgrade.stderr()}"
            time.sleep(0.1)
    finally:
        engine.dispose()


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_commands_started_while_db_upgrade_changes_the_schema_wait_for_it_then_read_the_new_one(
    tmp_path: Path, kind: str, request: pytest.FixtureRequest
) -> None:
    """``export``, ``verify``, ``token list`` and a second ``db upgrade`` of the newer synclab,
    started while its ``db upgrade`` is inside its migration: each says once on stderr that it
    waits, naming the upgrade's process (SQLite) or session (PostgreSQL), waits, and then runs on
    the new schema (exit 0; the second upgrade finds it at the new revision already). Until
    2026-12-05 they read the old schema at once and exited 2 (``no such column:
    experiments.throwaway``, ``table 'experiments' lacks ['throwaway']``, ``this synclab needs
    0099_throwaway``); the second upgrade waited without a word."""
    env, code = _setting_up(tmp_path, kind, request)
    hold = Hold(tmp_path / "hold")
    newer = newer_synclab(tmp_path, hold)
    (tmp_path / "upgrading").mkdir()
    runs = {"export": ["export", code], "verify": ["verify", code], "tokens": ["token", "list"],
            "again": ["db", "upgrade"]}
    with started(tmp_path / "upgrading", "db", "upgrade", **env, **newer) as upgrade:
        hold.until_holding(upgrade)
        holder = _until_changing(tmp_path, env["DATABASE_URL"], upgrade)
        with _commands(tmp_path, runs, {**env, **newer}) as commands:
            deadline = time.monotonic() + timeout(30)
            for name, command in commands.items():
                while WAITS not in command.stderr():
                    assert command.process.poll() is None, (name, command.stdout(), command.stderr())
                    assert time.monotonic() < deadline, f"{name} never said it waits; {command.stderr()}"
                    time.sleep(0.05)
            assert upgrade.process.poll() is None, "the upgrade ended before every command waited for it"
            hold.release()
            assert upgrade.process.wait(timeout(40)) == 0, upgrade.stderr()
            ends = {name: command.end(30) for name, command in commands.items()}
            for name, command in commands.items():
                said = command.stderr().splitlines()
                assert ends[name] == 0 and len(said) == 1, (name, ends[name], command.stdout(), said)
                assert said[0].startswith(f"synclab: a `synclab db` command ({holder}) is changing the schema"), said
    exported = orjson.loads(commands["export"].stdout())
    assert exported["experiment"]["code"] == code
    assert f"synclab verify {code}:" in commands["verify"].stdout()
    assert commands["tokens"].stdout().startswith("name")
    assert "is already at 0099_throwaway" in commands["again"].stdout()


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_command_gives_up_on_a_schema_change_past_the_servers_wait_in_one_line(
    tmp_path: Path, kind: str, request: pytest.FixtureRequest
) -> None:
    """``export`` started while a ``db upgrade`` changes the schema for longer than it waits (30 s;
    here ``SYNCLAB_SCHEMA_WAIT=3``) exits 2 with one line past the line that said it waits, and
    writes nothing to stdout; the upgrade goes on. Until 2026-12-05 it read the old schema at once:
    exit 2, ``no such column: experiments.throwaway`` (or, on PostgreSQL, ``column … does not exist``)."""
    env, code = _setting_up(tmp_path, kind, request)
    hold = Hold(tmp_path / "hold")  # never released: the upgrade is killed at the end
    newer = newer_synclab(tmp_path, hold)
    (tmp_path / "upgrading").mkdir()
    with started(tmp_path / "upgrading", "db", "upgrade", **env, **newer) as upgrade:
        hold.until_holding(upgrade)
        _until_changing(tmp_path, env["DATABASE_URL"], upgrade)
        begun = time.monotonic()
        waiting = {**env, **newer, "SYNCLAB_SCHEMA_WAIT": "3"}
        with _commands(tmp_path, {"export": ["export", code]}, waiting) as commands:
            export = commands["export"]
            assert export.end(30) == 2, export.stderr()
        assert time.monotonic() - begun >= 3
        said = export.stderr().splitlines()
        assert len(said) == 2 and WAITS.replace("30 s", "3 s") in said[0], said
        assert said[1].startswith("synclab: a `synclab db` command has been changing the schema of the database "), said
        assert said[1].endswith(" for over 3 s: run this command again once it has finished"), said
        assert export.stdout() == ""
        assert upgrade.process.poll() is None, upgrade.stderr()
        upgrade.process.send_signal(signal.SIGKILL)
        upgrade.process.wait(timeout(10))


def test_serve_on_postgres_started_while_db_upgrade_changes_the_schema_waits_for_it_then_serves(
    tmp_path: Path, postgres_url: str
) -> None:
    """PostgreSQL: ``synclab serve`` of the newer synclab, started while its ``db upgrade`` is inside
    its migration, says once that it waits (naming the upgrade's session), waits, and serves the
    revision the upgrade left, as the README says. Until 2026-12-05 its look at the revision before
    the app's start read the old one at once and refused it (exit 2, ``this synclab needs
    0099_throwaway``): only the app's own start waited, and it was never reached."""
    env = {"DATABASE_URL": postgres_url, "SYNCLAB_ADMIN_TOKEN": "a-token-for-the-test"}
    assert run(tmp_path, "db", "upgrade", **env).returncode == 0
    hold = Hold(tmp_path / "hold")
    newer = newer_synclab(tmp_path, hold)
    for name in ("upgrading", "serving"):
        (tmp_path / name).mkdir()
    port = free_port()
    with started(tmp_path / "upgrading", "db", "upgrade", **env, **newer) as upgrade:
        hold.until_holding(upgrade)
        holder = _until_changing(tmp_path, postgres_url, upgrade)
        with started(tmp_path / "serving", "serve", "--port", str(port), **env, **newer) as server:
            deadline = time.monotonic() + timeout(30)
            while "this server waits for it" not in server.stderr():
                assert server.process.poll() is None, server.stderr()
                assert time.monotonic() < deadline, f"the server never said it waits; {server.stderr()}"
                time.sleep(0.05)
            assert upgrade.process.poll() is None, "the upgrade ended before the server waited for it"
            hold.release()
            assert upgrade.process.wait(timeout(40)) == 0, upgrade.stderr()
            assert wait_until_healthy(f"http://127.0.0.1:{port}", wait=60).status_code == 200
            said = [line for line in server.stderr_path.read_text().splitlines() if "is changing the schema" in line]
            assert len(said) == 1 and f"({holder})" in said[0], said


@pytest.mark.parametrize(("kind", "how", "sig"), [
    ("sqlite", "serve", signal.SIGTERM),
    ("sqlite", "serve", signal.SIGINT),
    ("sqlite", "uvicorn", signal.SIGTERM),
    ("postgres", "serve", signal.SIGTERM),
    ("postgres", "uvicorn", signal.SIGTERM),
])
def test_a_server_waiting_for_a_schema_change_stops_at_once_on_sigterm_or_sigint(
    tmp_path: Path, kind: str, how: str, sig: signal.Signals, request: pytest.FixtureRequest
) -> None:
    """A server waiting for a ``db upgrade``'s schema change at its start (``synclab serve``
    before uvicorn starts; ``uvicorn server.app:app`` in the app's startup, on its event loop)
    stops within seconds of SIGTERM or SIGINT, saying so in one line, nothing started: ``serve``
    exits 0 (a stop, as after serving), uvicorn 3 (its startup failed). The upgrade goes on.
    Until 2026-12-05 ``serve`` died of the signal without a word (SIGTERM) or with a
    ``KeyboardInterrupt`` traceback (SIGINT), and uvicorn waited until the change was over,
    started, and only then stopped."""
    env, _ = _setting_up(tmp_path, kind, request)
    hold = Hold(tmp_path / "hold")  # never released: the upgrade is killed at the end
    newer = newer_synclab(tmp_path, hold)
    (tmp_path / "upgrading").mkdir()
    port = str(free_port())
    args = ["serve", "--port", port] if how == "serve" else [SYNCLAB[0], "-m", "uvicorn", "server.app:app", "--port", port]
    with started(tmp_path / "upgrading", "db", "upgrade", **env, **newer) as upgrade:
        hold.until_holding(upgrade)
        _until_changing(tmp_path, env["DATABASE_URL"], upgrade)
        with _commands(tmp_path, {how: args}, {**env, **newer}) as commands:
            server = commands[how]
            deadline = time.monotonic() + timeout(30)
            while "this server waits for it" not in server.stderr():
                assert server.process.poll() is None, server.stderr()
                assert time.monotonic() < deadline, f"the server never said it waits; {server.stderr()}"
                time.sleep(0.05)
            server.process.send_signal(sig)
            status = server.end(10)
            said = server.stderr()
            assert status == (0 if how == "serve" else 3), (status, said)
            assert f"synclab: stopped by {sig.name} while waiting for the database; nothing was started" in said, said
            assert "Traceback" not in said and "Application startup complete" not in said, said
        assert upgrade.process.poll() is None, upgrade.stderr()
        upgrade.process.send_signal(signal.SIGKILL)
        upgrade.process.wait(timeout(10))


def test_a_commands_mark_on_postgres_waits_for_a_change_and_gives_up_in_a_commands_words(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """PostgreSQL: a schema change that begins between an export's look for one and its mark (the
    servers' mark, held shared while it reads) is waited for there too, and given up on in a
    command's words. Until 2026-12-06 they were a server's: "this server waits", then "start the
    server once it has finished"."""
    engine = make_engine(postgres_url)
    try:
        with engine.connect() as change:  # a `db` command's hold on the mark: exclusive
            change.execute(text("SELECT pg_advisory_lock(:key, hashtext(current_schema()))"), {"key": SERVING_LOCK})
            with pytest.raises(SchemaError, match=r" for over 0\.5 s: run this command again once it has finished$"):
                hold_serving(postgres_url, 0.5, server=False)
            change.execute(text("SELECT pg_advisory_unlock_all()"))
    finally:
        engine.dispose()
    assert "is changing the schema of the database" in caplog.text
    assert "this command waits for it to finish (up to 0.5 s)" in caplog.text


def test_a_stop_in_the_middle_of_any_statement_of_the_wait_on_postgres_is_the_stop(postgres_url: str) -> None:
    """PostgreSQL: SIGTERM to a server waiting for a schema change comes in the middle of whichever
    statement the wait runs, not only the lock's: here the lock's timeout, set just after the line
    that says the server waits (made to take 5 s). The stop is :class:`StoppedWaiting`, at once,
    its session closed, not rolled back. Before, the rollback of a session mid-statement failed
    (psycopg: "another command is already in progress") and that error hid the stop: a test run
    of ``uvicorn server.app:app`` in a busy suite printed a traceback where the line was due."""
    assert threading.current_thread() is threading.main_thread(), "a signal's handler is the main thread's"

    def slow_timeout(_conn: object, _cursor: object, statement: str, parameters: object, *_: object) -> tuple[str, object]:
        if statement.startswith("SET LOCAL lock_timeout"):
            return "SELECT pg_sleep(5)", parameters
        return statement, parameters

    engine = make_engine(postgres_url)
    event.listen(Engine, "before_cursor_execute", slow_timeout, retval=True)
    try:
        with engine.connect() as change:  # a `db` command's hold on the mark: exclusive
            change.execute(text("SELECT pg_advisory_lock(:key, hashtext(current_schema()))"), {"key": SERVING_LOCK})
            said: list[str] = []
            stop = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM))
            began = time.monotonic()
            with stopped_while_waiting(), pytest.raises(StoppedWaiting, match=r"^stopped by SIGTERM while waiting"):
                stop.start()
                wait_for_change(postgres_url, 30, said.append, server=True)
            stop.join()
            assert time.monotonic() - began < 4, "the stop waited for the statement"
            assert len(said) == 1 and "this server waits for it" in said[0], said
            change.execute(text("SELECT pg_advisory_unlock_all()"))
    finally:
        event.remove(Engine, "before_cursor_execute", slow_timeout)
        engine.dispose()
