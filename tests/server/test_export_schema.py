"""``synclab export`` and ``synclab verify`` on a schema that is not this synclab's: refused
before anything is written."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

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
