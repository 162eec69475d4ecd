"""``synclab db downgrade``: back to an earlier revision in one transaction, on SQLite and PostgreSQL.

A lab that upgraded goes back to the release before: every row it can hold is kept, a step that
fails leaves the database exactly as it was, and values the older schema cannot hold are lost
only with ``--yes``.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, insert, inspect, select, text, update

from server.cli import main
from server.storage import (
    add_otree_deliveries,
    add_token,
    connections,
    deliveries,
    differences,
    events,
    groups,
    head,
    history,
    make_engine,
    participants,
    prepare_schema,
    schema_state,
)
from server.storage.tables import metadata
from tests.server.test_deliveries import _experiment_with_delivery
from tests.server.test_migrations import delivery_with_a_long_url, release_database


def db(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, url: str, *args: str) -> tuple[int, str, str]:
    """``synclab db ARGS`` through the command's own entry point, in this process."""
    monkeypatch.setenv("DATABASE_URL", url)
    status = main(["db", *args])
    out, err = capsys.readouterr()
    return status, out, err


def every_index(engine: Engine) -> dict[str, set[str]]:
    """Each table's indexes as the database lists them (SQLAlchemy's SQLite inspector leaves partial
    ones out), without those SQLite makes for a constraint itself."""
    sql = (
        "SELECT tbl_name, name FROM sqlite_master WHERE type = 'index' AND name NOT LIKE 'sqlite_autoindex%'"
        if engine.dialect.name == "sqlite"
        else "SELECT tablename, indexname FROM pg_indexes WHERE schemaname = current_schema()"
    )
    found: dict[str, set[str]] = {}
    with engine.connect() as conn:
        for table, name in conn.execute(text(sql)):
            found.setdefault(str(table), set()).add(str(name))
    return found


def snapshot(url: str) -> tuple[str | None, dict[str, list[str]], dict[str, set[str]], dict[str, list[tuple[Any, ...]]]]:
    """Everything a downgrade may change: the revision, the columns, the indexes and every row of
    every synclab table (read from the catalogue, not SQLAlchemy's inspector: a tenth of the time on
    PostgreSQL)."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            if engine.dialect.name == "sqlite":
                names = conn.execute(text("SELECT name FROM sqlite_master WHERE type = 'table'")).scalars().all()
                columns = {
                    str(t): [str(c[1]) for c in conn.exec_driver_sql(f'PRAGMA table_info("{t}")')] for t in names
                }
            else:
                columns = {}
                for table, column in conn.execute(text(
                    "SELECT table_name, column_name FROM information_schema.columns "
                    "WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position"
                )):
                    columns.setdefault(str(table), []).append(str(column))
            rows = {
                table.name: [
                    tuple(r)
                    for r in conn.execute(
                        select(*(table.c[n] for n in columns[table.name])).order_by(*table.primary_key.columns)
                    )
                ]
                for table in metadata.sorted_tables
                if table.name in columns
            }
        return schema_state(engine).revision, columns, every_index(engine), rows
    finally:
        engine.dispose()


def test_db_downgrade_to_0_1_0_and_up_again_keeps_every_row(
    tmp_path: Path, database_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The release's database upgraded, then ``db downgrade 0.1.0``: its columns, indexes and rows
    are the release's again (stamped ``0001_baseline``); upgraded once more, every row is as after
    the first upgrade and the tables are this synclab's."""
    monkeypatch.chdir(tmp_path)  # no stray .env
    url = release_database(tmp_path, database_url)
    _, release_columns, release_indexes, release_rows = snapshot(url)
    assert len(release_rows["events"]) > 100 and len(release_rows["results"]) > 10

    assert db(capsys, monkeypatch, url, "upgrade")[0] == 0
    upgraded = snapshot(url)
    assert upgraded[0] == head()

    status, out, err = db(capsys, monkeypatch, url, "downgrade", "0.1.0")
    assert status == 0, err
    undone = len(history()) - 1  # every revision after the baseline
    assert f"is at {head()}; undoing {undone} revision(s) in one transaction" in out
    assert "0005_tokens -> 0004_online" in out and "loses" not in out
    assert "to 0001_baseline (synclab 0.1.0)" in out
    revision, columns, indexes, rows = snapshot(url)
    assert revision == "0001_baseline"
    assert {t: c for t, c in columns.items() if t != "alembic_version"} == release_columns
    assert {t: i for t, i in indexes.items() if t != "alembic_version"} == release_indexes
    assert rows == release_rows

    assert db(capsys, monkeypatch, url, "upgrade")[0] == 0
    assert snapshot(url) == upgraded
    engine = make_engine(url)
    try:
        assert differences(engine) == []
    finally:
        engine.dispose()


def test_a_downgrade_that_fails_partway_leaves_the_database_as_it_was(
    tmp_path: Path, database_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Down to 0008: 0010's step drops ``ix_events_standin``, then 0009's refuses (a delivery still
    waiting whose URL the 500 characters cannot hold). Exit 2 naming both, and the database is
    exactly as before: its revision, its columns, its indexes (that one too) and its rows. By hand
    in ``engine.begin()`` on SQLite the index stayed dropped at revision 0010."""
    monkeypatch.chdir(tmp_path)
    engine = make_engine(database_url)
    try:
        prepare_schema(engine)
        delivery_with_a_long_url(engine)
    finally:
        engine.dispose()
    before = snapshot(database_url)
    assert "ix_events_standin" in before[2]["events"]

    status, out, err = db(capsys, monkeypatch, database_url, "downgrade", "0008_statuses_corrected")
    assert status == 2, (out, err)
    assert "0010_events_standin_index -> 0009_delivery_url_text" in out
    assert "undoing 0009_delivery_url_text failed, so nothing changed" in err and "still waiting" in err
    after = snapshot(database_url)
    assert after[2] == before[2], "an index dropped by a step undone stayed dropped"
    assert after == before
    engine = make_engine(database_url)
    try:
        assert schema_state(engine).current and differences(engine) == []
    finally:
        engine.dispose()


def test_db_downgrade_loses_stored_values_only_with_yes(
    tmp_path: Path, database_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Values the older schema cannot hold (a token, an epoch, an online experiment's labels and
    deliveries, a bot's event, a worker's connection, a delivered URL past 500 characters): each is
    named, and without ``--yes`` the downgrade is refused (exit 1) with nothing changed; with it the
    database goes down to 0.1.0."""
    monkeypatch.chdir(tmp_path)
    engine = make_engine(database_url)
    try:
        prepare_schema(engine)
        experiment_id, person = _experiment_with_delivery(engine)
        add_token(engine, "bob", "admin")
        with engine.begin() as conn:
            conn.execute(update(participants).where(participants.c.id == person).values(join_label="é" * 200))
        assert add_otree_deliveries(engine, experiment_id, [person], time.time()) == 1
        now = datetime.now(UTC)
        with engine.begin() as conn:
            conn.execute(update(deliveries).values(delivered_at=now))
            conn.execute(update(groups).values(epoch=3))
            conn.execute(insert(events).values(experiment_id=experiment_id, seq=1, timestamp=now, channel="x", bot=True))
            conn.execute(insert(connections).values(
                id=str(uuid.uuid4()), participant_id=person, experiment_id=experiment_id, connected_at=now, worker="w1"
            ))
    finally:
        engine.dispose()
    before = snapshot(database_url)

    status, out, err = db(capsys, monkeypatch, database_url, "downgrade", "0.1.0")
    assert status == 1, (out, err)
    for revision, lost in [
        ("0009_delivery_url_text", "the URL of 1 delivered or refused score(s) to oTree, cut to 500"),
        ("0007_connection_worker", "the worker of 1 connection(s)"),
        ("0005_tokens", "1 experimenter token(s)"),
        ("0004_online", "the online settings of 1 experiment(s)"),
        ("0004_online", "the bot flag of 1 event(s)"),
        ("0004_online", "the join label, arrival, completion code or status of 2 participant(s)"),
        ("0004_online", "1 score(s) to oTree"),
        ("0003_group_epoch", "the fencing epoch of 1 group(s)"),
    ]:
        assert f"{revision}: {lost}" in err, err
        assert f"loses {lost}" in out
    assert "Nothing changed" in err and "--yes" in err
    assert snapshot(database_url) == before

    status, out, err = db(capsys, monkeypatch, database_url, "downgrade", "0.1.0", "--yes")
    assert status == 0, err
    engine = make_engine(database_url)
    try:
        assert schema_state(engine).revision == "0001_baseline"
        with engine.connect() as conn:
            assert not inspect(conn).has_table("tokens") and not inspect(conn).has_table("deliveries")
    finally:
        engine.dispose()


def test_db_downgrade_refuses_what_it_cannot_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No revision, an unknown one, one not before the database's, a database at it already, a
    missing SQLite file (not made). (One made by 0.1.0 and never upgraded: test_db_command.)"""
    monkeypatch.chdir(tmp_path)
    missing = f"sqlite:///{tmp_path}/missing.db"
    status, _, err = db(capsys, monkeypatch, missing, "downgrade", "0.1.0")
    assert status == 2 and "no SQLite database" in err
    assert not (tmp_path / "missing.db").exists()

    url = release_database(tmp_path, "sqlite://")
    assert db(capsys, monkeypatch, url, "upgrade")[0] == 0
    assert db(capsys, monkeypatch, url, "downgrade")[0] == 2
    status, _, err = db(capsys, monkeypatch, url, "downgrade", "0011_nothing")
    assert status == 2 and "'0011_nothing' is no revision" in err and "0.1.0 (0001_baseline)" in err
    status, out, _ = db(capsys, monkeypatch, url, "downgrade", head())
    assert status == 0 and "already at" in out
    assert db(capsys, monkeypatch, url, "downgrade", "0004_online")[0] == 0
    status, _, err = db(capsys, monkeypatch, url, "downgrade", "0009_delivery_url_text")
    assert status == 2 and "is not before the database's revision 0004_online" in err and "db upgrade" in err


def test_a_refused_delivery_with_a_long_url_does_not_stop_the_downgrade(
    tmp_path: Path, database_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A delivery refused (0011: never posted, never due, no ``next_at``) whose URL is past the 500
    characters is no delivery still waiting: 0009's downgrade cuts its URL, named as lost (with
    ``--yes``), as a delivered one's; it refused the whole downgrade, "deliver or delete them
    first", for a delivery nobody can deliver."""
    monkeypatch.chdir(tmp_path)
    engine = make_engine(database_url)
    try:
        prepare_schema(engine)
        delivery_with_a_long_url(engine)
        with engine.begin() as conn:  # as storage.deliveries refuses one (a score that is no finite number)
            conn.execute(update(deliveries).values(
                refused_at=datetime.now(UTC), next_at=None, payload=None, last_error="not finite"
            ))
    finally:
        engine.dispose()

    status, out, err = db(capsys, monkeypatch, database_url, "downgrade", "0008_statuses_corrected")
    assert status == 1, (out, err)
    assert "0009_delivery_url_text: the URL of 1 delivered or refused score(s) to oTree, cut to 500" in err
    assert "0011_delivery_refused: the time 1 refused score(s)" in err
    status, out, err = db(capsys, monkeypatch, database_url, "downgrade", "0008_statuses_corrected", "--yes")
    assert status == 0, (out, err)
    engine = make_engine(database_url)
    try:
        assert schema_state(engine).revision == "0008_statuses_corrected"
        with engine.connect() as conn:
            url, next_at, delivered_at = conn.execute(
                select(deliveries.c.url, deliveries.c.next_at, deliveries.c.delivered_at)
            ).one()
        assert len(url) == 500 and next_at is None and delivered_at is None
    finally:
        engine.dispose()
