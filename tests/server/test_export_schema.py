"""``synclab export`` and ``synclab verify`` on a schema that is not this synclab's, or that a
``db upgrade`` would change while they read: refused before anything is written, and counted as
a reader that ``db upgrade`` must respect, as a running server is."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from sqlalchemy import insert, text, update

from server.cli import main
from server.experiments import parse_request, plan
from server.export import TABLES
from server.storage import (
    events,
    experiment_row,
    experiments,
    head,
    history,
    insert_experiment,
    make_engine,
    upgrade_schema,
)
from tests.server.harness import timeout
from tests.server.test_cli import (
    HEALTHY_SECONDS,
    SYNCLAB,
    environment,
    free_port,
    run,
    started,
    wait_until_healthy,
)
from tests.server.test_migrations import newer_synclab

#: every form of ``synclab export CODE …`` and of ``synclab verify CODE …``
FORMS = [
    ["export"],
    ["export", "--format", "json"],
    *(["export", "--table", t] for t in TABLES),
    *(["export", "--table", t, "--format", "csv"] for t in TABLES),
    *(["export", "--table", t, "--format", "json"] for t in TABLES),
    ["verify"],
    ["verify", "--json"],
]


def _experiment(url: str, events_: int = 0) -> str:
    """A database at this synclab's revision with one experiment (and ``events_`` events of
    about 200 bytes each); its code."""
    engine = make_engine(url)
    try:
        upgrade_schema(engine)  # made by the migrations, as `db upgrade` makes it
        spec = plan(parse_request({"game": "bimatrix", "participants": 2, "group_size": 2, "period_length": 60}))
        insert_experiment(engine, spec)
        row = experiment_row(engine, spec.code)
        assert row is not None
        if events_:
            now = dt.datetime.now(dt.UTC)
            with engine.begin() as conn:
                conn.execute(insert(events), [
                    {"experiment_id": row["id"], "seq": n, "timestamp": now, "channel": "note", "value": "x" * 180}
                    for n in range(1, events_ + 1)
                ])
                conn.execute(update(experiments).where(experiments.c.id == row["id"]).values(last_seq=events_))
        return spec.code
    finally:
        engine.dispose()


def _refused_in_one_line(
    capfdbinary: pytest.CaptureFixture[bytes], code: str, found: str, needed: str
) -> None:
    for form in FORMS:
        assert main([form[0], code, *form[1:]]) == 2, form
        out, err = capfdbinary.readouterr()
        said = err.decode().splitlines()
        assert out == b"", (form, out[:200])
        assert len(said) == 1, (form, said)
        assert said[0].startswith("synclab: the database ") and found in said[0] and needed in said[0], (form, said)


def test_export_and_verify_refuse_a_downgraded_database_before_writing_anything(
    tmp_path: Path, database_url: str, capfdbinary: pytest.CaptureFixture[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every form of ``export`` and ``verify`` on a database downgraded one revision: exit 2, one
    line on stderr naming the revision found, the one needed and ``synclab db upgrade``, nothing on
    stdout. Until 2026-12-06 ``export --table events`` wrote its CSV header, then exited 2 on
    ``no such column: events.recipient_id``, and the JSON document its first part."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATABASE_URL", database_url)
    code = _experiment(database_url)
    before = next(before for name, before, _ in history() if name == head())
    assert before is not None
    assert main(["db", "downgrade", before, "--yes"]) == 0
    capfdbinary.readouterr()
    _refused_in_one_line(capfdbinary, code, f"at revision {before}", f"needs {head()}: back it up, then run `synclab db upgrade`")


def test_export_and_verify_refuse_a_database_a_newer_synclab_upgraded_before_writing_anything(
    tmp_path: Path, database_url: str, capfdbinary: pytest.CaptureFixture[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database at a revision this synclab does not know (a newer synclab's): every form of
    ``export`` and ``verify`` exits 2 in one line naming it and this synclab's newest, nothing on
    stdout. Until 2026-12-06 they read it as if it were this synclab's."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATABASE_URL", database_url)
    code = _experiment(database_url)
    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = '0099_throwaway'"))
    finally:
        engine.dispose()
    _refused_in_one_line(capfdbinary, code, "at revision 0099_throwaway, which this synclab does not know",
                         f"its newest is {head()}")


@pytest.mark.parametrize("form", [["export", "--table", "events"], ["export"]])
def test_db_upgrade_refuses_while_an_export_reads_and_upgrades_once_it_ended(
    tmp_path: Path, database_url: str, form: list[str]
) -> None:
    """A real ``synclab export`` held in the middle of its output (stdout a pipe nobody reads yet,
    past the pipe's capacity) and a real ``db upgrade`` of a newer synclab started meanwhile: the
    upgrade exits 2 in one line naming the export (its process on SQLite), changing nothing; the
    export then ends whole (exit 0) and the upgrade then passes. Until 2026-12-06 the upgrade
    changed the schema under the export."""
    env = {"DATABASE_URL": database_url, "SYNCLAB_ADMIN_TOKEN": "a-token-for-the-test"}
    code = _experiment(database_url, events_=2000)  # ~400 KB of output: past a pipe's 64 KB
    here = tmp_path / "export"
    here.mkdir()
    with subprocess.Popen([*SYNCLAB, form[0], code, *form[1:]], cwd=here, env=environment(here, **env),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE) as exporting:
        try:
            assert exporting.stdout is not None and exporting.stderr is not None
            first = exporting.stdout.read(1)  # it has begun writing: the mark was taken before
            assert first, exporting.stderr.read()
            deadline = time.monotonic() + timeout(30)
            while True:  # until it is held in a write, the pipe full (bounded)
                with open(f"/proc/{exporting.pid}/wchan") as wchan:
                    if "pipe" in wchan.read():
                        break
                assert exporting.poll() is None and time.monotonic() < deadline, "the export never filled the pipe"
                time.sleep(0.05)
            upgrading = tmp_path / "upgrade"
            upgrading.mkdir()
            newer = newer_synclab(tmp_path)
            refused = run(upgrading, "db", "upgrade", **env, **newer)
            said = refused.stderr.splitlines()
            assert refused.returncode == 2 and len(said) == 1, (refused.returncode, said)
            assert "or a command (export, verify, token) reads it" in said[0] and said[0].endswith("nothing was changed"), said
            if database_url.startswith("sqlite"):
                assert f"(process {exporting.pid})" in said[0], said
            rest = exporting.stdout.read()
            assert exporting.wait(timeout(60)) == 0, exporting.stderr.read()
        finally:
            if exporting.poll() is None:
                exporting.kill()
                exporting.wait(timeout(10))
    output = first + rest
    if form == ["export"]:
        assert len(orjson.loads(output)["events"]) == 2000
    else:
        assert len(output.decode().splitlines()) == 2001
    upgraded = run(upgrading, "db", "upgrade", **env, **newer)
    assert upgraded.returncode == 0 and "to 0099_throwaway" in upgraded.stdout, upgraded.stderr


#: a process that holds an ``flock`` shared on the file of its first argument until the file of its
#: third exists (bounded), having made the file of its second once it holds it
_SHARING = [sys.executable, "-c", (
    "import fcntl, os, pathlib, sys, time\n"
    "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
    "fcntl.flock(fd, fcntl.LOCK_SH)\n"
    "pathlib.Path(sys.argv[2]).touch()\n"
    "deadline = time.monotonic() + 120\n"
    "while not pathlib.Path(sys.argv[3]).exists() and time.monotonic() < deadline:\n"
    "    time.sleep(0.02)\n"
)]


def _waiting_on(path: Path, pid: int) -> bool:
    """Whether ``pid`` waits for an ``flock`` on ``path`` (a ``->`` line of ``/proc/locks``)."""
    st = path.stat()
    device = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "->" in fields and "FLOCK" in fields and device in fields and str(pid) in fields:
            return True
    return False


def test_an_export_started_as_db_upgrade_begins_its_change_on_sqlite_is_not_changed_under(tmp_path: Path) -> None:
    """The window of the SQLite mark: a ``db upgrade`` of a newer synclab held just as it marks
    its change (the mark's file is held shared by another process, so its exclusive lock waits),
    and a long export started then. The upgrade marks its change before it tries the database's
    lock, so the export, which found no change under way, holds its reader's mark and the upgrade
    refuses (exit 2, naming it). Until 2026-12-06 the upgrade held the database's lock before it
    marked the change: the export, finding the lock held and no mark, read without a mark of its
    own, and the upgrade changed the schema under it (exit 0)."""
    url = f"sqlite:///{tmp_path}/synclab.db"
    env = {"DATABASE_URL": url, "SYNCLAB_ADMIN_TOKEN": "a-token-for-the-test"}
    code = _experiment(url, events_=2000)
    marker = tmp_path / "synclab.db.synclab-schema-change"
    newer = newer_synclab(tmp_path)
    with contextlib.ExitStack() as stack:
        sharing = stack.enter_context(subprocess.Popen([*_SHARING, str(marker), str(tmp_path / "shared"),
                                                        str(tmp_path / "let-go")]))
        stack.callback(lambda: (tmp_path / "let-go").touch())
        _until(lambda: (tmp_path / "shared").exists(), "the helper never held the mark's file")
        upgrade_dir = tmp_path / "upgrade"
        upgrade_dir.mkdir()
        upgrade = stack.enter_context(subprocess.Popen(
            [*SYNCLAB, "db", "upgrade"], cwd=upgrade_dir, env=environment(upgrade_dir, **env, **newer),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        stack.callback(lambda: upgrade.kill() if upgrade.poll() is None else None)
        _until(lambda: _waiting_on(marker, upgrade.pid), "the upgrade never waited for the mark's file")
        export_dir = tmp_path / "export"
        export_dir.mkdir()
        exporting = stack.enter_context(subprocess.Popen(
            [*SYNCLAB, "export", code, "--table", "events"], cwd=export_dir, env=environment(export_dir, **env),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        stack.callback(lambda: exporting.kill() if exporting.poll() is None else None)
        assert exporting.stdout is not None and exporting.stderr is not None
        first = exporting.stdout.read(1)
        assert first, exporting.stderr.read()
        _until(lambda: "pipe" in Path(f"/proc/{exporting.pid}/wchan").read_text(), "the export never filled the pipe")
        (tmp_path / "let-go").touch()
        out, err = upgrade.communicate(timeout=timeout(60))
        assert upgrade.returncode == 2, (out, err)
        assert f"(process {exporting.pid})" in err and "or a command (export, verify, token) reads it" in err, err
        rest = exporting.stdout.read()
        assert exporting.wait(timeout(60)) == 0, exporting.stderr.read()
        assert sharing.wait(timeout(30)) == 0
    assert len((first + rest).decode().splitlines()) == 2001


def _until(done: Callable[[], bool], why: str, wait: float = 60) -> None:
    deadline = time.monotonic() + timeout(wait)
    while not done():
        assert time.monotonic() < deadline, why
        time.sleep(0.02)


def test_a_server_started_while_an_export_reads_its_sqlite_file_waits_for_it_then_serves(tmp_path: Path) -> None:
    """SQLite with the journal (the default, which holds the file alone): a real ``synclab serve``
    started while a long export is held in the middle of its output says once that it waits,
    naming the export's process, and serves once the export has ended whole. Until 2026-12-06 it
    was refused after 2 s, as beside another server ("another synclab process has the database
    … stop the other first"), since the export holds the file's lock shared while it reads."""
    url = f"sqlite:///{tmp_path}/synclab.db"
    env = {"DATABASE_URL": url, "SYNCLAB_ADMIN_TOKEN": "a-token-for-the-test"}
    code = _experiment(url, events_=2000)
    for name in ("export", "serve"):
        (tmp_path / name).mkdir()
    port = free_port()
    with subprocess.Popen([*SYNCLAB, "export", code, "--table", "events"], cwd=tmp_path / "export",
                          env=environment(tmp_path / "export", **env),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE) as exporting:
        try:
            assert exporting.stdout is not None and exporting.stderr is not None
            first = exporting.stdout.read(1)  # it has begun writing: its marks were taken before
            assert first, exporting.stderr.read()
            _until(lambda: "pipe" in Path(f"/proc/{exporting.pid}/wchan").read_text(), "the export never filled the pipe")
            with started(tmp_path / "serve", "serve", "--port", str(port), **env) as server:
                _until(lambda: "is reading the database" in server.stderr_path.read_text(),
                       f"the server never said it waits; {server.stderr()}", wait=HEALTHY_SECONDS)
                time.sleep(3)  # past the 2 s after which it was refused
                assert server.process.poll() is None, server.stderr()
                rest = exporting.stdout.read()
                assert exporting.wait(timeout(60)) == 0, exporting.stderr.read()
                assert wait_until_healthy(f"http://127.0.0.1:{port}").status_code == 200
                said = [line for line in server.stderr_path.read_text().splitlines() if "is reading the database" in line]
                assert len(said) == 1 and f"(process {exporting.pid})" in said[0], said
                assert "this server waits for it to finish (up to 30 s)" in said[0], said
        finally:
            if exporting.poll() is None:
                exporting.kill()
                exporting.wait(timeout(10))
    assert len((first + rest).decode().splitlines()) == 2001
