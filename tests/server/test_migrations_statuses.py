"""Migration 0008_statuses_corrected: the statuses synclab stored before 6df488a and 1c98305.

The databases are fixtures made by that synclab's own code (``tests/fixtures/make_statuses.py``,
run on a tree of commit d77c6a8): a SQLite file and a ``pg_dump`` of six experiments played by
real sockets and ended by the experimenter in the ways those commits changed, with the status of
each experiment and participant as that synclab stored it and as the rules since make it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from sqlalchemy import Engine, select
from sqlalchemy.engine import make_url

from server.storage import (
    deliveries,
    downgrade_schema,
    experiments,
    head,
    make_engine,
    participants,
    schema_state,
)
from tests.fixtures.make_statuses import TOKEN, play_all
from tests.server.harness import running_server
from tests.server.test_cli import run
from tests.server.test_migrations import column_names, every_row, load_dump

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "statuses-d77c6a8"
INFO = json.loads((FIXTURE / "statuses.json").read_text())
BEFORE = "0007_connection_worker"
#: the values the migration may change; every other is kept
CORRECTED = {"experiments": "status", "participants": "status", "deliveries": "payload"}


def old_database(tmp_path: Path, database_url: str) -> tuple[str, dict[str, Any]]:
    """The fixture's database in this test's own place, and what was played on it."""
    if make_url(database_url).get_backend_name() == "sqlite":
        target = tmp_path / "statuses.db"
        shutil.copyfile(FIXTURE / "synclab.db", target)
        return f"sqlite:///{target}", INFO["sqlite"]
    load_dump(FIXTURE / "postgres.sql", INFO["schema"], database_url)
    return database_url, INFO["postgres"]


def stored(engine: Engine) -> tuple[dict[str, str], dict[str, str | None], dict[str, dict[str, Any]]]:
    """Each experiment's and participant's status, and each delivery's payload by participant, as stored."""
    with engine.connect() as conn:
        exps = {c: s for c, s in conn.execute(select(experiments.c.code, experiments.c.status))}
        people = {c: s for c, s in conn.execute(select(participants.c.code, participants.c.status))}
        payloads = {
            c: p for c, p in conn.execute(
                select(participants.c.code, deliveries.c.payload).join(
                    participants, participants.c.id == deliveries.c.participant_id
                )
            )
        }
    return exps, people, payloads


def kept(engine: Engine, columns: dict[str, list[str]]) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, without the columns the migration corrects."""
    return every_row(engine, {t: [c for c in cs if c != CORRECTED.get(t)] for t, cs in columns.items()})


def expected(played: dict[str, Any], when: str) -> tuple[dict[str, str], dict[str, str | None]]:
    exps = {e["code"]: e["status"][when] for e in played.values()}
    people = {c: p[when] for e in played.values() for c, p in e["participants"].items()}
    return exps, people


async def test_db_upgrade_corrects_the_statuses_an_older_synclab_stored(tmp_path: Path, database_url: str) -> None:
    """``synclab db upgrade`` on a database of d77c6a8: runs the experimenter ended before they
    were played are ``cancelled`` (never came, 1 of 2 blocks), experiments whose last period the
    experimenter ended by group are ``cancelled``, the score waiting for oTree says ``cancelled``;
    an experiment whose last period ran its length stays ``done``, a dropout ``dropped``, everyone
    who played every block ``finished``, and no other value of any row changes. A server on it
    then answers alike in the API, the exports, the stats and the way back."""
    url, played = old_database(tmp_path, database_url)
    engine = make_engine(url)
    try:
        assert schema_state(engine).revision == BEFORE
        then_exps, then_people, then_payloads = stored(engine)
        assert (then_exps, then_people) == expected(played, "then")
        assert "cancelled" not in then_people.values()  # what that synclab never stored
        columns = column_names(engine)
        before = kept(engine, columns)
    finally:
        engine.dispose()

    upgraded = run(tmp_path, "db", "upgrade", DATABASE_URL=url)
    assert upgraded.returncode == 0, upgraded.stderr

    now_exps, now_people = expected(played, "now")
    engine = make_engine(url)
    try:
        exps, people, payloads = stored(engine)
        assert (exps, people) == (now_exps, now_people)
        assert kept(engine, columns) == before
    finally:
        engine.dispose()
    assert f"from {BEFORE} to {head()}" in upgraded.stdout, upgraded.stdout
    otree = played["otree"]
    assert set(payloads) == set(otree["participants"])
    for code, payload in payloads.items():  # none was delivered (nobody listens): each corrected
        assert payload == {**then_payloads[code], "synclab_status": now_people[code]}
    assert sorted(now_people[c] for c in payloads) == ["cancelled", "cancelled", "finished", "finished"]

    # the app on port 0 in this process: a ``synclab serve`` of its own added only its start to the test
    async with running_server(url, admin_token=TOKEN) as server:
        http = server.http
        for name, experiment in played.items():
            code = experiment["code"]
            assert (await http.get(f"/api/experiments/{code}")).json()["status"] == now_exps[code], name
            listed = (await http.get(f"/api/experiments/{code}/participants", params={"page_size": 100})).json()
            mine = {c: p["now"] for c, p in experiment["participants"].items()}
            assert {r["code"]: r["status"] for r in listed["results"]} == mine, name
            table = (await http.get(f"/api/experiments/{code}/export.json", params={"table": "participants"})).json()
            assert {r["code"]: r["status"] for r in table} == mine, name
            document = (await http.get(f"/api/experiments/{code}/export.json")).json()
            assert document["experiment"]["status"] == now_exps[code], name
            counts = (await http.get(f"/api/experiments/{code}/stats")).json()  # a dropout's bot is no finish
            assert counts["finished"] == sum(s == "finished" for s in mine.values()), name
        for code, status in now_people.items():
            if code in payloads:  # the way back names the status now stored
                back = await http.get(f"/p/{code}/done", follow_redirects=False)
                assert back.status_code == 303, back.text
                assert parse_qs(urlsplit(back.headers["location"]).query)["s"] == [status]


async def test_a_database_with_nothing_to_correct_is_left_as_it_was(tmp_path: Path, database_url: str) -> None:
    """The same six experiments played by this synclab store the statuses the migration would set;
    put back at 0007 (its downgrade changes nothing), ``synclab db upgrade`` changes no row."""
    # this synclab's app on port 0 in this process (a ``synclab serve`` of its own added its start
    # to the test, nothing else), the six at once: each waits on periods of its own
    async with running_server(database_url, admin_token=TOKEN) as server:
        played = await play_all(server.base, together=True)
    assert {n: e["status"]["then"] for n, e in played.items()} == {n: e["status"]["now"] for n, e in played.items()}
    for name, experiment in played.items():
        assert {c: p["then"] for c, p in experiment["participants"].items()} == {
            c: p["now"] for c, p in experiment["participants"].items()
        }, name

    engine = make_engine(database_url)
    try:
        downgrade_schema(engine, BEFORE, lose=True)  # (synclab db downgrade's: one transaction, SQLite's keys off)
        assert schema_state(engine).revision == BEFORE
        columns = column_names(engine)  # the revisions after add columns: compared on these
        before = every_row(engine)
    finally:
        engine.dispose()
    upgraded = run(tmp_path, "db", "upgrade", DATABASE_URL=database_url)
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"from {BEFORE} to {head()}" in upgraded.stdout, upgraded.stdout
    engine = make_engine(database_url)
    try:
        assert every_row(engine, columns) == before
    finally:
        engine.dispose()
