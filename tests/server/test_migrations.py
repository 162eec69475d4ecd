"""Schema migrations: a new database, a database of release 0.1.0, upgrades, refusals, two at once.

The release's databases are fixtures made by that release's own code (``tests/fixtures/
make_release.py``, run on a checkout of commit f8cbfbf): a SQLite file and a ``pg_dump`` of the
same two finished two-block experiments, with every REST page that release served for them.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, String, create_engine, func, insert, inspect, select, text, update
from sqlalchemy.engine import make_url

from server.cli import main
from server.storage import (
    DataWouldBeLost,
    add_otree_deliveries,
    deliveries,
    differences,
    downgrade_schema,
    events,
    head,
    list_deliveries,
    list_events,
    make_engine,
    normalise_url,
    participants,
    prepare_schema,
    results,
    schema_state,
    sessions,
    upgrade_schema,
)
from server.storage.schema import MIGRATIONS, SCHEMA_LOCK
from server.storage.serving import SERVING_LOCK
from server.storage.tables import client_ids, metadata
from tests.conftest import POSTGRES_URL
from tests.server.harness import timeout
from tests.server.test_cli import Running, free_port, run, started, wait_until_healthy
from tests.server.test_deliveries import _experiment_with_delivery

RELEASE = Path(__file__).resolve().parent.parent / "fixtures" / "release-0.1.0"
RELEASE_INFO = json.loads((RELEASE / "release.json").read_text())
TOKEN = "release-fixture-token"  # the token the release served with (the pages need no other)
ROOT = Path(__file__).resolve().parent.parent.parent


# --------------------------------------------------------------------------- the release's databases


def release_database(tmp_path: Path, database_url: str) -> str:
    """The release's database in this test's own place: the SQLite file copied, or the dump loaded."""
    if make_url(database_url).get_backend_name() == "sqlite":
        target = tmp_path / "release.db"
        shutil.copyfile(RELEASE / "synclab.db", target)
        return f"sqlite:///{target}"
    load_dump(RELEASE / "postgres.sql", RELEASE_INFO["schema"], database_url)
    return database_url


def load_dump(dump: Path, named: str, database_url: str) -> None:
    """A fixture's ``pg_dump`` of schema ``named`` into the schema of ``database_url`` (made by the
    fixture): its schema's name replaced, psql's own commands left out (``\\restrict``), and the
    session's settings undone with its connection."""
    found = re.search(r"search_path%3D(\w+)", database_url)
    assert found is not None, database_url
    schema = found[1]
    lines = [
        line
        for line in dump.read_text().splitlines()
        if not line.startswith("\\") and not line.startswith("CREATE SCHEMA ")
    ]
    sql = "\n".join(lines).replace(f"{named}.", f'"{schema}".')
    admin = create_engine(normalise_url(POSTGRES_URL))
    try:
        with admin.begin() as conn:
            conn.exec_driver_sql(sql)
    finally:
        admin.dispose()


def codes(database_url: str) -> list[str]:
    kind = "sqlite" if make_url(database_url).get_backend_name() == "sqlite" else "postgres"
    return list(RELEASE_INFO[kind])


def pages(database_url: str) -> dict[str, Any]:
    kind = "sqlite" if make_url(database_url).get_backend_name() == "sqlite" else "postgres"
    recorded: dict[str, Any] = json.loads((RELEASE / f"pages-{kind}.json").read_text())
    return recorded


def every_row(engine: Engine, columns: dict[str, list[str]] | None = None) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every synclab table in primary-key order, of the columns the database has
    (or of ``columns``: the ones an older database had, to compare before and after an upgrade)."""
    rows: dict[str, list[tuple[Any, ...]]] = {}
    with engine.connect() as conn:
        have = inspect(conn)
        for table in metadata.sorted_tables:
            if not have.has_table(table.name) or (columns is not None and table.name not in columns):
                continue  # a table of a later revision than the database's
            names = columns[table.name] if columns else [c["name"] for c in have.get_columns(table.name)]
            ordered = select(*(table.c[n] for n in names)).order_by(*table.primary_key.columns)
            rows[table.name] = [tuple(r) for r in conn.execute(ordered)]
    return rows


def column_names(engine: Engine) -> dict[str, list[str]]:
    with engine.connect() as conn:
        have = inspect(conn)
        return {
            t.name: [c["name"] for c in have.get_columns(t.name)] for t in metadata.sorted_tables if have.has_table(t.name)
        }


def indexes(engine: Engine, table: str) -> set[str]:
    with engine.connect() as conn:
        return {str(i["name"]) for i in inspect(conn).get_indexes(table)}


def contains(recorded: Any, now: Any, where: str = "") -> None:
    """Every value the release gave is given again, the same (fields added since are allowed)."""
    if isinstance(recorded, dict):
        assert isinstance(now, dict), f"{where}: expected an object, got {now!r}"
        for key, value in recorded.items():
            assert key in now, f"{where}: {key!r} is gone"
            contains(value, now[key], f"{where}.{key}")
    elif isinstance(recorded, list):
        assert isinstance(now, list) and len(now) == len(recorded), f"{where}: {len(recorded)} items, now {now!r}"
        for i, (a, b) in enumerate(zip(recorded, now, strict=True)):
            contains(a, b, f"{where}[{i}]")
    else:
        assert recorded == now, f"{where}: {recorded!r} then, {now!r} now"


def csv_contains(recorded: str, now: str, where: str) -> None:
    contains(list(csv.DictReader(io.StringIO(recorded))), list(csv.DictReader(io.StringIO(now))), where)


# --------------------------------------------------------------------------- a copy of synclab with one more migration


THROWAWAY = '''"""A throwaway column, to try an upgrade.

Revision ID: 0099_throwaway
Revises: {down}
"""

import time
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision = "0099_throwaway"
down_revision = "{down}"
branch_labels = None
depends_on = None
HOLD = {hold!r}


def upgrade() -> None:
    if HOLD:  # a test's handshake (tests/server/test_migrations.py: Hold): say it runs, then wait
        Path(HOLD, "holding").touch()
        deadline = time.monotonic() + 300
        while not Path(HOLD, "release").exists():
            if time.monotonic() > deadline:
                raise RuntimeError("the test never released the migration")
            time.sleep(0.02)
    with op.batch_alter_table("experiments") as batch:
        batch.add_column(sa.Column("throwaway", sa.String(length=20), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("experiments") as batch:
        batch.drop_column("throwaway")
'''


class Hold:
    """The throwaway migration held: once running (the schema lock held) it says so, and goes on
    only once released, so a test times another process against it by what happened, not by a
    sleep (a fixed pause: on a loaded machine a process started next could still be importing when
    it ended, or a first one not yet have taken the lock when the second came)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir()

    def until_holding(self, command: Running, wait: float = 90) -> None:
        """Until ``command`` runs the migration (it holds the schema lock)."""
        deadline = time.monotonic() + timeout(wait)
        while not (self.folder / "holding").exists():
            assert command.process.poll() is None, f"the command ended before its migration ran; {command.stderr()}"
            assert time.monotonic() < deadline, f"the migration did not run within {timeout(wait):g} s; {command.stderr()}"
            time.sleep(0.02)

    def release(self) -> None:
        (self.folder / "release").touch()


def newer_synclab(tmp_path: Path, hold: Hold | None = None) -> dict[str, str]:
    """A copy of this synclab whose tables have one more column, with the migration that adds it
    (which, with ``hold``, waits in its transaction until released).

    Returns the environment that runs the copy (its ``server`` and ``groups`` packages first on the
    path: the copied server imports this checkout's core, not an installed one's).
    """
    source = tmp_path / "newer"
    for package in ("server", "groups"):
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    versions = source / "server" / "storage" / "migrations" / "versions"
    held = str(hold.folder) if hold is not None else ""
    (versions / "0099_throwaway.py").write_text(THROWAWAY.format(down=head(), hold=held))
    tables = source / "server" / "storage" / "tables.py"
    declared = tables.read_text()
    anchor = "\n\n\nclass Block(SQLModel"  # the end of the experiments' table
    assert anchor in declared
    tables.write_text(declared.replace(
        anchor, "\n    throwaway: str | None = Field(default=None, max_length=20)" + anchor
    ))
    return {"PYTHONPATH": str(source)}


# --------------------------------------------------------------------------- a new database


def test_a_new_database_is_made_at_the_newest_revision_by_the_migrations(database_url: str) -> None:
    """An empty database gets every migration; its tables are then exactly the SQLModel tables
    (Alembic's autogenerate comparison finds nothing), so no table can change without a migration."""
    engine = make_engine(database_url)
    try:
        assert schema_state(engine).empty
        found = prepare_schema(engine)
        assert found.empty
        state = schema_state(engine)
        assert state.current and state.revision == head()
        assert differences(engine) == []
    finally:
        engine.dispose()


def test_the_comparison_sees_a_table_changed_without_a_migration(database_url: str) -> None:
    """The check has teeth: a column added by hand and an index dropped are both reported."""
    engine = make_engine(database_url)
    try:
        prepare_schema(engine)
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE blocks ADD COLUMN colour VARCHAR(10)"))
            conn.execute(text("DROP INDEX ix_ticks_group_id"))
        found = " | ".join(differences(engine))
        assert "colour" in found and "ix_ticks_group_id" in found, found
    finally:
        engine.dispose()


def test_the_comparison_sees_an_index_made_whole_that_should_be_partial(database_url: str) -> None:
    """Alembic's comparison does not read an index's ``WHERE``: ours does, so a migration that
    leaves the index of stand-in events whole is reported."""
    engine = make_engine(database_url)
    try:
        prepare_schema(engine)
        assert differences(engine) == []
        with engine.begin() as conn:
            conn.execute(text("DROP INDEX ix_events_standin"))
            conn.execute(text("CREATE INDEX ix_events_standin ON events (group_id, seq)"))
        assert differences(engine) == ["partial index here, not in the database: ix_events_standin"]
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- the release's database


def test_a_database_of_release_0_1_0_upgrades_keeping_every_row_and_every_page(
    tmp_path: Path, database_url: str
) -> None:
    """``synclab db upgrade`` stamps the release's database (no version table) and upgrades it: every
    row of every table is still there unchanged (each ``result`` event names its recipient, whose
    result it is, in the column added since), ``synclab verify`` passes for both experiments,
    and a server on it answers every REST page and export as the release did."""
    url = release_database(tmp_path, database_url)
    engine = make_engine(url)
    try:
        before, old_columns = every_row(engine), column_names(engine)
        assert schema_state(engine).legacy
        assert len(before["events"]) > 100 and len(before["results"]) > 10 and len(before["ticks"]) > 5
    finally:
        engine.dispose()

    upgraded = run(tmp_path, "db", "upgrade", DATABASE_URL=url)
    assert upgraded.returncode == 0, upgraded.stderr
    assert "from synclab 0.1.0" in upgraded.stdout and head() in upgraded.stdout

    engine = make_engine(url)
    try:
        assert schema_state(engine).current
        assert every_row(engine, old_columns) == before
        assert differences(engine) == []
        assert result_recipients(engine) == (whose_results(engine), len(before["events"]) - len(before["results"]))
    finally:
        engine.dispose()
    for code in codes(url):
        verified = run(tmp_path, "verify", code, DATABASE_URL=url)
        assert verified.returncode == 0, verified.stdout + verified.stderr

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with started(tmp_path, "serve", "--port", str(port), DATABASE_URL=url, SYNCLAB_ADMIN_TOKEN=TOKEN):
        wait_until_healthy(base)
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=timeout(10)) as http:
            for path, recorded in pages(url).items():
                answer = http.get(path)
                assert answer.status_code == 200, (path, answer.text)
                if "export.csv" in path:
                    csv_contains(recorded, answer.text, path)
                else:
                    contains(recorded, json.loads(answer.text.replace(base, "BASE")), path)


def test_serve_refuses_the_release_database_in_one_line_and_serve_upgrade_upgrades_it(
    tmp_path: Path, database_url: str
) -> None:
    """``synclab serve`` on the release's database exits 2 with one line naming the revision it is
    at, the one it needs and the command; nothing is changed; ``serve --upgrade`` upgrades and serves."""
    url = release_database(tmp_path, database_url)
    refused = run(tmp_path, "serve", "--port", str(free_port()), DATABASE_URL=url)
    assert refused.returncode == 2, (refused.stdout, refused.stderr)
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1, refused.stderr
    assert "synclab 0.1.0" in lines[0] and head() in lines[0] and "synclab db upgrade" in lines[0]
    engine = make_engine(url)
    try:
        assert schema_state(engine).legacy
    finally:
        engine.dispose()

    port = free_port()
    with started(tmp_path, "serve", "--upgrade", "--port", str(port), DATABASE_URL=url,
                 SYNCLAB_ADMIN_TOKEN=TOKEN) as running:
        assert wait_until_healthy(f"http://127.0.0.1:{port}").status_code == 200
        listed = httpx.get(f"http://127.0.0.1:{port}/api/experiments", headers={"Authorization": f"Bearer {TOKEN}"})
        assert sorted(e["code"] for e in listed.json()["results"]) == sorted(codes(url))
        assert any("upgraded the database" in line for line in running.seen + _drain(running))


def result_recipients(engine: Engine) -> tuple[dict[tuple[int, int], int], int]:
    """The recipient each ``result`` event names, by (experiment, seq); and how many other events name none."""
    with engine.connect() as conn:
        named = conn.execute(
            select(events.c.experiment_id, events.c.seq, events.c.recipient_id).where(events.c.channel == "result")
        ).all()
        others = conn.execute(
            select(func.count()).select_from(events).where(events.c.channel != "result", events.c.recipient_id.is_(None))
        ).scalar_one()
    return {(e, s): r for e, s, r in named}, others


def whose_results(engine: Engine) -> dict[tuple[int, int], int]:
    """The participant of each result, by its event's (experiment, seq)."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(results.c.experiment_id, results.c.seq, sessions.c.participant_id)
            .join(sessions, sessions.c.id == results.c.session_id)
        ).all()
    return {(e, s): p for e, s, p in rows}


def _drain(running: Any) -> list[str]:
    lines = []
    while not running.lines.empty():
        line = running.lines.get()
        if line is not None:
            lines.append(line)
    return lines


def test_a_database_made_before_2026_11_22_loses_its_old_group_index(tmp_path: Path) -> None:
    """Builds before 2026-11-22 indexed every event by group: the upgrade drops that index and
    makes the partial one of ``state`` events, and changes no row."""
    url = release_database(tmp_path, "sqlite://")
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("DROP INDEX ix_events_group_state"))
            conn.execute(text("CREATE INDEX ix_events_group_id ON events (group_id)"))
        before, old_columns = every_row(engine), column_names(engine)
        upgrade_schema(engine)
        assert "ix_events_group_id" not in indexes(engine, "events")
        assert "ix_events_group_state" in indexes(engine, "events")
        assert every_row(engine, old_columns) == before
        assert differences(engine) == []
    finally:
        engine.dispose()


def test_a_database_older_than_0_1_0_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    """Tables without a column the baseline has cannot be stamped: exit 2 naming the table and
    column, and no version table is written."""
    url = release_database(tmp_path, "sqlite://")
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE experiments DROP COLUMN block_pause"))
    finally:
        engine.dispose()
    result = run(tmp_path, "db", "upgrade", DATABASE_URL=url)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "'experiments'" in result.stderr and "block_pause" in result.stderr
    engine = make_engine(url)
    try:
        assert schema_state(engine).legacy
        with engine.connect() as conn:
            assert "alembic_version" not in inspect(conn).get_table_names()
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- a newer synclab


def test_a_newer_synclab_refuses_this_database_until_db_upgrade_then_serves_it(tmp_path: Path) -> None:
    """A copy of synclab with a throwaway column and its migration: its ``serve`` refuses a
    database made by this synclab with the revision it is at and the one it needs; after its
    ``db upgrade`` it serves, the rows are there, and ``db check`` passes. This synclab then
    refuses the upgraded database: it does not know that revision."""
    url = f"sqlite:///{tmp_path}/synclab.db"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with started(tmp_path, "serve", "--port", str(port), DATABASE_URL=url, SYNCLAB_ADMIN_TOKEN=TOKEN):
        wait_until_healthy(base)
        created = httpx.post(f"{base}/api/experiments", headers={"Authorization": f"Bearer {TOKEN}"},
                             json={"game": "bimatrix", "participants": 2, "group_size": 2}, timeout=timeout(5))
        assert created.status_code == 201, created.text

    newer = newer_synclab(tmp_path)
    refused = run(tmp_path, "serve", "--port", str(free_port()), DATABASE_URL=url, **newer)
    assert refused.returncode == 2, (refused.stdout, refused.stderr)
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert f"is at revision {head()}; this synclab needs 0099_throwaway" in refused.stderr
    assert "synclab db upgrade" in refused.stderr
    behind = run(tmp_path, "db", "current", DATABASE_URL=url, **newer)
    assert behind.returncode == 1 and head() in behind.stdout

    upgraded = run(tmp_path, "db", "upgrade", DATABASE_URL=url, **newer)
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"from {head()} to 0099_throwaway" in upgraded.stdout
    assert run(tmp_path, "db", "check", DATABASE_URL=url, **newer).returncode == 0
    with started(tmp_path, "serve", "--port", str(port), DATABASE_URL=url, SYNCLAB_ADMIN_TOKEN=TOKEN, **newer):
        wait_until_healthy(base)
        listed = httpx.get(f"{base}/api/experiments", headers={"Authorization": f"Bearer {TOKEN}"})
        assert [e["code"] for e in listed.json()["results"]] == [created.json()["code"]]

    ahead = run(tmp_path, "serve", "--port", str(free_port()), DATABASE_URL=url)
    assert ahead.returncode == 2, (ahead.stdout, ahead.stderr)
    assert "0099_throwaway, which this synclab does not know" in ahead.stderr


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_two_processes_upgrading_at_once_take_turns(tmp_path: Path, kind: str, request: pytest.FixtureRequest) -> None:
    """Two ``db upgrade`` at once, the first holding the schema lock in a slow migration: the second
    waits (on PostgreSQL it is seen waiting on an advisory lock: the servers' mark the first holds
    exclusively, as every command waits for a change under way, or the schema lock) and ends after
    the first, finding nothing left to do; the database is upgraded once and every row is there."""
    url = release_database(tmp_path, "sqlite://" if kind == "sqlite" else str(request.getfixturevalue("postgres_url")))
    engine = make_engine(url)
    before, old_columns = every_row(engine), column_names(engine)
    engine.dispose()
    hold = Hold(tmp_path / "hold")
    env = {"DATABASE_URL": url, **newer_synclab(tmp_path, hold)}
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
    with started(tmp_path / "first", "db", "upgrade", **env) as first:
        hold.until_holding(first)
        with started(tmp_path / "second", "db", "upgrade", **env) as second:
            if kind == "postgres":
                _until_waiting_on_the_schema_lock(second)
            else:
                _until_it_opens(second, Path(make_url(url).database or ""))
            hold.release()
            assert first.process.wait(timeout(30)) == 0, first.stderr()
            first_ended = time.monotonic()
            assert second.process.wait(timeout(30)) == 0, second.stderr()
            assert time.monotonic() >= first_ended
            first.wait_for(re.compile(r"upgraded .* to 0099_throwaway"))
            second.wait_for(re.compile(r"already at 0099_throwaway"))
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == ["0099_throwaway"]
        after = every_row(engine, old_columns)
        assert {t: len(r) for t, r in after.items()} == {t: len(r) for t, r in before.items()}
    finally:
        engine.dispose()


def _until_it_opens(command: Running, path: Path, wait: float = 90.0) -> None:
    """Until ``command`` waits for the change under way: it has said so on stderr (every command
    waits for the change's mark, ``serving.wait_for_change``), or it has the SQLite file ``path``
    open (``db upgrade`` opens it for the transaction that takes the write lock at once, ``BEGIN
    IMMEDIATE``, and waits there, its ``busy_timeout``, while another holds it)."""
    deadline = time.monotonic() + timeout(wait)
    fds = Path(f"/proc/{command.process.pid}/fd")
    while True:
        if "waits for it to finish" in command.stderr_path.read_text(errors="replace"):
            return
        with contextlib.suppress(OSError):  # a descriptor closed while listed
            if any(Path(os.readlink(fd)) == path.resolve() for fd in fds.iterdir()):
                return
        assert command.process.poll() is None, f"the second upgrade ended before it opened {path}; {command.stderr()}"
        assert time.monotonic() < deadline, f"the second upgrade never opened {path}; {command.stderr()}"
        time.sleep(0.02)


def _until_waiting_on_the_schema_lock(command: Running, wait: float = 90.0) -> None:
    """Until a session waits for the advisory lock of schema changes, or for the servers' mark a
    change holds exclusively (``pg_locks``, not granted)."""
    admin = create_engine(normalise_url(POSTGRES_URL))
    deadline = time.monotonic() + timeout(wait)
    try:
        while True:
            with admin.connect() as conn:
                waiting = conn.execute(
                    # the two-key locks (schema changes or servers, this schema): classid the key, objsubid 2
                    text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                         " AND classid IN (:key, :mark) AND objsubid = 2 AND NOT granted"),
                    {"key": SCHEMA_LOCK, "mark": SERVING_LOCK},
                ).scalar_one()
            if waiting:
                return
            assert command.process.poll() is None, f"the second upgrade ended without waiting; {command.stderr()}"
            assert time.monotonic() < deadline, f"the second upgrade never waited on the schema lock; {command.stderr()}"
            time.sleep(0.05)
    finally:
        admin.dispose()


# --------------------------------------------------------------------------- the db commands


def db(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, url: str, action: str) -> tuple[int, str, str]:
    """``synclab db ACTION`` through the command's own entry point, in this process."""
    monkeypatch.setenv("DATABASE_URL", url)
    status = main(["db", action])
    out, err = capsys.readouterr()
    return status, out, err


def test_db_current_and_history_say_where_the_database_stands(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``db current`` names the revision (exit 0 at the newest, 1 behind); ``db check`` fails behind;
    ``db history`` lists every revision newest first and marks the database's; a missing SQLite
    file is not created."""
    monkeypatch.chdir(tmp_path)  # no stray .env
    status, _, err = db(capsys, monkeypatch, f"sqlite:///{tmp_path}/missing.db", "current")
    assert status == 2 and "no SQLite database" in err
    assert not (tmp_path / "missing.db").exists()

    url = release_database(tmp_path, "sqlite://")
    status, out, err = db(capsys, monkeypatch, url, "current")
    assert status == 1 and "synclab 0.1.0" in out and "synclab db upgrade" in err
    assert db(capsys, monkeypatch, url, "check")[0] == 1
    assert db(capsys, monkeypatch, url, "upgrade")[0] == 0
    status, out, _ = db(capsys, monkeypatch, url, "current")
    assert status == 0 and out.strip().endswith(head())
    status, out, _ = db(capsys, monkeypatch, url, "check")
    assert status == 0 and "tables are this synclab's" in out
    listed = db(capsys, monkeypatch, url, "history")[1].splitlines()
    assert listed[0].startswith(head()) and "head" in listed[0] and "the database" in listed[0]
    assert listed[-1].startswith("0001_baseline")


def delivery_with_a_long_url(engine: Engine) -> tuple[int, int]:
    """An experiment whose one participant's delivery to oTree waits, its URL past 500 characters
    (a join label of 200 "é", each 6 characters quoted): ``(experiment id, participant id)``."""
    experiment_id, person = _experiment_with_delivery(engine)
    with engine.begin() as conn:
        conn.execute(update(participants).where(participants.c.id == person).values(join_label="é" * 200))
    assert add_otree_deliveries(engine, experiment_id, [person], time.time()) == 1
    return experiment_id, person


def test_a_delivery_url_back_at_0008_is_cut_once_delivered_and_stops_the_downgrade_while_waiting(
    database_url: str,
) -> None:
    """0009 makes ``deliveries.url`` text; its downgrade puts the 500 characters back, cutting the
    URL of a delivery oTree has (never posted again) and refusing while a longer one still waits."""
    engine = make_engine(database_url)
    try:
        prepare_schema(engine)
        delivery_with_a_long_url(engine)
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with engine.begin() as conn:  # the revisions after 0009 first: the refusal is 0009's own
            config.attributes["connection"] = conn
            command.downgrade(config, "0009_delivery_url_text")
        with pytest.raises(RuntimeError, match="still waiting"), engine.begin() as conn:
            config.attributes["connection"] = conn
            command.downgrade(config, "0008_statuses_corrected")
        assert schema_state(engine).revision == "0009_delivery_url_text"
        with engine.begin() as conn:
            conn.execute(update(deliveries).values(delivered_at=deliveries.c.created_at, next_at=None))
        with engine.begin() as conn:
            config.attributes["connection"] = conn
            command.downgrade(config, "0008_statuses_corrected")
        with engine.connect() as conn:
            url = conn.execute(select(deliveries.c.url)).scalar_one()
        column = next(c for c in inspect(engine).get_columns("deliveries") if c["name"] == "url")
        assert isinstance(column["type"], String) and column["type"].length == 500
        assert url == ("http://127.0.0.1:9/api/participant_vars/" + "%C3%A9" * 200)[:500]
        upgrade_schema(engine)
        assert schema_state(engine).revision == head() and differences(engine) == []
    finally:
        engine.dispose()


def event_indexes(engine: Engine) -> set[str]:
    """The events table's indexes as the database lists them (SQLAlchemy's SQLite inspector leaves
    partial ones out)."""
    sql = (
        "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events'"
        if engine.dialect.name == "sqlite"
        else "SELECT indexname FROM pg_indexes WHERE tablename = 'events' AND schemaname = current_schema()"
    )
    with engine.connect() as conn:
        return {str(name) for name in conn.execute(text(sql)).scalars()}


def test_0010_indexes_the_stand_in_events_by_group_and_its_downgrade_drops_that_index(database_url: str) -> None:
    """0010 adds ``ix_events_standin`` (whose seat a bot held, read by group); down at 0009 it is
    gone, and back up the schema is the application's again."""
    engine = make_engine(database_url)
    try:
        prepare_schema(engine)
        assert "ix_events_standin" in event_indexes(engine)
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with engine.begin() as conn:
            config.attributes["connection"] = conn
            command.downgrade(config, "0009_delivery_url_text")
        assert "ix_events_standin" not in event_indexes(engine)
        assert schema_state(engine).revision == "0009_delivery_url_text"
        upgrade_schema(engine)
        assert "ix_events_standin" in event_indexes(engine)
        assert schema_state(engine).revision == head() and differences(engine) == []
    finally:
        engine.dispose()


def test_0011_adds_a_deliverys_refused_at_and_its_downgrade_drops_it_leaving_the_refused_never_due(
    database_url: str,
) -> None:
    """0011 adds ``deliveries.refused_at``; down at 0010 the column is gone and a refused delivery
    stays there what the revision before never posts (no ``next_at``, its reason in ``last_error``);
    back up the schema is the application's again, and the delivery refused again (as of its creation)."""
    engine = make_engine(database_url)
    try:
        prepare_schema(engine)
        experiment_id, person = _experiment_with_delivery(engine)
        with engine.begin() as conn:
            conn.execute(update(sessions).where(sessions.c.participant_id == person).values(final_score=float("inf")))
        assert add_otree_deliveries(engine, experiment_id, [person], time.time()) == 1
        columns = column_names(engine)["deliveries"]
        assert "refused_at" in columns
        with pytest.raises(DataWouldBeLost, match="the time 1 refused score"):  # (synclab db downgrade's)
            downgrade_schema(engine, "0010_events_standin_index", lose=False)
        assert schema_state(engine).revision == head()
        downgrade_schema(engine, "0010_events_standin_index", lose=True)
        assert schema_state(engine).revision == "0010_events_standin_index"
        assert column_names(engine)["deliveries"] == [c for c in columns if c != "refused_at"]
        with engine.connect() as conn:
            row = conn.execute(text("SELECT next_at, delivered_at, last_error FROM deliveries")).one()
        assert row[0] is None and row[1] is None and "not a finite number" in row[2]
        upgrade_schema(engine)
        assert schema_state(engine).revision == head() and differences(engine) == []
        with engine.connect() as conn:
            again = conn.execute(select(deliveries.c.refused_at, deliveries.c.created_at)).one()
        assert again[0] is not None and again[0] == again[1]
        (listed,) = list_deliveries(engine, experiment_id, 0, 10)
        assert listed["status"] == "refused" and "not a finite number" in listed["last_error"]
    finally:
        engine.dispose()


def test_0012_lets_a_sessions_final_score_be_null_and_makes_null_an_infinity_stored_before(database_url: str) -> None:
    """0012 makes ``sessions.final_score`` nullable (NULL: past a float's range); its downgrade,
    asked first, makes such a score 0.0 (the column NOT NULL again); back up, a score stored as
    infinity there (SQLite's sum of scores near 1e308) is NULL, and the schema is the application's."""
    engine = make_engine(database_url)
    try:
        prepare_schema(engine)
        _, person = _experiment_with_delivery(engine)
        mine, other = sessions.c.participant_id == person, sessions.c.participant_id != person
        with engine.begin() as conn:
            conn.execute(update(sessions).where(mine).values(final_score=None))
            conn.execute(update(sessions).where(other).values(final_score=2.5))
        with pytest.raises(DataWouldBeLost, match=r"the final score of 1 session\(s\) past a float's range"):
            downgrade_schema(engine, "0011_delivery_refused", lose=False)
        assert schema_state(engine).revision == head()
        downgrade_schema(engine, "0011_delivery_refused", lose=True)
        assert schema_state(engine).revision == "0011_delivery_refused"
        with engine.connect() as conn:
            assert not next(c for c in inspect(conn).get_columns("sessions") if c["name"] == "final_score")["nullable"]
            assert conn.execute(select(sessions.c.final_score).where(mine)).scalar_one() == 0.0
        with engine.begin() as conn:  # as the revision before stored a sum past a float's range on SQLite
            conn.execute(update(sessions).where(mine).values(final_score=float("inf")))
        upgrade_schema(engine)
        assert schema_state(engine).revision == head() and differences(engine) == []
        with engine.connect() as conn:
            assert conn.execute(select(sessions.c.final_score).where(mine)).scalar_one() is None
            assert conn.execute(select(sessions.c.final_score).where(other)).scalar_one() == 2.5
    finally:
        engine.dispose()


def test_0014_indexes_results_by_experiment_and_seq_and_its_downgrade_drops_that_index(database_url: str) -> None:
    """0014 adds ``ix_results_experiment_id_seq`` (whose result a ``result`` event reported, read by
    ``seq``); down at 0013 it is gone and the results are all there, and back up the schema is the
    application's again."""
    engine = make_engine(database_url)
    try:
        prepare_schema(engine)
        _experiment_with_delivery(engine)
        with engine.connect() as conn:
            indexed = {i["name"] for i in inspect(conn).get_indexes("results")}
            held = conn.execute(text("SELECT count(*) FROM sessions")).scalar_one()
        assert "ix_results_experiment_id_seq" in indexed and held == 2
        downgrade_schema(engine, "0013_ticks_experiment", lose=False)  # nothing lost: asks for nothing
        assert schema_state(engine).revision == "0013_ticks_experiment"
        with engine.connect() as conn:
            assert "ix_results_experiment_id_seq" not in {i["name"] for i in inspect(conn).get_indexes("results")}
        upgrade_schema(engine)
        assert schema_state(engine).revision == head() and differences(engine) == []
        with engine.connect() as conn:
            assert "ix_results_experiment_id_seq" in {i["name"] for i in inspect(conn).get_indexes("results")}
            assert conn.execute(text("SELECT count(*) FROM sessions")).scalar_one() == held
    finally:
        engine.dispose()


def test_0015_names_each_results_recipient_and_its_downgrade_asks_before_dropping_a_games_own(
    tmp_path: Path, database_url: str
) -> None:
    """0015 adds ``events.recipient_id``, filled for each ``result`` event of the release's database
    from its ``results`` row. Its downgrade, while a game's private message names its recipient,
    asks first, then drops the column; back up, the results' recipients are filled again (the
    private message's is lost) and the schema is the application's. A ``result`` event stored
    without it (a journal's record of a server before the column) is named from its ``results``
    row in the event log."""
    url = release_database(tmp_path, database_url)
    engine = make_engine(url)
    try:
        upgrade_schema(engine)
        whose = whose_results(engine)
        assert result_recipients(engine)[0] == whose
        (experiment_id, seq), person = next(iter(whose.items()))
        with engine.begin() as conn:
            conn.execute(insert(events).values(
                experiment_id=experiment_id, seq=10**6, timestamp=datetime.now(UTC), channel="tip", value="psst",
                bot=False, recipient_id=person,
            ))
        with pytest.raises(DataWouldBeLost, match=r"the recipient of 1 event\(s\) a game sent to one member"):
            downgrade_schema(engine, "0014_results_seq_index", lose=False)
        assert schema_state(engine).revision == head()
        downgrade_schema(engine, "0014_results_seq_index", lose=True)
        assert schema_state(engine).revision == "0014_results_seq_index"
        assert "recipient_id" not in column_names(engine)["events"]
        upgrade_schema(engine)
        assert schema_state(engine).revision == head() and differences(engine) == []
        assert result_recipients(engine)[0] == whose
        with engine.begin() as conn:
            assert conn.execute(select(events.c.recipient_id).where(events.c.channel == "tip")).scalar_one() is None
            conn.execute(update(events).where(events.c.channel == "result").values(recipient_id=None))
            code_of = dict(conn.execute(select(participants.c.id, participants.c.code)).all())
        logged = list_events(engine, experiment_id, 0, 0, 10**6)
        assert {r["seq"]: r["recipient"] for r in logged if r["channel"] == "result"} == {
            s: code_of[p] for (e, s), p in whose.items() if e == experiment_id
        }
        assert seq in {r["seq"] for r in logged} and all(r["recipient"] is None for r in logged if r["channel"] != "result")
    finally:
        engine.dispose()


def held_client_ids(engine: Engine, table: str) -> dict[tuple[int, str], int]:
    """Each (participant, client id) of ``table`` (``client_ids``, or ``events`` where it has one), with its ``seq``."""
    sent = "" if table == "client_ids" else " WHERE client_id IS NOT NULL"
    with engine.connect() as conn:
        rows = conn.execute(text(f"SELECT participant_id, client_id, seq FROM {table}{sent}")).all()
    return {(int(p), str(c)): int(s) for p, c, s in rows}


def test_0016_keeps_client_ids_in_a_table_of_their_own_and_its_downgrade_makes_the_index_again(
    tmp_path: Path, database_url: str
) -> None:
    """0016 fills ``client_ids`` from the release database's events and drops the index
    ``ix_events_client_id``; the table refuses a repeated id as the index did. On SQLite its
    downgrade first adds the ids a journal's apply left to add (past the ``meta`` row
    ``client_ids_after``), a repeat among them stored without its id, then drops the table and
    makes the index again; back up, the table holds every id, and the schema is the application's."""
    url = release_database(tmp_path, database_url)
    engine = make_engine(url)
    try:
        sent = held_client_ids(engine, "events")
        assert len(sent) > 10
        upgrade_schema(engine)
        assert held_client_ids(engine, "client_ids") == sent
        assert "ix_events_client_id" not in indexes(engine, "events")
        participant, client_id = next(iter(sent))
        with engine.connect() as conn:
            experiment = conn.execute(select(participants.c.experiment_id).where(participants.c.id == participant)).scalar_one()
            last = conn.execute(select(func.max(events.c.seq)).where(events.c.experiment_id == experiment)).scalar_one()
        row = {"experiment_id": experiment, "timestamp": datetime.now(UTC), "participant_id": participant,
               "channel": "decisions", "value": 1, "bot": False}
        with pytest.raises(Exception, match=r"(?i)unique|duplicate"), engine.begin() as conn:
            conn.execute(insert(client_ids).values(participant_id=participant, client_id=client_id, experiment_id=experiment, seq=0))
        if engine.dialect.name == "sqlite":  # the journal's apply: events stored, their ids to be added
            with engine.begin() as conn:
                conn.execute(text("INSERT INTO meta (key, value) SELECT 'client_ids_after', max(id) FROM events"))
                conn.execute(insert(events).values(**row, seq=last + 1, client_id="after the mark"))
                conn.execute(insert(events).values(**row, seq=last + 2, client_id=client_id))  # a repeat
            added = {(participant, "after the mark"): last + 1}
        else:
            added = {}
        downgrade_schema(engine, "0015_event_recipient", lose=False)  # nothing lost: asks for nothing
        assert schema_state(engine).revision == "0015_event_recipient"
        assert "ix_events_client_id" in indexes(engine, "events") and "client_ids" not in column_names(engine)
        assert held_client_ids(engine, "events") == {**sent, **added}
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM meta WHERE key = 'client_ids_after'")).scalar_one() == 0
            if added:
                assert conn.execute(select(events.c.client_id).where(events.c.seq == last + 2,
                                                                     events.c.experiment_id == experiment)).scalar_one() is None
        upgrade_schema(engine)
        assert schema_state(engine).revision == head() and differences(engine) == []
        assert held_client_ids(engine, "client_ids") == {**sent, **added}
    finally:
        engine.dispose()
