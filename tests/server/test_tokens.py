"""Experimenter tokens as accounts: the role matrix over every operation and socket of the OpenAPI
document, tokens hashed at rest, the ``synclab token`` commands, revocation within two seconds,
who did each control action, and the first token moved out of ``meta`` by migration 0005_tokens.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import Engine, String, cast, inspect, select, text
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from server.cli import main
from server.openapi import document
from server.storage import add_token, list_tokens, make_engine, revoke_token, upgrade_schema
from tests.server.harness import TOKEN, Harness, running_server, timeout, until_state
from tests.server.test_cli import free_port, run, started, wait_until_healthy
from tests.server.test_migrations import release_database

#: the callers of the matrix: a token of the table of each role, SYNCLAB_ADMIN_TOKEN, a revoked one, a
#: wrong one, none
ADMIN, ENV, WATCH, REVOKED, UNKNOWN, NONE = "admin", "env", "watch", "revoked", "unknown", "none"
#: the sockets the matrix knows; a new one must be added here (the test fails on one it does not know)
PARTICIPANT_SOCKETS = {"/ws/p/{code}", "/redwood/app-name/{app}/group/{group}/participant/{code}/"}
MONITOR_SOCKET = "/ws/monitor/{code}"
#: a valid body for each operation that takes one (a new one must be added here)
BODIES: dict[str, Any] = {"createExperiment": {"game": "bimatrix", "participants": 2, "group_size": 2}}


def _operations() -> list[tuple[str, str, dict[str, Any]]]:
    doc = document()
    return [(method, path, op) for path, item in doc["paths"].items() for method, op in item.items()]


def _needs(op: dict[str, Any]) -> str | None:
    """The role an operation needs (``None``: public), as the document says."""
    security = op.get("security", document()["security"])
    if security == []:
        return None
    role = op.get("x-role")
    assert role in ("admin", "watch"), f"{op['operationId']}: a bearer operation names its x-role, got {role!r}"
    return str(role)


def test_the_document_gives_every_operation_its_role_and_keeps_writes_and_exports_for_admin() -> None:
    """Every operation behind the token says which role it needs; every one that is not a GET, and
    every export, needs ``admin``; the monitor socket is open to ``watch``."""
    for method, path, op in _operations():
        role = _needs(op)
        if role is None:
            assert method == "get", (method, path)
            continue
        if method != "get" or op["operationId"].startswith("export"):
            assert role == "admin", (method, path, role)
        assert "403" in op["responses"], (method, path)
    sockets = {s["path"]: s for s in document()["x-websockets"]}
    assert set(sockets) == PARTICIPANT_SOCKETS | {MONITOR_SOCKET}, "a new socket: add it to the role matrix"
    assert sockets[MONITOR_SOCKET]["x-role"] == "watch"
    assert all("x-auth" in s for s in sockets.values())


async def _seed(server: Harness) -> tuple[dict[str, str], dict[str, Any], dict[str, Any]]:
    """The callers' tokens, an experiment to read and control, and a finished one to export."""
    tokens = {
        ADMIN: await server.runtime.database.write(add_token, "boss", "admin"),
        WATCH: await server.runtime.database.write(add_token, "ta-anna", "watch"),
        REVOKED: await server.runtime.database.write(add_token, "gone", "watch"),
        UNKNOWN: "not-a-token-of-this-server",
    }
    assert await server.runtime.database.write(revoke_token, "gone")
    exp = await server.create(participants=2, group_size=2, period_length=30)
    return tokens, exp, exp["participants"][0]


def _request(method: str, path: str, op: dict[str, Any], exp: dict[str, Any], person: dict[str, Any],
             group: int) -> tuple[str, str, dict[str, Any], Any]:
    """A request that passes every check but the caller's: real codes, valid parameters."""
    filled = path.replace("{code}", exp["code"]).replace("{participant}", person["code"])
    filled = filled.replace("{action}", "resume")  # nothing is paused: harmless, and stored as a control
    filled = filled.replace("{group}", str(group))
    assert "{" not in filled, f"{op['operationId']}: fill its path parameters in the role matrix: {filled}"
    params: dict[str, Any] = {}
    if op["operationId"] == "exportCsv":
        params["table"] = "events"
    if op["operationId"] == "controlExperiment":
        params["group"] = group
    if "requestBody" in op:
        assert op["operationId"] in BODIES, f"{op['operationId']} takes a body: add a valid one to BODIES"
    return method.upper(), filled, params, BODIES.get(op["operationId"])


async def test_the_role_matrix_over_every_operation_and_socket_of_the_openapi_document(any_server: Harness) -> None:
    """admin, watch, revoked, unknown and no token against every operation of the document and every
    socket: ``admin`` (a token of the table, and SYNCLAB_ADMIN_TOKEN) does everything; ``watch``
    reads everything and watches, and gets 403 naming its role elsewhere; revoked and unknown
    tokens get 403 saying so; no token 401 (public operations answer everybody)."""
    server = any_server
    tokens, exp, person = await _seed(server)
    row = await server.connect(exp["participants"][0]["code"])
    await server.connect(exp["participants"][1]["code"])
    await until_state(row, "period_start")
    group = row.frames[0]["payload"]["group"]
    tokens[ENV] = TOKEN
    seen: list[tuple[str, str, int]] = []
    async with httpx.AsyncClient(base_url=server.base, timeout=timeout(10)) as http:
        for method, path, op in _operations():
            needs = _needs(op)
            verb, url, params, body = _request(method, path, op, exp, person, group)
            for who in (ADMIN, ENV, WATCH, REVOKED, UNKNOWN, NONE):
                headers = {} if who == NONE else {"Authorization": f"Bearer {tokens[who]}"}
                answer = await http.request(verb, url, params=params, headers=headers, json=body)
                seen.append((op["operationId"], who, answer.status_code))
                where = (verb, url, who, answer.status_code, answer.text[:300])
                if needs is None or who in (ADMIN, ENV) or (who == WATCH and needs == "watch"):
                    assert answer.is_success, where
                elif who == NONE:
                    assert answer.status_code == 401, where
                elif who == WATCH:
                    assert answer.status_code == 403, where
                    assert "the token 'ta-anna' has the role watch" in answer.json()["error"], where
                    assert answer.json()["error"].endswith("needs admin"), where
                else:
                    assert answer.status_code == 403, where
                    expected = "'gone' was revoked" if who == REVOKED else "not known"
                    assert expected in answer.json()["error"], where
        refused = await http.post("/api/experiments", headers={"Authorization": f"Bearer {tokens[WATCH]}"},
                                  json={"game": "bimatrix", "participants": 2, "group_size": 2})
        assert refused.json()["error"] == "the token 'ta-anna' has the role watch; creating experiments needs admin"
    assert len({op for op, _, _ in seen}) == len(_operations())

    # the sockets: the monitor takes any role's token in its first frame; a participant's socket its code
    for who, token in tokens.items():
        code, reason = await _monitor_answer(server.base, exp["code"], token)
        if who in (ADMIN, ENV, WATCH):
            assert code == 0, (who, code, reason)
        else:
            assert code == 4403, (who, code, reason)
    assert (await _monitor_answer(server.base, exp["code"], None))[0] == 4401
    hello = await server.connect(exp["participants"][1]["code"])
    assert (await hello.expect("hello"))["payload"]["participant"] == exp["participants"][1]["code"]
    payload = row.frames[0]["payload"]
    redwood = await server.connect(
        person["code"], f"/redwood/app-name/{payload['game']}/group/{group}/participant/{person['code']}/"
    )
    assert (await redwood.expect("state"))["payload"] == "period_start"


async def test_api_me_names_the_callers_token_and_its_role(any_server: Harness) -> None:
    """``GET /api/me`` answers the token's account (a token of the table of each role, and
    SYNCLAB_ADMIN_TOKEN), exactly ``{"name", "role"}``; a revoked or unknown token is 403 saying so,
    none (a participant's code is no credential here) 401; its document says ``x-role: watch``."""
    server = any_server
    tokens, _exp, person = await _seed(server)
    tokens[ENV] = TOKEN
    expected = {ADMIN: {"name": "boss", "role": "admin"}, WATCH: {"name": "ta-anna", "role": "watch"},
                ENV: {"name": "SYNCLAB_ADMIN_TOKEN", "role": "admin"}}
    async with httpx.AsyncClient(base_url=server.base, timeout=timeout(10)) as http:
        for who, body in expected.items():
            answer = await http.get("/api/me", headers={"Authorization": f"Bearer {tokens[who]}"})
            assert (answer.status_code, answer.json()) == (200, body), (who, answer.text)
        for who, message in ((REVOKED, "the token 'gone' was revoked"), (UNKNOWN, "is not known")):
            answer = await http.get("/api/me", headers={"Authorization": f"Bearer {tokens[who]}"})
            assert answer.status_code == 403 and message in answer.json()["error"], (who, answer.text)
        for params in ({}, {"participant": person["code"]}):
            answer = await http.get("/api/me", params=params)
            assert answer.status_code == 401 and answer.headers["www-authenticate"] == "Bearer", answer.text
            assert answer.json()["error"].endswith("got none"), answer.text
        # the token without the word Bearer (or under another scheme): 401 saying what is wrong, not
        # "got none", and never echoing what was sent
        for header in (tokens[ADMIN], f"Token {tokens[ADMIN]}", "Bearer"):
            answer = await http.get("/api/me", headers={"Authorization": header})
            error = answer.json()["error"]
            assert answer.status_code == 401 and "not 'Bearer <token>'" in error, answer.text
            assert tokens[ADMIN] not in error and "Token" not in error
    operation = document()["paths"]["/api/me"]["get"]
    assert operation["x-role"] == "watch" and operation["operationId"] == "getCaller"


async def _monitor_answer(base: str, code: str, token: str | None) -> tuple[int, str]:
    """0 when the monitor's socket sent its snapshot; else the close code and reason."""
    async with connect(f"{base.replace('http', 'ws', 1)}/ws/monitor/{code}", open_timeout=timeout(5)) as ws:
        await ws.send(orjson.dumps({"channel": "auth", "payload": {"token": token}}).decode())
        try:
            first = orjson.loads(await asyncio.wait_for(ws.recv(), timeout(5)))
        except ConnectionClosed as closed:
            assert closed.rcvd is not None
            return closed.rcvd.code, closed.rcvd.reason
    assert first["channel"] == "snapshot", first
    return 0, ""


async def test_a_revoked_token_is_refused_within_two_seconds_and_its_monitor_cut_off(any_server: Harness) -> None:
    """A watch token reads and watches; once revoked (in the database, as another process would), its
    next request within two seconds is 403 and its open monitor socket is closed with 4403."""
    server = any_server
    token = await server.runtime.database.write(add_token, "ta-bob", "watch")
    exp = await server.create()
    headers = {"Authorization": f"Bearer {token}"}
    assert (await server.http.get(f"/api/experiments/{exp['code']}", headers=headers)).status_code == 200
    monitor = await server.monitor(exp["code"], token)
    assert (await monitor.expect("snapshot"))["channel"] == "snapshot"

    engine = make_engine(server.runtime.database.url)  # another connection: a `synclab token revoke`
    try:
        assert revoke_token(engine, "ta-bob")
    finally:
        engine.dispose()
    revoked_at = time.monotonic()
    while True:
        answer = await server.http.get(f"/api/experiments/{exp['code']}", headers=headers)
        if answer.status_code == 403:
            break
        assert time.monotonic() - revoked_at < timeout(2.0), "still accepted 2 s after the revoke"
        await asyncio.sleep(0.05)
    assert answer.json()["error"] == "the token 'ta-bob' was revoked"
    with pytest.raises(ConnectionClosed) as closed:
        async with asyncio.timeout(timeout(5)):
            while True:
                await monitor.next()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403
    assert time.monotonic() - revoked_at < timeout(3.5)


async def test_each_control_action_stores_the_name_of_its_token_and_the_export_shows_it(any_server: Harness) -> None:
    server = any_server
    token = await server.runtime.database.write(add_token, "dr-lee", "admin")
    exp = await server.create(participants=2, group_size=2, period_length=30)
    row, _col = [await server.connect(p["code"]) for p in exp["participants"]]
    await until_state(row, "period_start")
    lee = {"Authorization": f"Bearer {token}"}
    assert (await server.http.post(f"/api/experiments/{exp['code']}/pause", headers=lee)).status_code == 200
    assert (await server.http.post(f"/api/experiments/{exp['code']}/end")).status_code == 200  # the env's token
    exported = await server.http.get(f"/api/experiments/{exp['code']}/export.json", params={"table": "events"})
    assert exported.status_code == 200, exported.text
    controls = [e["value"] for e in exported.json() if e["channel"] == "control"]
    assert [(c["action"], c["by"]) for c in controls] == [("pause", "dr-lee"), ("end", "SYNCLAB_ADMIN_TOKEN")]
    listed = {t["name"]: t for t in await server.runtime.database.read(list_tokens)}
    assert listed["dr-lee"]["last_used_at"] is not None  # noted in the background, once a minute at most


# --------------------------------------------------------------------------- at rest, and the commands


def _every_text(engine: Engine) -> list[str]:
    """Every value of every column of every table, as text (JSON and times included)."""
    found: list[str] = []
    with engine.connect() as conn:
        have = inspect(conn)
        for table in have.get_table_names():
            for column in have.get_columns(table):
                name = column["name"]
                rows = conn.execute(select(cast(text(f'"{name}"'), String)).select_from(text(f'"{table}"')))
                found.extend(str(value) for (value,) in rows if value is not None)
    return found


def _command(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, url: str,
             *args: str) -> tuple[int, str, str]:
    """``synclab ARGS`` through the command's own entry point, in this process (the quick cases)."""
    monkeypatch.setenv("DATABASE_URL", url)
    status = main(list(args))
    out, err = capsys.readouterr()
    return status, out, err


def test_token_create_prints_the_token_once_and_the_database_keeps_only_its_hash(
    tmp_path: Path, database_url: str
) -> None:
    """``synclab token create`` (a real process) prints the token once, alone on stdout; the database
    holds its SHA-256 and nowhere (no text column of any table) the token."""
    created = run(tmp_path, "token", "create", "ta-anna", "--role", "watch", DATABASE_URL=database_url)
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert len(created.stdout.splitlines()) == 1 and len(token) >= 32
    assert "'ta-anna'" in created.stderr and "watch" in created.stderr and "shown this once" in created.stderr
    engine = make_engine(database_url)
    try:
        values = _every_text(engine)
        assert not any(token in value for value in values), "a token is stored in clear"
        assert hashlib.sha256(token.encode()).hexdigest() in values  # the scan saw the tokens' table
        assert [(t["name"], t["role"]) for t in list_tokens(engine)] == [("ta-anna", "watch")]
    finally:
        engine.dispose()


def test_no_stored_token_takes_the_name_of_the_environments_token(
    tmp_path: Path, sqlite_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``synclab token create SYNCLAB_ADMIN_TOKEN`` made a stored account of the name the
    environment's token acts under, so a ``control`` event's ``by`` could not tell the two apart;
    it is refused (exit 2, nothing stored), in any case of its letters."""
    monkeypatch.chdir(tmp_path)
    assert _command(capsys, monkeypatch, sqlite_url, "token", "create", "boss")[0] == 0
    for name in ("SYNCLAB_ADMIN_TOKEN", "synclab_admin_token"):
        status, out, err = _command(capsys, monkeypatch, sqlite_url, "token", "create", name)
        assert (status, out) == (2, ""), err
        assert "the name of the environment's SYNCLAB_ADMIN_TOKEN" in err
    engine = make_engine(sqlite_url)
    try:
        assert [t["name"] for t in list_tokens(engine)] == ["boss"]
    finally:
        engine.dispose()


def test_role_is_refused_for_list_and_revoke_which_ignored_it(
    tmp_path: Path, sqlite_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``token list --role watch`` listed every token, admins too, as if it had filtered them;
    ``token revoke NAME --role watch`` revoked an admin. ``--role`` is create's alone: the others
    refuse it (exit 2, nothing printed on stdout, nothing revoked)."""
    monkeypatch.chdir(tmp_path)
    assert _command(capsys, monkeypatch, sqlite_url, "token", "create", "boss")[0] == 0
    status, out, err = _command(capsys, monkeypatch, sqlite_url, "token", "list", "--role", "watch")
    assert (status, out) == (2, ""), err
    assert "token list: --role is for create only (list shows every token with its role" in err
    status, out, err = _command(capsys, monkeypatch, sqlite_url, "token", "revoke", "boss", "--role", "watch")
    assert (status, out) == (2, ""), err
    assert "token revoke: --role is for create only" in err
    engine = make_engine(sqlite_url)
    try:
        assert [(t["name"], t["role"], t["revoked_at"]) for t in list_tokens(engine)] == [("boss", "admin", None)]
    finally:
        engine.dispose()


def test_list_and_revoke_refuse_a_database_without_synclab_tables_and_make_none(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``token list`` and ``token revoke`` read and write under a reader's mark, at this synclab's
    revision (as ``export`` and ``verify``): on a SQLite file that is no synclab database they
    refuse in one line (exit 2) and leave it as it was. Until 2026-12-06 they made synclab's
    tables in it, as ``serve`` and ``token create`` make a new database."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (body TEXT)")
    conn.commit()
    conn.close()
    for args in (("token", "list"), ("token", "revoke", "boss")):
        status, out, err = _command(capsys, monkeypatch, f"sqlite:///{path}", *args)
        assert (status, out) == (2, ""), (args, err)
        assert "has no table 'experiments'" in err and "is DATABASE_URL a synclab database?" in err, err
        assert len(err.strip().splitlines()) == 1, err
    conn = sqlite3.connect(path)
    try:
        assert [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")] == ["notes"]
    finally:
        conn.close()


def test_a_bad_token_name_is_refused_saying_what_a_name_may_be(
    tmp_path: Path, sqlite_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The refusal said "(not starting with one of those)", which read as if a name could start
    with none of the allowed characters; it says what is allowed, the first character apart."""
    monkeypatch.chdir(tmp_path)
    for name in (".anna", "bad name", "x" * 65):
        status, out, err = _command(capsys, monkeypatch, sqlite_url, "token", "create", name)
        assert (status, out) == (2, ""), err
        assert ("expected 1 to 64 characters, each a letter, a digit or one of '._@-', "
                "the first a letter or a digit") in err
        assert "not starting with" not in err


def test_the_token_commands_list_and_revoke_and_a_running_server_follows(
    tmp_path: Path, sqlite_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``list`` shows names, roles and times, never a token or a digest; ``revoke`` refuses a token
    from then on, in a running server too; names are checked and not reused. Real processes for
    list and serve (revoke's real process is in tests/cluster/test_tokens.py); the rest through the
    command's entry point in this process."""
    database_url = sqlite_url
    monkeypatch.chdir(tmp_path)  # no stray .env
    for name in ("SYNCLAB_ADMIN_TOKEN", "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    status, out, _ = _command(capsys, monkeypatch, database_url, "token", "create", "ta-anna", "--role", "watch")
    assert status == 0
    token = out.strip()
    status, out, _ = _command(capsys, monkeypatch, database_url, "token", "create", "boss")
    assert status == 0
    boss = out.strip()

    status, _, err = _command(capsys, monkeypatch, database_url, "token", "create", "ta-anna")
    assert status == 1 and "exists already" in err
    status, _, err = _command(capsys, monkeypatch, database_url, "token", "create", "bad name")
    assert status == 2 and "a token's name" in err
    status, _, err = _command(capsys, monkeypatch, database_url, "token", "create", "x", "--role", "root")
    assert status == 2 and "expected one of ['admin', 'watch']" in err

    listed = run(tmp_path, "token", "list", DATABASE_URL=database_url)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["name", "role", "created", "last", "used", "revoked"]
    assert lines[1].split()[:2] == ["ta-anna", "watch"] and lines[2].split()[:2] == ["boss", "admin"]
    for secret in (token, boss, hashlib.sha256(token.encode()).hexdigest()):
        assert secret not in listed.stdout

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with started(tmp_path, "serve", "--port", str(port), DATABASE_URL=database_url):
        wait_until_healthy(base)
        with httpx.Client(base_url=base, timeout=timeout(5)) as http:
            assert http.get("/api/experiments", headers={"Authorization": f"Bearer {token}"}).status_code == 200
            status, _, err = _command(capsys, monkeypatch, database_url, "token", "revoke", "ta-anna")
            assert status == 0 and "revoked the token 'ta-anna'" in err
            time.sleep(1.1)  # the server's lookup of the token is kept a second
            assert http.get("/api/experiments", headers={"Authorization": f"Bearer {boss}"}).status_code == 200
            refused = http.get("/api/experiments", headers={"Authorization": f"Bearer {token}"})
            assert refused.status_code == 403 and "'ta-anna' was revoked" in refused.text
    status, _, err = _command(capsys, monkeypatch, database_url, "token", "revoke", "ta-anna")
    assert status == 1 and "revoked already" in err
    status, _, err = _command(capsys, monkeypatch, database_url, "token", "revoke", "nobody")
    assert status == 1 and "no token named 'nobody'" in err
    status, out, _ = _command(capsys, monkeypatch, database_url, "token", "list", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["ta-anna"]["revoked_at"] is not None and rows["boss"]["revoked_at"] is None
    assert rows["ta-anna"]["last_used_at"] is not None and rows["boss"]["last_used_at"] is not None


async def test_migration_0005_moves_the_generated_token_out_of_meta_hashed_and_it_keeps_working(
    tmp_path: Path, database_url: str
) -> None:
    """A database of 0.1.0 whose first start generated a token (kept in clear in ``meta``): after the
    upgrade ``meta`` no longer has it, the account ``admin`` holds its SHA-256, no column holds the
    token, and a server on it accepts the same token as ``admin`` and generates none."""
    url = release_database(tmp_path, database_url)
    clear = "a-clear-token-of-release-0-1-0-xyz"
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO meta (key, value) VALUES ('admin_token', :v)"), {"v": clear})
        upgrade_schema(engine)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM meta WHERE key = 'admin_token'")).scalar_one() == 0
        assert [(t["name"], t["role"], t["revoked_at"]) for t in list_tokens(engine)] == [("admin", "admin", None)]
        values = _every_text(engine)
        assert not any(clear in value for value in values)
        assert hashlib.sha256(clear.encode()).hexdigest() in values
    finally:
        engine.dispose()
    async with running_server(url, admin_token=None) as server:
        assert server.runtime.admin_token is None  # none generated: the old one moved
        made = await server.http.post("/api/experiments", headers={"Authorization": f"Bearer {clear}"},
                                      json={"game": "bimatrix", "participants": 2, "group_size": 2})
        assert made.status_code == 201, made.text


async def test_a_watch_token_reads_but_the_generated_first_token_is_admin(sqlite_url: str) -> None:
    """Without SYNCLAB_ADMIN_TOKEN the first start makes the account ``admin`` (role admin); a
    ``watch`` account made next to it cannot create experiments."""
    async with running_server(sqlite_url, admin_token=None) as server:
        first = server.runtime.admin_token
        assert first is not None
        assert [(t["name"], t["role"]) for t in await server.runtime.database.read(list_tokens)] == [("admin", "admin")]
        watch = await server.runtime.database.write(add_token, "viewer", "watch")
        body = {"game": "bimatrix", "participants": 2, "group_size": 2}
        made = await server.http.post("/api/experiments", json=body)
        assert made.status_code == 201, made.text
        refused = await server.http.post("/api/experiments", json=body, headers={"Authorization": f"Bearer {watch}"})
        assert refused.status_code == 403 and "'viewer' has the role watch" in refused.json()["error"]
        listed = await server.http.get("/api/experiments", headers={"Authorization": f"Bearer {watch}"})
        assert listed.status_code == 200 and listed.json()["count"] == 1
