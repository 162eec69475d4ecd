"""Exports (contract sections 1 and 4): CSV and JSON equal the API's lists, stream in constant memory."""

from __future__ import annotations

import csv
import io
import tracemalloc
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import Engine, insert, select, update

from server.cli import main
from server.experiments import parse_request, plan
from server.export import CSV_COLUMNS, TABLES, Format, chunks
from server.export import plan as export_plan
from server.sessions import SessionRecord
from server.storage import (
    create_schema,
    events,
    experiment_row,
    experiments,
    groups,
    insert_experiment,
    make_engine,
    participants,
    to_datetime,
)
from tests.server.harness import Harness, running_server, timeout, until_state
from tests.server.test_blocks import decide, wait_for_status

#: where each table's rows are listed by the API
API_PATHS = {"events": "events", "results": "results", "sessions": "sessions", "participants": "participants"}
INTS = {"seq", "block", "group", "subperiod", "rank", "completion_earned", "completion_possible"}
FLOATS = {"score", "final_score", "completion_ratio", "percentile_rank"}
JSON_TEXT = {"value", "decision", "json_data"}
#: a session note that needs CSV quoting: a comma, quotes, a newline and a non-ASCII letter
NOTE = {"note": 'a, "b"\nc é'}


# --------------------------------------------------------------------------- helpers


async def played(server: Harness) -> dict[str, Any]:
    """A finished two-block experiment of two players (two subperiods each), one session noted."""
    exp = await server.create(
        participants=2, group_size=2, blocks=2, period_length=0.6, num_subperiods=2, bonus_points=1, block_pause=0.2
    )
    row, col = [await server.connect(p["code"]) for p in exp["participants"]]
    for block in range(2):
        await until_state(row, "period_start")
        await decide(row, 1.0, f"r{block}")
        await decide(col, 0.25, f"c{block}")
        await until_state(row, "period_end")
    await wait_for_status(server, exp["code"], "done")

    def note(engine: Engine) -> None:
        record = SessionRecord.load(engine, exp["participants"][1]["code"], 1)
        assert record is not None
        record.save_json_data(NOTE)

    await server.runtime.database.write(note)
    return exp


async def listed(server: Harness, code: str, table: str) -> list[dict[str, Any]]:
    """Every row of an API list, following ``next`` through pages of 3."""
    rows: list[dict[str, Any]] = []
    url: str | None = f"/api/experiments/{code}/{API_PATHS[table]}?page_size=3"
    while url is not None:
        response = await server.http.get(url)
        assert response.status_code == 200, response.text
        body = response.json()
        rows.extend(body["results"])
        url = body["next"]
    return rows


def parsed_csv(text: str) -> tuple[list[str], list[dict[str, Any]]]:
    """The header and the rows of a CSV export, each cell back to its JSON type, ``completion`` nested again."""
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows = [{name: typed(name, cell) for name, cell in raw.items()} for raw in reader]
    for row in rows:
        if "completion_earned" in row:
            row["completion"] = {k: row.pop(f"completion_{k}") for k in ("earned", "possible", "ratio")}
    return list(reader.fieldnames or []), rows


def typed(name: str, cell: str) -> Any:
    if name in JSON_TEXT:
        return orjson.loads(cell)
    if cell == "":
        return None
    if name in INTS:
        return int(cell)
    if name in FLOATS:
        return float(cell)
    if name == "connected":
        assert cell in ("true", "false"), cell
        return cell == "true"
    return cell


def flat_keys(row: dict[str, Any]) -> list[str]:
    """An API row's keys as CSV columns: a nested object (``completion``) becomes ``completion_earned``, …"""
    keys: list[str] = []
    for key, value in row.items():
        if isinstance(value, dict) and key not in JSON_TEXT:
            keys.extend(f"{key}_{inner}" for inner in value)
        else:
            keys.append(key)
    return keys


async def get_bytes(server: Harness, url: str, **params: str) -> bytes:
    response = await server.http.get(url, params=params)
    assert response.status_code == 200, response.text
    return response.content


# --------------------------------------------------------------------------- the data equals the API's lists


async def test_each_table_exported_as_csv_and_json_equals_the_api_list(any_server: Harness) -> None:
    """For every table, the CSV (parsed back) and the JSON array hold exactly the API's rows, in its order."""
    server = any_server
    exp = await played(server)
    code = exp["code"]
    for table in TABLES:
        expected = await listed(server, code, table)
        assert expected, table
        response = await server.http.get(f"/api/experiments/{code}/export.csv", params={"table": table})
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "text/csv; charset=utf-8"
        assert response.headers["content-disposition"] == f'attachment; filename="synclab-{code}-{table}.csv"'
        header, rows = parsed_csv(response.content.decode())
        assert header == list(CSV_COLUMNS[table]) == flat_keys(expected[0]), table
        assert rows == expected, table
        response = await server.http.get(f"/api/experiments/{code}/export.json", params={"table": table})
        assert response.status_code == 200 and response.headers["content-type"] == "application/json"
        assert orjson.loads(response.content) == expected, table
    noted = [r for r in await listed(server, code, "sessions") if r["json_data"]]
    assert [r["json_data"] for r in noted] == [NOTE]  # the quoted cell came back whole


async def test_the_json_document_holds_everything_with_results_inside_their_sessions(any_server: Harness) -> None:
    """export.json: experiment, blocks, groups and participants, then sessions with their results, then events."""
    server = any_server
    exp = await played(server)
    code = exp["code"]
    response = await server.http.get(f"/api/experiments/{code}/export.json")
    assert response.status_code == 200, response.text
    assert response.headers["content-disposition"] == f'attachment; filename="synclab-{code}-all.json"'
    doc = orjson.loads(response.content)
    assert list(doc) == ["experiment", "blocks", "groups", "participants", "sessions", "events"]

    detail = (await server.http.get(f"/api/experiments/{code}")).json()
    for key in ("code", "game", "status", "config", "blocks", "created_at", "started_at", "finished_at", "last_seq"):
        assert doc["experiment"][key] == detail[key], key
    assert [b["index"] for b in doc["blocks"]] == [0, 1] and all(b["num_subperiods"] == 2 for b in doc["blocks"])
    codes = [p["code"] for p in exp["participants"]]
    assert [(g["block"], sorted(g["members"]), g["phase"]) for g in doc["groups"]] == [
        (0, sorted(codes), "ended"), (1, sorted(codes), "ended")
    ]
    assert doc["participants"] == await listed(server, code, "participants")
    assert doc["events"] == await listed(server, code, "events")
    assert doc["events"][-1]["seq"] == detail["last_seq"]

    api_results = await listed(server, code, "results")
    sessions = [{k: v for k, v in s.items() if k != "results"} for s in doc["sessions"]]
    assert sessions == await listed(server, code, "sessions")
    for s in doc["sessions"]:
        mine = [r for r in api_results if (r["participant"], r["block"]) == (s["participant"], s["block"])]
        assert s["results"] == [{k: r[k] for k in ("subperiod", "decision", "score", "seq")} for r in mine]
        assert len(s["results"]) == 2 and s["final_score"] == pytest.approx(1 + sum(r["score"] for r in mine))


async def test_the_cli_and_small_pages_give_the_same_bytes_as_http(
    any_server: Harness, database_url: str, monkeypatch: pytest.MonkeyPatch, capsysbinary: pytest.CaptureFixture[bytes],
    tmp_path: Path,
) -> None:
    """``synclab export`` prints what HTTP sends, and pages of 1 or 2 rows join into the same bytes."""
    server = any_server
    code = (await played(server))["code"]
    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.setenv("DATABASE_URL", database_url)
    engine = server.runtime.database.engine
    row = experiment_row(engine, code)
    assert row is not None
    cases: list[tuple[list[str], str | None, Any, dict[str, str]]] = [
        ([], None, "json", {}),
        (["--format", "json", "--table", "sessions"], "sessions", "json", {"table": "sessions"}),
        *((["--table", t], t, "csv", {"table": t}) for t in TABLES),
    ]
    for args, table, fmt, params in cases:
        over_http = await get_bytes(server, f"/api/experiments/{code}/export.{fmt}", **params)
        assert main(["export", code, *args]) == 0
        assert capsysbinary.readouterr().out == over_http, args
        for limit in (1, 2):
            assert b"".join(chunks(engine, export_plan(row, table, fmt, limit=limit))) == over_http, (args, limit)


# --------------------------------------------------------------------------- refusals


async def test_exports_refuse_a_missing_or_wrong_token_an_unknown_code_and_a_bad_table(server: Harness) -> None:
    """401 without a token, 403 with a wrong one, 404 for an unknown code, 400 naming ``table``."""
    code = (await server.create())["code"]
    csv_url, json_url = f"/api/experiments/{code}/export.csv", f"/api/experiments/{code}/export.json"
    async with httpx.AsyncClient(base_url=server.base) as anonymous:
        for url in (csv_url, json_url):
            assert (await anonymous.get(url, params={"table": "events"})).status_code == 401
            wrong = await anonymous.get(url, params={"table": "events"}, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 403
        # the token is checked before the experiment is looked up
        assert (await anonymous.get("/api/experiments/nobody/export.json")).status_code == 401
    for url in ("/api/experiments/nobody/export.csv", "/api/experiments/nobody/export.json"):
        response = await server.http.get(url, params={"table": "events"})
        assert response.status_code == 404 and "nobody" in response.json()["error"]
    for url, params, fragment in (
        (csv_url, {}, "got none"),
        (csv_url, {"table": ""}, "got none"),
        (csv_url, {"table": "ticks"}, "'ticks'"),
        (json_url, {"table": "Events"}, "'Events'"),
    ):
        response = await server.http.get(url, params=params)
        assert response.status_code == 400, (url, params)
        body = response.json()
        assert body["field"] == "table" and fragment in body["error"] and "participants" in body["error"]


def test_the_cli_refuses_an_unknown_code_and_csv_without_a_table(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Exit 1 naming the unknown code; exit 2 for ``--format csv`` without ``--table``; nothing on stdout."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATABASE_URL", sqlite_url)
    engine = make_engine(sqlite_url)
    create_schema(engine)
    spec = plan(parse_request({"game": "bimatrix", "participants": 2, "group_size": 2}))
    insert_experiment(engine, spec)
    engine.dispose()
    assert main(["export", "nobody"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "no experiment with code 'nobody'" in err
    assert main(["export", spec.code, "--format", "csv"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "--table" in err
    with pytest.raises(SystemExit):
        main(["export", spec.code, "--table", "ticks"])
    assert "invalid choice: 'ticks'" in capsys.readouterr().err
    # a database that is not there is refused, never created empty
    missing = tmp_path / "elsewhere.db"
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{missing}")
    assert main(["export", spec.code]) == 2
    assert "no SQLite database" in capsys.readouterr().err and not missing.exists()


# --------------------------------------------------------------------------- consistency and memory




def new_experiment(engine: Engine) -> tuple[str, int, int, int]:
    """A stored experiment with no events: its code, id, and one participant's and one group's id."""
    spec = plan(parse_request({"game": "bimatrix", "participants": 2, "group_size": 2}))
    experiment_id = insert_experiment(engine, spec)
    with engine.connect() as conn:
        person = conn.execute(select(participants.c.id).where(participants.c.code == spec.participant_codes[0]))
        group = conn.execute(select(groups.c.id).where(groups.c.experiment_id == experiment_id))
        return spec.code, experiment_id, int(person.scalar_one()), int(group.scalars().first() or 0)


def add_events(engine: Engine, ids: tuple[str, int, int, int], first: int, count: int, pad: str = "") -> None:
    """Store events ``first … first+count-1`` directly (executemany, 10,000 a statement) and move last_seq."""
    _code, experiment_id, person, group = ids
    with engine.begin() as conn:
        for start in range(first, first + count, 10_000):
            conn.execute(
                insert(events),
                [
                    {
                        "experiment_id": experiment_id,
                        "seq": seq,
                        "timestamp": to_datetime(1_700_000_000 + seq / 1000),
                        "group_id": group,
                        "participant_id": person if seq % 2 else None,
                        "channel": "decisions",
                        "value": {"x": seq / 7, "pad": pad},
                        "client_id": None,
                    }
                    for seq in range(start, min(start + 10_000, first + count))
                ],
            )
        conn.execute(update(experiments).where(experiments.c.id == experiment_id).values(last_seq=first + count - 1))


def test_an_export_stops_at_the_last_seq_it_read_at_the_start(engine: Engine) -> None:
    """Events stored while an export streams are left out; the next export has them."""
    ids = new_experiment(engine)
    add_events(engine, ids, 1, 10)
    row = experiment_row(engine, ids[0])
    assert row is not None
    stream = chunks(engine, export_plan(row, "events", "json", limit=3))
    first = [next(stream), next(stream)]  # "[" and the first page of three
    add_events(engine, ids, 11, 5)
    body = orjson.loads(b"".join([*first, *stream]))
    assert [e["seq"] for e in body] == list(range(1, 11))
    later = experiment_row(engine, ids[0])
    assert later is not None
    assert len(orjson.loads(b"".join(chunks(engine, export_plan(later, "events", "json", limit=3))))) == 15


BOUND = 16 * 1024 * 1024
MANY = 100_000


async def test_a_hundred_thousand_events_export_in_constant_memory(sqlite_url: str) -> None:
    """100k events (~60 MB as CSV or JSON) stream with a traced peak under 16 MB, and over HTTP whole."""
    engine = make_engine(sqlite_url)
    create_schema(engine)
    ids = new_experiment(engine)
    add_events(engine, ids, 1, MANY, pad="p" * 500)
    row = experiment_row(engine, ids[0])
    assert row is not None
    sizes: dict[str, int] = {}
    formats: tuple[Format, ...] = ("csv", "json")
    for fmt in formats:
        size = rows = 0
        tracemalloc.start()
        try:
            for chunk in chunks(engine, export_plan(row, "events", fmt)):
                size += len(chunk)
                rows += chunk.count(b"\r\n") if fmt == "csv" else chunk.count(b'{"seq":')
            _now, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert rows == MANY + (fmt == "csv"), fmt  # the CSV has a header row
        assert size > 3 * BOUND and peak < BOUND, (fmt, size, peak)
        sizes[fmt] = size
    engine.dispose()

    async with running_server(sqlite_url) as server:
        url = f"/api/experiments/{ids[0]}/export.csv"
        size = lines = last = 0
        async with server.http.stream("GET", url, params={"table": "events"}, timeout=timeout(30)) as response:
            assert response.status_code == 200
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                lines += chunk.count(b"\n")
                last = chunk[-1]
        assert (size, lines, last) == (sizes["csv"], MANY + 1, ord("\n"))
