"""Scores back to a real oTree 6: posted to its REST API when the run ends, retried until oTree is up, the key kept.

The participants' join labels (the oTree participant codes they arrive with) are set in the
database here, as the shared join link stores them (``/join/{experiment}?label=``), so these tests
need nothing but the deliveries; ``tests/browser/test_otree.py`` goes the whole way in a browser.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, insert, select, update
from sqlalchemy.exc import IntegrityError

from server.deliveries import Deliveries, backoff, otree_way_back
from server.experiments import parse_request, plan
from server.join import MAX_LABEL
from server.online import OnlineSettings
from server.settings import Settings
from server.storage import (
    Claimed,
    Database,
    add_otree_deliveries,
    claim_delivery,
    create_schema,
    deliveries,
    due_deliveries,
    experiments,
    finished_without_delivery,
    insert_experiment,
    list_deliveries,
    make_engine,
    next_delivery_at,
    participants,
    prepare_schema,
    sessions,
)
from tests.otree_server import REST_KEY, OTree, free_port, running_otree
from tests.server.harness import Harness, running_server, timeout, until_state

KEY = "the-rest-key-of-this-test"
FAST = {"delivery_retry": 0.2, "delivery_retry_max": 0.8, "delivery_poll": 0.2, "delivery_timeout": 2.0}


@pytest.fixture(scope="module")
def one_otree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OTree]:
    """One oTree for the module's tests (its start, ~3 s, was most of each test's time); each
    test makes a session of its own in it, so they share no participant."""
    with running_otree(tmp_path_factory.mktemp("deliveries")) as server:
        yield server


@pytest.fixture
def otree(one_otree: OTree) -> OTree:
    """The module's oTree, up (started again if a test that stops it failed before its own start)."""
    if one_otree.process is None or one_otree.process.poll() is not None:
        one_otree.start()
    return one_otree


async def _play(server: Harness, otree_url: str, labels: list[str], *, period: float = 1.0) -> dict[str, Any]:
    """An experiment of one bimatrix pair whose members arrived from oTree with ``labels``, played to its end."""
    exp = await server.create(
        participants=2, group_size=2, period_length=period, num_subperiods=2,
        online={"otree_url": otree_url, "otree_rest_key": REST_KEY},
    )
    engine = make_engine(server.runtime.settings.database_url)
    try:
        with engine.begin() as conn:  # as the shared join link seats them: the label they came with
            for person, label in zip(exp["participants"], labels, strict=True):
                conn.execute(update(participants).where(participants.c.code == person["code"]).values(join_label=label))
    finally:
        engine.dispose()
    row, col = [await server.connect(p["code"]) for p in exp["participants"]]
    await until_state(row, "period_start")
    await row.send("decisions", 1.0)
    await col.send("decisions", 0.0)
    await until_state(row, "period_end", wait=period + 10)
    return exp


async def _deliveries(server: Harness, code: str) -> list[dict[str, Any]]:
    response = await server.http.get(f"/api/experiments/{code}/deliveries")
    assert response.status_code == 200, response.text
    rows: list[dict[str, Any]] = response.json()["results"]
    return rows


async def _until_delivered(server: Harness, code: str, count: int, wait: float = 15.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout(wait)
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        rows = await _deliveries(server, code)
        if len(rows) == count and all(r["status"] == "delivered" for r in rows):
            return rows
        await asyncio.sleep(0.1)
    raise AssertionError(f"deliveries not all delivered after {timeout(wait)} s: {rows}")


async def test_the_score_lands_in_otrees_participant_vars(
    otree: OTree, sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Both members' scores, statuses and the experiment reach oTree's participant.vars; the key is nowhere."""
    caplog.set_level(logging.DEBUG)
    session = await asyncio.to_thread(otree.create_session, 2, synclab_join_url="http://127.0.0.1:9/join/x")
    labels = [p["code"] for p in await asyncio.to_thread(otree.participants, session)]
    async with running_server(sqlite_url, **FAST) as server:
        exp = await _play(server, otree.base, labels)
        rows = await _until_delivered(server, exp["code"], 2)
        progress = (await server.http.get(f"/api/experiments/{exp['code']}/participants")).json()["results"]
        scores = {p["code"]: p["final_score"] for p in progress}
        answers = [
            (await server.http.get(path)).text
            for path in (f"/api/experiments/{exp['code']}", f"/api/experiments/{exp['code']}/deliveries",
                         "/api/experiments", f"/api/experiments/{exp['code']}/export.json")
        ]
    found = {p["code"]: p for p in await asyncio.to_thread(
        otree.participants, session, "synclab_score", "synclab_status", "synclab_experiment"
    )}
    by_label = {r["label"]: r for r in rows}
    for person, label in zip(exp["participants"], labels, strict=True):
        assert found[label]["synclab_score"] == pytest.approx(scores[person["code"]])
        assert found[label]["synclab_status"] == "finished"
        assert found[label]["synclab_experiment"] == exp["code"]
        assert by_label[label]["attempts"] == 1 and by_label[label]["last_error"] is None
        assert by_label[label]["url"] == f"{otree.base}/api/participant_vars/{label}"
    assert sorted(scores.values()) == [0.0, 5.0]  # row plays A, col B: the prisoner's dilemma's 0 and 5
    assert "delivery" in caplog.text  # the log speaks of them...
    assert REST_KEY not in caplog.text  # ...never with the key
    for answer in answers:
        assert REST_KEY not in answer


async def test_otree_down_at_first_is_retried_with_backoff_until_it_lands(otree: OTree, sqlite_url: str) -> None:
    """oTree stopped: attempts and the last error grow, spaced by a growing backoff; once it is up the score lands."""
    session = await asyncio.to_thread(otree.create_session, 2, synclab_join_url="http://127.0.0.1:9/join/x")
    labels = [p["code"] for p in await asyncio.to_thread(otree.participants, session)]
    await asyncio.to_thread(otree.stop)
    async with running_server(sqlite_url, **FAST) as server:
        exp = await _play(server, otree.base, labels)
        seen: list[tuple[int, float]] = []  # (attempts, when the count was first seen)
        deadline = time.monotonic() + timeout(15)
        while time.monotonic() < deadline:
            rows = await _deliveries(server, exp["code"])
            first = next((r for r in rows if r["label"] == labels[0]), None)
            if first is not None and (not seen or seen[-1][0] != first["attempts"]):
                seen.append((first["attempts"], time.monotonic()))
            if len(rows) == 2 and all(r["attempts"] >= 4 for r in rows):
                break
            await asyncio.sleep(0.05)
        assert all(r["status"] == "failing" for r in rows), rows
        assert all("ConnectError" in r["last_error"] for r in rows), rows
        assert all(r["delivered_at"] is None for r in rows)
        # the backoff grows: 0.2, 0.4, 0.8 (the cap) seconds after each failed attempt
        assert [backoff(server.runtime.settings, n) for n in (1, 2, 3, 4)] == [0.2, 0.4, 0.8, 0.8]
        attempts = [a for a, _ in seen]
        assert attempts == sorted(attempts) and attempts[-1] >= 4
        # from the first attempt to the fourth: at least the three pauses between them (0.2 + 0.4 + 0.8 s)
        at = dict(reversed(seen))
        assert at[min(a for a in at if a >= 4)] - at[min(a for a in at if a >= 1)] >= 1.4 * 0.9
        await asyncio.to_thread(otree.start)
        rows = await _until_delivered(server, exp["code"], 2)
    assert all(r["attempts"] >= 5 and r["last_error"] for r in rows)  # the last failure is kept
    found = {p["code"]: p for p in await asyncio.to_thread(otree.participants, session, "synclab_score")}
    assert sorted(found[label]["synclab_score"] for label in labels) == [0.0, 5.0]


async def test_a_run_that_ended_without_its_delivery_gets_it_at_the_next_start(sqlite_url: str) -> None:
    """The process stopped between the period's end and the delivery's write: the next start stores it."""
    nobody = f"http://127.0.0.1:{free_port()}"
    async with running_server(sqlite_url, **FAST) as server:
        exp = await _play(server, nobody, ["otree-a", "otree-b"], period=0.5)
        for _ in range(int(timeout(5) / 0.05)):
            if len(await _deliveries(server, exp["code"])) == 2:
                break
            await asyncio.sleep(0.05)
        assert len(await _deliveries(server, exp["code"])) == 2
    engine = make_engine(sqlite_url)
    try:
        with engine.begin() as conn:  # as if the process had stopped before storing them
            conn.execute(deliveries.delete())
    finally:
        engine.dispose()
    async with running_server(sqlite_url, **FAST) as server:
        deadline = time.monotonic() + timeout(5)
        rows: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            rows = await _deliveries(server, exp["code"])
            # between attempts (one under way shows as such, not as failing)
            if len(rows) == 2 and all(r["status"] == "failing" and r["attempts"] >= 1 for r in rows):
                break
            await asyncio.sleep(0.05)
    assert sorted(r["label"] for r in rows) == ["otree-a", "otree-b"]
    assert all(r["status"] == "failing" and r["attempts"] >= 1 for r in rows), rows


def _experiment_with_delivery(engine: Engine) -> tuple[int, int]:
    body = {"game": "bimatrix", "participants": 2, "group_size": 2,
            "online": {"otree_url": "http://127.0.0.1:9", "otree_rest_key": KEY}}
    experiment_id = insert_experiment(engine, plan(parse_request(body)))
    with engine.begin() as conn:
        people = [r[0] for r in conn.execute(
            select(participants.c.id).where(participants.c.experiment_id == experiment_id).order_by(participants.c.index)
        )]
        conn.execute(update(participants).where(participants.c.id == people[0]).values(join_label="abc123"))
    return experiment_id, people[0]


def test_one_delivery_per_participant_and_one_claim_at_a_time(engine: Engine) -> None:
    """Stored once however often the run's end is told; of two claims of a due delivery only the first gets it."""
    experiment_id, person = _experiment_with_delivery(engine)
    everyone = [person, person + 1]
    now = time.time()
    assert add_otree_deliveries(engine, experiment_id, everyone, now) == 1  # the second came with no label
    assert add_otree_deliveries(engine, experiment_id, everyone, now) == 0
    with engine.connect() as conn:
        (delivery_id,) = conn.execute(select(deliveries.c.id)).one()
    with pytest.raises(IntegrityError, match=r"(?i)unique|duplicate"), engine.begin() as conn:
        conn.execute(insert(deliveries).values(
            experiment_id=experiment_id, participant_id=person, kind="otree", url="http://x", attempts=0,
            created_at=datetime.now(UTC),
        ))
    first = claim_delivery(engine, delivery_id, now + 0.01, 30.0)
    second = claim_delivery(engine, delivery_id, now + 0.02, 30.0)
    assert first is not None and second is None
    assert first.attempt == 1 and first.rest_key == KEY and first.url == "http://127.0.0.1:9/api/participant_vars/abc123"
    assert first.payload["synclab_score"] == 0.0 and first.payload["synclab_status"] == "finished"
    again = claim_delivery(engine, delivery_id, now + 31.0, 30.0)  # the lease passed: its worker is gone
    assert again is not None and again.attempt == 2
    with engine.connect() as conn:
        online = conn.execute(select(experiments.c.online).where(experiments.c.id == experiment_id)).scalar_one()
        stored = conn.execute(select(deliveries)).mappings().one()
    assert online["otree_rest_key"] == KEY
    assert KEY not in str(dict(stored))  # the key stays with the experiment


def test_a_label_is_one_path_segment_of_the_delivery_url(engine: Engine) -> None:
    """The label comes through the public join link: its ``../``, ``?`` and ``#`` are quoted, so
    the signed POST goes to the participant's vars and nowhere else on oTree."""
    experiment_id, person = _experiment_with_delivery(engine)
    with engine.begin() as conn:
        conn.execute(update(participants).where(participants.c.id == person).values(
            join_label="../session_vars/VICTIM?x=1#f"))
    assert add_otree_deliveries(engine, experiment_id, [person], time.time()) == 1
    with engine.connect() as conn:
        (url,) = conn.execute(select(deliveries.c.url)).one()
    assert url == "http://127.0.0.1:9/api/participant_vars/..%2Fsession_vars%2FVICTIM%3Fx%3D1%23f"


def test_a_label_of_the_longest_the_join_link_takes_is_stored_with_its_whole_url(engine: Engine) -> None:
    """200 "é" (the join link's ``MAX_LABEL``) quote to 1,200 characters: the URL was longer than
    its column (500), and on PostgreSQL the insert's ``StringDataRightTruncation`` failed the
    deliveries of the whole group (or experiment, at the start-up sweep). The URL is text now."""
    experiment_id, person = _experiment_with_delivery(engine)
    label = "é" * MAX_LABEL
    with engine.begin() as conn:
        conn.execute(update(participants).where(participants.c.id == person).values(join_label=label))
    now = time.time()
    assert add_otree_deliveries(engine, experiment_id, [person, person + 1], now) == 1
    whole = "http://127.0.0.1:9/api/participant_vars/" + "%C3%A9" * MAX_LABEL
    with engine.connect() as conn:
        (delivery_id, url) = conn.execute(select(deliveries.c.id, deliveries.c.url)).one()
    assert url == whole
    claimed = claim_delivery(engine, delivery_id, now + 0.01, 30.0)
    assert claimed is not None and claimed.url == whole


def _experiment_with_a_score_past_floats(engine: Engine, otree_url: str = "http://127.0.0.1:9") -> tuple[int, list[int]]:
    """Four participants in two blocks, the first three from oTree ("first", "rich", "third"), every
    session finished; "rich" earned 1e308 in each block, whose sum is past a float's range."""
    body = {"game": "bimatrix", "participants": 4, "group_size": 2, "blocks": 2,
            "online": {"otree_url": otree_url, "otree_rest_key": KEY}}
    experiment_id = insert_experiment(engine, plan(parse_request(body)))
    with engine.begin() as conn:
        people = [r[0] for r in conn.execute(
            select(participants.c.id).where(participants.c.experiment_id == experiment_id).order_by(participants.c.index)
        )]
        for person, label in zip(people[:3], ("first", "rich", "third"), strict=True):
            conn.execute(update(participants).where(participants.c.id == person).values(join_label=label))
        conn.execute(update(sessions).where(sessions.c.experiment_id == experiment_id)
                     .values(finished_at=datetime.now(UTC)))
        conn.execute(update(sessions).where(sessions.c.participant_id == people[1]).values(final_score=1e308))
    return experiment_id, people


def _refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "synclab.deliveries" and r.levelno >= logging.ERROR]


def test_a_score_that_is_no_finite_number_is_stored_refused_never_posted_and_logged_once(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    """Of three participants from oTree, one earned 1e308 in each of two blocks. Before, SQLite
    summed that to infinity and stored it to be posted, which JSON sends to oTree as ``null``;
    PostgreSQL refused the sum (``NumericValueOutOfRange``) and the delivery was left out, so the
    start-up sweep found it again at every start and logged it again. Now, on both, it is stored
    refused with the reason and no payload, logged once, never due nor claimed, not swept again;
    the other two are stored to be posted as ever."""
    experiment_id, people = _experiment_with_a_score_past_floats(engine)
    caplog.set_level(logging.ERROR, logger="synclab.deliveries")
    now = time.time()
    assert add_otree_deliveries(engine, experiment_id, people, now) == 3
    with engine.connect() as conn:
        stored = conn.execute(select(deliveries).order_by(deliveries.c.participant_id)).mappings().all()
    assert [r["participant_id"] for r in stored] == people[:3]
    rich = stored[1]
    assert rich["refused_at"] is not None and rich["next_at"] is None and rich["payload"] is None
    assert rich["attempts"] == 0 and rich["delivered_at"] is None
    assert "not a finite number" in rich["last_error"] and "past a float's range" in rich["last_error"]
    assert "1e+308, 1e+308" in rich["last_error"], rich["last_error"]
    for other in (stored[0], stored[2]):
        assert other["refused_at"] is None and other["next_at"] is not None and other["last_error"] is None
        assert other["payload"]["synclab_score"] == 0.0
    lines = _refusals(caplog)
    assert len(lines) == 1, lines
    assert f"experiment {experiment_id}: the delivery of participant {people[1]} (label 'rich') is refused" in lines[0]
    assert "not a finite number" in lines[0]
    # never due, never claimed, not swept again at a start, not stored again
    assert rich["id"] not in due_deliveries(engine, now + 3600, 100)
    assert claim_delivery(engine, rich["id"], now + 3600, 30.0) is None
    assert finished_without_delivery(engine) == []
    assert add_otree_deliveries(engine, experiment_id, people, now) == 0
    assert len(_refusals(caplog)) == 1
    listed = {r["label"]: r for r in list_deliveries(engine, experiment_id, 0, 10)}
    assert listed["rich"]["status"] == "refused" and listed["rich"]["refused_at"] is not None
    assert listed["rich"]["last_error"] == rich["last_error"] and listed["rich"]["payload"] is None
    assert listed["first"]["status"] == "pending" and listed["first"]["refused_at"] is None
    assert next_delivery_at(engine) is not None  # (the others are waiting)


def test_a_waiting_delivery_whose_score_is_no_longer_finite_is_refused_at_its_claim(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    """The claim brings the payload up to date: a score that became no finite number since the
    delivery was stored is refused there (once), not posted as ``null``; the attempt is not counted."""
    experiment_id, person = _experiment_with_delivery(engine)
    now = time.time()
    assert add_otree_deliveries(engine, experiment_id, [person], now) == 1
    with engine.begin() as conn:
        conn.execute(update(sessions).where(sessions.c.participant_id == person).values(final_score=float("inf")))
    caplog.set_level(logging.ERROR, logger="synclab.deliveries")
    with engine.connect() as conn:
        (delivery_id,) = conn.execute(select(deliveries.c.id)).one()
    assert claim_delivery(engine, delivery_id, now + 0.01, 30.0) is None
    assert claim_delivery(engine, delivery_id, now + 3600, 30.0) is None
    (row,) = list_deliveries(engine, experiment_id, 0, 10)
    assert row["status"] == "refused" and row["attempts"] == 0 and row["next_at"] is None
    assert "not a finite number" in row["last_error"] and "inf" in row["last_error"]
    assert len(_refusals(caplog)) == 1
    assert due_deliveries(engine, now + 3600, 10) == [] and next_delivery_at(engine) is None


async def test_a_refused_delivery_shows_in_the_api_and_is_not_tried_again_at_the_next_start(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A real server on either database: the start-up sweep stores the refused delivery (the
    participant's runs ended while no server stored their deliveries), the API says ``refused``
    with the reason and no payload, the loop never posts it, and the next start neither stores
    nor logs it again (before: on PostgreSQL it was left out and logged at every start)."""
    engine = make_engine(database_url)
    try:
        prepare_schema(engine)
        experiment_id, _people = _experiment_with_a_score_past_floats(engine, f"http://127.0.0.1:{free_port()}")
        with engine.connect() as conn:
            code = conn.execute(select(experiments.c.code).where(experiments.c.id == experiment_id)).scalar_one()
    finally:
        engine.dispose()
    caplog.set_level(logging.INFO, logger="synclab.deliveries")
    for start in range(2):
        async with running_server(database_url, **FAST) as server:
            deadline = time.monotonic() + timeout(5)
            rows: list[dict[str, Any]] = []
            while time.monotonic() < deadline:  # the others' first attempts failed: the loop has run
                rows = await _deliveries(server, code)
                if len(rows) == 3 and all(r["status"] == "failing" and r["attempts"] >= 1 + start
                                          for r in rows if r["label"] != "rich"):
                    break
                await asyncio.sleep(0.05)
        by_label = {r["label"]: r for r in rows}
        assert by_label["rich"]["status"] == "refused", rows
        assert by_label["rich"]["attempts"] == 0 and by_label["rich"]["payload"] is None
        assert "not a finite number" in by_label["rich"]["last_error"]
        assert all(by_label[label]["status"] == "failing" for label in ("first", "third")), rows
        assert len(_refusals(caplog)) == 1, (start, _refusals(caplog))
    assert "rich" in _refusals(caplog)[0]


@pytest.mark.postgres
def test_two_workers_claiming_at_once_never_both_get_it(postgres_url: str) -> None:
    """Claims racing on PostgreSQL from two threads (two workers' writers): each due attempt goes to one."""
    engine = make_engine(postgres_url)
    create_schema(engine)
    try:
        experiment_id, person = _experiment_with_delivery(engine)
        now = time.time()
        assert add_otree_deliveries(engine, experiment_id, [person], now) == 1
        with engine.connect() as conn:
            (delivery_id,) = conn.execute(select(deliveries.c.id)).one()
        with ThreadPoolExecutor(2) as pool:
            for round_ in range(20):
                at = now + 1 + round_ * 100.0  # past the last round's lease: due again
                barrier = threading.Barrier(2)

                def claim(at: float = at, barrier: threading.Barrier = barrier) -> Claimed | None:
                    barrier.wait(timeout(5))
                    return claim_delivery(engine, delivery_id, at, 30.0)

                won = [f.result() for f in [pool.submit(claim), pool.submit(claim)]]
                assert sum(w is not None for w in won) == 1, (round_, won)
        with engine.connect() as conn:
            assert conn.execute(select(deliveries.c.attempts)).scalar_one() == 20
    finally:
        engine.dispose()


def test_the_way_back_to_otree_is_its_initialize_participant_link() -> None:
    """With otree_url and no completion_url: {otree_url}/InitializeParticipant/{label}; else none."""
    otree = OnlineSettings(otree_url="http://otree.example", otree_rest_key="k")
    assert otree_way_back(otree, "w6aweash") == "http://otree.example/InitializeParticipant/w6aweash"
    assert otree_way_back(otree, None) is None
    assert otree_way_back(OnlineSettings(), "w6aweash") is None
    assert otree_way_back(None, "w6aweash") is None
    both = OnlineSettings(otree_url="http://otree.example", otree_rest_key="k", completion_url="http://p.example/{code}")
    assert otree_way_back(both, "w6aweash") is None


def test_backoff_doubles_up_to_its_cap() -> None:
    settings = Settings(delivery_retry=1.0, delivery_retry_max=5.0)
    assert [backoff(settings, n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert backoff(settings, 10_000) == 5.0


async def test_close_ends_the_loop_even_when_a_wake_up_comes_with_the_cancel(tmp_path: Path) -> None:
    """The loop waited for a wake-up with ``asyncio.wait_for``, which in Python 3.11 swallows a
    cancel that comes in the same turn as what it waits for (an attempt ending as the server
    stops sets the wake-up just so): the loop went on, and the server's stop waited for it
    for ever (seen once in CI: a test server not stopped after 20 s, its deliveries retrying)."""
    database = Database(f"sqlite:///{tmp_path / 'wake.db'}")
    try:
        await database.write(create_schema)
        poster = Deliveries(database, Settings(delivery_poll=60.0))
        poster.start()
        await asyncio.sleep(0.5)  # its start-up sweep and first round done: it waits for a wake-up
        poster._wake.set()  # the wake-up due in this turn, and close's cancel in the same one
        started = time.monotonic()
        # close awaited at once, not from a task of its own; a timeout that cancels it is
        # swallowed by close itself, which so returns late, not failed: the time says
        async with asyncio.timeout(timeout(3)):
            await poster.close()
        assert time.monotonic() - started < timeout(2), "close waited for a loop that went on"
    finally:
        database.close()
