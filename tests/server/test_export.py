"""Exports (contract sections 1 and 4): CSV and JSON equal the API's lists, stream in constant memory, and
stop at the ``last_seq`` they read, every table alike."""

from __future__ import annotations

import csv
import io
import tracemalloc
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import Engine, event, insert, select, update

from server.cli import main
from server.experiments import parse_request, plan
from server.export import CSV_COLUMNS, TABLES, Format, chunks, stream
from server.export import plan as export_plan
from server.sessions import SessionRecord
from server.storage import (
    Database,
    GroupUpdate,
    NewEvent,
    NewResult,
    Period,
    Write,
    commit_writes,
    create_schema,
    events,
    experiment_row,
    experiments,
    groups,
    insert_experiment,
    load_group,
    make_engine,
    participants,
    periods_as_of,
    session_standings,
    to_datetime,
)
from tests.server.harness import Client, Harness, running_server, timeout, until_state
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
    if name in ("connected", "bot"):
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
    for table in API_PATHS:
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
    assert list(doc) == [
        "experiment", "blocks", "groups", "participants", "sessions", "events", "connections", "ticks"
    ]

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
    assert_as_its_events_say(doc)

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
        (csv_url, {"table": "tick"}, "'tick'"),
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
        main(["export", spec.code, "--table", "tick"])
    assert "invalid choice: 'tick'" in capsys.readouterr().err
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


#: the traced peak of either format is ~7 MB whatever the count (a page of 2,000 rows, with its
#: copies), so 70k events (35 pages) are past three times the bound: 100k took 15 s for nothing more
BOUND = 12 * 1024 * 1024
MANY = 70_000


async def test_seventy_thousand_events_export_in_constant_memory(sqlite_url: str) -> None:
    """70k events (~40 MB as CSV, ~45 MB as JSON) stream with a traced peak under 12 MB, and over HTTP whole."""
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


# --------------------------------------------------------------------------- as of the export's last_seq


def exported(engine: Engine, row: dict[str, Any]) -> dict[str, bytes]:
    """Every export of ``row``'s experiment, in pages of one row: the JSON document, each table as CSV and JSON."""
    out = {"document": b"".join(chunks(engine, export_plan(row, None, "json", limit=1)))}
    formats: tuple[Format, ...] = ("csv", "json")
    for table in TABLES:
        for fmt in formats:
            out[f"{table}.{fmt}"] = b"".join(chunks(engine, export_plan(row, table, fmt, limit=1)))
    return out


async def streamed(database: Database, row: dict[str, Any]) -> bytes:
    """The JSON document of ``row``'s experiment as HTTP streams it, each page on a reader thread."""
    return b"".join([chunk async for chunk in stream(database, export_plan(row, None, "json", limit=1))])


def assert_as_its_events_say(doc: dict[str, Any]) -> None:
    """Sessions, participants, groups and blocks are what the document's own events and results make them.

    A group's period started (ended) iff its ``period_start`` (``period_end``) is among the events; the
    runs here are not paused, so a group started and not ended is ``running``.
    """
    last_seq = doc["experiment"]["last_seq"]
    assert [e["seq"] for e in doc["events"]] == list(range(1, last_seq + 1))
    marks: dict[int, set[str]] = {}
    for e in doc["events"]:
        if e["channel"] == "state":
            marks.setdefault(e["group"], set()).add(e["value"])
    bonus = {b["index"]: b["bonus_points"] for b in doc["blocks"]}
    for s in doc["sessions"]:
        seen = marks.get(s["group"], set())
        started, finished = "period_start" in seen, {"period_start", "period_end"} <= seen
        assert (s["started_at"] is not None, s["finished_at"] is not None) == (started, finished), s
        assert all(r["seq"] <= last_seq for r in s["results"])
        expected = bonus[s["block"]] + sum(r["score"] for r in s["results"]) if finished else 0.0
        assert s["final_score"] == pytest.approx(expected), s
    for g in doc["groups"]:
        seen = marks.get(g["id"], set())
        phase = "ended" if "period_end" in seen else "running" if "period_start" in seen else "waiting"
        assert (g["phase"], g["started_at"] is not None, g["ended_at"] is not None) == (
            phase, "period_start" in seen, "period_end" in seen
        ), g
    for b in doc["blocks"]:
        phases = [g["phase"] for g in doc["groups"] if g["block"] == b["index"]]
        status = "done" if all(p == "ended" for p in phases) else "running" if set(phases) - {"waiting"} else "pending"
        assert b["status"] == status, b
    phase_of = {g["id"]: g["phase"] for g in doc["groups"]}
    for p in doc["participants"]:
        mine = sorted((s for s in doc["sessions"] if s["participant"] == p["code"]), key=lambda s: s["block"])
        assert p["completion"]["earned"] == sum(s["finished_at"] is not None for s in mine), p
        assert p["final_score"] == pytest.approx(sum(s["final_score"] for s in mine)), p
        assert p["group"] == next((s["group"] for s in mine if phase_of[s["group"]] != "ended"), mine[-1]["group"])


async def end_group(server: Harness, code: str, group: int) -> None:
    response = await server.http.post(f"/api/experiments/{code}/end", params={"group": group})
    assert response.status_code == 200 and response.json()["groups"] == [group], response.text


def group_now(client: Client) -> int:
    """The group of the participant's last ``hello`` (a new one comes when it moves on to the next block)."""
    group: int = [f for f in client.frames if f["channel"] == "hello"][-1]["payload"]["group"]
    return group


async def test_an_export_of_a_row_read_before_periods_ended_and_started_is_the_run_as_of_its_last_seq(
    any_server: Harness,
) -> None:
    """Periods that end or start after the row is read change nothing in its export: all tables stop at last_seq."""
    server = any_server
    engine = server.runtime.database.engine
    exp = await server.create(participants=4, group_size=2, blocks=2, period_length=60, bonus_points=1, block_pause=0.2)
    code = exp["code"]
    clients = [await server.connect(p["code"]) for p in exp["participants"]]
    for client in clients:
        await until_state(client, "period_start")
    first = clients[0]
    g1 = group_now(first)
    ones = [c for c in clients if group_now(c) == g1]
    twos = [c for c in clients if c not in ones]
    g2 = group_now(twos[0])
    await decide(first, 1.0, "a")
    await decide(twos[0], 0.0, "b")
    # group 1 ends and its members move on to block 1, where their group h1 starts; group 2 plays on
    await end_group(server, code, g1)
    for client in ones:
        await until_state(client, "period_end")
        await until_state(client, "period_start")
    h1 = group_now(first)

    # through the server's reads, which wait for the journal's apply (SQLite's default)
    row = await server.runtime.database.read(experiment_row, code)
    assert row is not None
    before = await server.runtime.database.read(exported, row)  # nothing runs now: as stored, as of last_seq

    # after the row is read: group 2 ends (block 0 is done), its members' h2 starts, h1 ends
    await end_group(server, code, g2)
    for client in twos:
        await until_state(client, "period_end")
        await until_state(client, "period_start")
    h2 = group_now(twos[0])
    await end_group(server, code, h1)
    for client in ones:
        await until_state(client, "period_end")

    after = await server.runtime.database.read(exported, row)
    for name, data in before.items():
        assert after[name] == data, name
    assert await streamed(server.runtime.database, row) == before["document"]

    doc = orjson.loads(after["document"])
    assert_as_its_events_say(doc)
    assert [(g["id"], g["phase"]) for g in doc["groups"]] == [
        (g1, "ended"), (g2, "running"), (h1, "running"), (h2, "waiting")
    ]
    assert [b["status"] for b in doc["blocks"]] == ["running", "running"]
    finished = {(s["group"], s["finished_at"] is not None, s["started_at"] is not None) for s in doc["sessions"]}
    assert finished == {(g1, True, True), (g2, False, True), (h1, False, True), (h2, False, False)}
    assert {p["group"] for p in doc["participants"]} == {h1, g2}
    assert sorted(p["completion"]["earned"] for p in doc["participants"]) == [0, 0, 1, 1]

    # a new export, and the REST lists, are as of now: group 2 and h1 finished since
    now = experiment_row(engine, code)
    assert now is not None and now["last_seq"] > row["last_seq"]
    later = exported(engine, now)
    assert later["sessions.json"] != before["sessions.json"]
    assert orjson.loads(later["sessions.json"]) == await listed(server, code, "sessions")
    assert orjson.loads(later["participants.json"]) == await listed(server, code, "participants")
    doc_now = orjson.loads(later["document"])
    assert_as_its_events_say(doc_now)
    assert [b["status"] for b in doc_now["blocks"]] == ["done", "running"]


def test_a_groups_period_is_taken_back_to_any_seq_through_its_state_events(engine: Engine) -> None:
    """The writer's start and end of a period, seen as of each seq before, at and after them; the index is used."""
    spec_row = plan(parse_request({"game": "bimatrix", "participants": 2, "group_size": 2, "bonus_points": 2}))
    experiment_id = insert_experiment(engine, spec_row)
    with engine.connect() as conn:
        group_id = int(conn.execute(select(groups.c.id).where(groups.c.experiment_id == experiment_id)).scalar_one())
    spec = load_group(engine, group_id)
    assert spec is not None
    at = 1_700_000_000.0

    def state(value: str, phase: str, now: float, results: list[NewResult]) -> Write:
        """A period's start or end as a live group writes it: the state event, the group's row, its results."""
        changed = GroupUpdate(group_id, phase, at, at + 60, now if phase == "ended" else None, 0, {}, {})
        scored = [NewEvent("result", {"subperiod": None, "decision": 0.5, "score": 2.25}, now, group_id)]
        return Write(
            experiment_id, [NewEvent("state", value, now, group_id), *(scored if results else [])], changed,
            results=results,
        )

    writes = [
        Write(experiment_id, [NewEvent("decisions", 0.5, at - 1, group_id, spec.member_ids[spec.members[0]])]),
        state("period_start", "running", at, []),  # seq 2
        state("period_end", "ended", at + 60, [NewResult(1, spec.session_ids[m], None, 0.5, 2.25) for m in spec.members]),
    ]
    statements: list[tuple[str, Any]] = []

    def seen(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        if "FROM events" in statement:
            statements.append((statement, parameters))

    for write in writes:  # one transaction each, as the writer commits a period's start and its end
        with engine.connect() as conn:
            commit_writes(conn, [write])
    not_started, running, played = Period(), Period(started=True), Period(started=True, ended=True)
    expected = {0: not_started, 1: not_started, 2: running, 3: played, 4: played}  # seq 3: period_end, 4: result
    event.listen(engine, "before_cursor_execute", seen)
    try:
        with engine.connect() as conn:
            for seq, period in expected.items():
                assert periods_as_of(conn, seq, [group_id, group_id]) == {group_id: period}, seq
                standings = session_standings(conn, experiment_id, seq)
                assert {(s.finished, s.final_score, s.group_ended) for s in standings} == {
                    (period.played, 2 + 2.25 if period.played else 0.0, period.ended)
                }, seq
            assert session_standings(conn, experiment_id) == session_standings(conn, experiment_id, 4)
            assert periods_as_of(conn, 4, []) == {}
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    assert statements
    if engine.dialect.name == "sqlite":  # the planner takes the partial index of state events
        with engine.connect() as conn:
            for statement, parameters in statements:
                found = " ".join(str(r[-1]) for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters))
                assert "USING INDEX ix_events_group_state" in found, (statement, found)


async def test_a_result_event_names_its_recipient_and_no_participant_in_the_events_export(
    any_server: Harness,
) -> None:
    """Each ``result`` event (the server's) names in ``recipient`` the participant its ``results``
    row names, in the CSV (its last column: the others keep their places), the JSON and the API's
    list alike; ``participant`` stays null for every event the server sent, results included
    (CONTRACT §2), and ``recipient`` is null for every other event."""
    server = any_server
    exp = await played(server)
    code = exp["code"]
    scored = {r["seq"]: r["participant"] for r in await listed(server, code, "results")}
    assert len(scored) == 2 * 2 * 2  # two players, two blocks, two subperiods
    header, from_csv = parsed_csv((await get_bytes(server, f"/api/experiments/{code}/export.csv", table="events")).decode())
    from_json = orjson.loads(await get_bytes(server, f"/api/experiments/{code}/export.json", table="events"))
    people = {p["code"] for p in exp["participants"]}
    every = (from_csv, from_json, await listed(server, code, "events"))
    for rows in every:  # the contract's floor: the server's events, results too, have no participant
        sent = [e for e in rows if e["channel"] != "decisions"]  # the players sent decisions alone
        assert {e["channel"] for e in sent} >= {"state", "group_decisions", "subperiod", "result"}
        assert [e for e in sent if e["participant"] is not None] == []
        assert {e["participant"] for e in rows if e["channel"] == "decisions"} == people
    assert header == ["seq", "timestamp", "group", "participant", "channel", "value", "bot", "recipient"]
    for rows in every:
        assert {e["seq"]: e["recipient"] for e in rows if e["channel"] == "result"} == scored
        assert all(e["recipient"] is None for e in rows if e["channel"] != "result")
