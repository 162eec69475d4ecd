"""The exports' ``connections`` and ``ticks`` tables (each socket's lifetime, each timed tick) and the
experiment detail's timing: real servers on SQLite and PostgreSQL, the rows checked against the tables."""

from __future__ import annotations

import asyncio
import csv
import io
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Engine, select

from groups import LATE_AFTER
from server.export import CSV_COLUMNS
from server.openapi import document
from server.storage import blocks, connections, experiment_row, groups, iso, participants, ticks
from tests.server.harness import Harness, timeout
from tests.server.test_export import get_bytes, played

#: the columns a lab gets, in order (the JSON rows' keys too)
COLUMNS = {
    "connections": ["id", "participant", "connected_at", "disconnected_at", "close_code", "route", "worker",
                    "address", "user_agent"],
    "ticks": ["group", "block", "kind", "index", "scheduled_at", "actual_at", "late", "snapshot"],
}
#: how the CSV's cells of these tables come back to their JSON types (beside test_export's)
INTS = {"close_code", "group", "block", "index"}


def stored(engine: Engine, code: str, table: str) -> list[dict[str, Any]]:
    """The table's rows of experiment ``code`` straight from the database, as the export should give them."""
    row = experiment_row(engine, code)
    assert row is not None
    with engine.connect() as conn:
        if table == "connections":
            found = conn.execute(
                select(connections, participants.c.code.label("participant"))
                .join(participants, participants.c.id == connections.c.participant_id)
                .where(connections.c.experiment_id == row["id"])
                .order_by(connections.c.connected_at, connections.c.id)
            ).mappings().all()
            return [{name: iso(r[name]) if name.endswith("_at") else r[name] for name in COLUMNS[table]}
                    for r in found]
        found = conn.execute(
            select(ticks, blocks.c.index.label("block"))
            .join(groups, groups.c.id == ticks.c.group_id)
            .join(blocks, blocks.c.id == groups.c.block_id)
            .where(groups.c.experiment_id == row["id"])
            .order_by(ticks.c.id)
        ).mappings().all()
        return [{"group": r["group_id"], "block": r["block"], "kind": r["kind"], "index": r["index"],
                 "scheduled_at": iso(r["scheduled_at"]), "actual_at": iso(r["actual_at"]), "late": bool(r["late"]),
                 "snapshot": r["snapshot"]} for r in found]


def typed(name: str, cell: str) -> Any:
    if name == "snapshot":
        return orjson.loads(cell)
    if cell == "":
        return None
    if name in INTS:
        return int(cell)
    if name == "late":
        assert cell in ("true", "false"), cell
        return cell == "true"
    return cell


async def closed_once(server: Harness, code: str, participant: str) -> None:
    """``participant`` of experiment ``code`` opens one more socket and closes it; back once its row holds the close."""
    extra = await server.connect(participant)
    await extra.expect("hello")
    await extra.close()
    engine = server.runtime.database.engine
    deadline = asyncio.get_running_loop().time() + timeout(5)
    while not any(r["close_code"] == 1000 for r in stored(engine, code, "connections")):
        assert asyncio.get_running_loop().time() < deadline, "the socket's close was never stored"
        await asyncio.sleep(0.05)


async def test_connections_and_ticks_are_exported_as_csv_json_and_in_the_document(any_server: Harness) -> None:
    """Every socket (participant code, ISO times, close code, address, user agent, route, worker) and every
    tick (group, block, kind, index, scheduled and actual ISO times, late, snapshot), in CSV, a JSON array
    and the whole document, exactly as the tables hold them."""
    server = any_server
    exp = await played(server)
    code = exp["code"]
    people = [p["code"] for p in exp["participants"]]
    await closed_once(server, code, people[0])
    engine = server.runtime.database.engine
    for table in ("connections", "ticks"):
        expected = stored(engine, code, table)
        assert expected, table
        text = (await get_bytes(server, f"/api/experiments/{code}/export.csv", table=table)).decode()
        assert text.split("\r\n", 1)[0].split(",") == COLUMNS[table] == list(CSV_COLUMNS[table])
        rows = [{k: typed(k, v) for k, v in r.items()} for r in csv.DictReader(io.StringIO(text, newline=""))]
        assert rows == expected and list(rows[0]) == COLUMNS[table], table
        assert orjson.loads(await get_bytes(server, f"/api/experiments/{code}/export.json", table=table)) == expected
    doc = orjson.loads(await get_bytes(server, f"/api/experiments/{code}/export.json"))
    assert doc["connections"] == stored(engine, code, "connections")
    assert doc["ticks"] == stored(engine, code, "ticks")

    # what a lab reads of them: codes, not ids; ISO times; the close; who and from where
    sockets = doc["connections"]
    assert {s["participant"] for s in sockets} == set(people) and len(sockets) == 3
    closed = [s for s in sockets if s["close_code"] == 1000]
    assert len(closed) == 1 and closed[0]["participant"] == people[0]
    assert datetime.fromisoformat(closed[0]["disconnected_at"]) >= datetime.fromisoformat(closed[0]["connected_at"])
    assert all(s["connected_at"].endswith("Z") and s["address"] == "127.0.0.1" and s["user_agent"] for s in sockets)
    assert all(s["route"] == "synclab" for s in sockets)
    # two blocks of two subperiods: each group's subperiod ticks, due and run, each late as its
    # times say (on this machine, busy with the other tests, a tick may run over 50 ms after it was due)
    subperiods = [(t["block"], t["index"]) for t in doc["ticks"] if t["kind"] == "subperiod"]
    assert subperiods == [(0, 0), (0, 1), (1, 0), (1, 1)], doc["ticks"]
    assert [t["block"] for t in doc["ticks"] if t["kind"] == "period_end"] == [0, 1]
    for tick in doc["ticks"]:
        assert tick["scheduled_at"].endswith("Z") and tick["actual_at"].endswith("Z"), tick
        waited = (datetime.fromisoformat(tick["actual_at"]) - datetime.fromisoformat(tick["scheduled_at"])).total_seconds()
        if abs(waited - LATE_AFTER) > 0.001:  # the stored times are to the microsecond, rounded
            assert tick["late"] == (waited > LATE_AFTER), (waited, tick)
    assert all(set(t["snapshot"] or {}) <= set(people) for t in doc["ticks"])


async def test_the_experiment_detail_gives_the_timing_its_create_request_set(any_server: Harness) -> None:
    """``GET /api/experiments/{code}`` (and the create's 201) give ``period_length``, ``num_subperiods``,
    ``rate_limit``, ``bonus_points`` and ``matching`` as stored, beside every field it gave before, and
    the OpenAPI ``Experiment`` schema names exactly those fields."""
    server = any_server
    made = await server.create(participants=4, group_size=2, blocks=3, period_length=2.5, num_subperiods=5,
                               rate_limit=0.5, bonus_points=3, matching="random")
    detail = (await server.http.get(f"/api/experiments/{made['code']}")).json()
    timing = {"period_length": 2.5, "num_subperiods": 5, "rate_limit": 0.5, "bonus_points": 3.0, "matching": "random"}
    for body in (made, detail):
        assert {k: body[k] for k in timing} == timing
        assert body["blocks"] == 3 and body["block_pause"] == 5.0 and len(body["participants"]) == 4
    schema = document()["components"]["schemas"]["Experiment"]
    assert set(detail) == set(schema["properties"]) == set(schema["required"])
    # the defaults, as stored: continuous time, no rate limit
    plain = await server.create()
    detail = (await server.http.get(f"/api/experiments/{plain['code']}")).json()
    assert {k: detail[k] for k in timing} == {
        "period_length": 60.0, "num_subperiods": None, "rate_limit": None, "bonus_points": 0.0, "matching": "fixed"
    }


async def test_the_experiments_list_gives_each_experiment_the_timing_its_detail_gives(any_server: Harness) -> None:
    """``GET /api/experiments`` gives each experiment ``period_length``, ``num_subperiods``,
    ``rate_limit``, ``bonus_points`` and ``matching`` equal to its detail's (none of them before),
    every other field of the detail but the participants' links, and the OpenAPI ``ExperimentSummary``
    schema names exactly those fields."""
    server = any_server
    made = [
        await server.create(participants=4, group_size=2, blocks=3, period_length=2.5, num_subperiods=5,
                            rate_limit=0.5, bonus_points=3, matching="random"),
        await server.create(),
    ]
    listed = (await server.http.get("/api/experiments", params={"page_size": 10})).json()["results"]
    by_code = {e["code"]: e for e in listed}
    timing = ("period_length", "num_subperiods", "rate_limit", "bonus_points", "matching")
    for experiment in made:
        detail = (await server.http.get(f"/api/experiments/{experiment['code']}")).json()
        summary = by_code[experiment["code"]]
        assert {k: summary[k] for k in timing} == {k: detail[k] for k in timing}
        assert summary == {k: v for k, v in detail.items() if k != "participants"}
    assert {k: by_code[made[0]["code"]][k] for k in timing} == {
        "period_length": 2.5, "num_subperiods": 5, "rate_limit": 0.5, "bonus_points": 3.0, "matching": "random"
    }
    schema = document()["components"]["schemas"]["ExperimentSummary"]
    assert set(listed[0]) == set(schema["properties"]) == set(schema["required"])
