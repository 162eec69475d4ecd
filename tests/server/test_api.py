"""The REST API (contract section 4) against a real server: games, experiments, auth, events."""

from __future__ import annotations

import asyncio
import math
import re
import time
from typing import Any, ClassVar

import httpx
import orjson
import pytest
from sqlalchemy import Engine, func, select

from groups import DecisionGroup
from server.accounts import Account
from server.exceptions import NotPersisted
from server.runtime import Runtime, generated_token
from server.settings import Settings
from server.storage import (
    NewEvent,
    Write,
    experiment_row,
    experiments,
    list_tokens,
    make_engine,
    prepare_schema,
)
from tests.server.harness import (
    TOKEN,
    Client,
    Harness,
    eventually,
    holding_writes,
    running_server,
    timeout,
    until_queued,
)

ISO_UTC_MICROSECONDS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
URL_SAFE = re.compile(r"^[A-Za-z0-9_-]+$")
ROW_FIELDS = {"seq", "timestamp", "group", "participant", "channel", "value", "bot", "recipient"}
PAGE_FIELDS = {"count", "num_pages", "current_page", "next", "previous", "results"}
PRISONERS_DILEMMA = {"AA": [3, 3], "AB": [0, 5], "BA": [5, 0], "BB": [1, 1]}
VALID = {"game": "bimatrix", "participants": 2, "group_size": 2}
DECISIONS = (0.3, 0.7, 0.1, 0.9)


# --------------------------------------------------------------------------- helpers


async def wait_for_decision(client: Client, code: str, value: float) -> dict[str, Any]:
    """The first ``group_decisions`` frame that shows ``code`` at ``value``."""
    async with asyncio.timeout(timeout(5)):
        while True:
            frame = await client.expect("group_decisions")
            if frame["payload"].get(code) == value:
                return frame


async def play(server: Harness) -> tuple[dict[str, Any], int]:
    """A bimatrix pair that starts its period and plays :data:`DECISIONS`; returns the
    experiment and how many events the API then reports."""
    exp = await server.create()
    codes = [p["code"] for p in exp["participants"]]
    clients = [await server.connect(code) for code in codes]
    for client in clients:
        assert (await client.expect("state"))["payload"] == "period_start"
    for i, value in enumerate(DECISIONS):
        await clients[i % 2].send("decisions", value)
        for client in clients:
            await wait_for_decision(client, codes[i % 2], value)
    response = await server.http.get(f"/api/experiments/{exp['code']}/events", params={"page_size": 1000})
    assert response.status_code == 200, response.text
    total = response.json()["count"]
    # a state event, the opening group_decisions, then a decision and its broadcast each
    assert total >= 2 + 2 * len(DECISIONS)
    return exp, total


def count_experiments(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(experiments)).scalar_one())


async def stored_experiments(server: Harness) -> int:
    """How many experiments the server's database holds."""
    return await server.runtime.database.read(count_experiments)


def events_url(exp: dict[str, Any]) -> str:
    return f"/api/experiments/{exp['code']}/events"


def assert_refused(response: httpx.Response, field: str) -> str:
    """A 400 with a JSON body naming ``field``; returns its message."""
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body.get("field") == field, body
    message = body["error"]
    assert isinstance(message, str) and message
    return message


# --------------------------------------------------------------------------- health and games


async def test_healthz_answers_ok_without_a_token(server: Harness) -> None:
    """GET /healthz is 200 {"status": "ok"} and needs no experimenter token."""
    async with httpx.AsyncClient(base_url=server.base, timeout=timeout(5)) as anonymous:
        response = await anonymous.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_games_lists_both_bundled_games_with_schema_and_defaults(server: Harness) -> None:
    """GET /api/games lists bimatrix and public_goods, each with a config schema and defaults."""
    response = await server.http.get("/api/games")
    assert response.status_code == 200
    games = {game["name"]: game for game in response.json()["results"]}
    assert {"bimatrix", "public_goods"} <= set(games)
    for game in games.values():
        assert isinstance(game["config_schema"], dict) and game["config_schema"]["type"] == "object"
        assert isinstance(game["default_config"], dict)
    assert games["bimatrix"]["default_config"]["payoffs"] == PRISONERS_DILEMMA
    assert games["public_goods"]["default_config"]["endowment"] == 10
    assert games["public_goods"]["default_config"]["mpcr"] == 0.5


async def test_the_server_counts_the_writers_batches_writes_and_events_and_the_sockets(server: Harness) -> None:
    """GET /api/server: what the writer committed since start-up, live groups and participant sockets."""
    before = (await server.http.get("/api/server")).json()
    exp = await server.create(participants=2, group_size=2)
    first = await server.connect(exp["participants"][0]["code"])
    second = await server.connect(exp["participants"][1]["code"])
    await first.send("decisions", 0.25, "d1")
    await first.expect("ack")
    status = (await server.http.get("/api/server")).json()
    assert status["live_groups"] == before["live_groups"] + 1
    assert status["durability"] == "power-loss", "every commit synced to the disk unless set otherwise"
    assert status["connections"] == before["connections"] + 2
    stored = len(await server.events(exp["code"]))
    writer, earlier = status["writer"], before["writer"]
    assert writer["events"] - earlier["events"] == stored, "every stored event is counted once"
    # two connects, and the decision (the start is a tick or rides on the second connect's write)
    assert 3 <= writer["writes"] - earlier["writes"] <= stored
    assert 1 <= writer["batches"] - earlier["batches"] <= writer["writes"] - earlier["writes"]
    # every committed batch is counted once by how long its commit took
    assert list(writer["commit_ms"]) == ["1", "2", "5", "10", "20", "50", "100", "200", "500", "1000", "more"]
    assert sum(writer["commit_ms"].values()) == writer["batches"]
    # a few commits of a lab's pace leave the log far below where the writer restarts it
    assert writer["log_restarts"] == earlier["log_restarts"] == 0
    await first.close()
    await second.close()


# --------------------------------------------------------------------------- creating an experiment


async def test_creating_an_experiment_answers_201_with_pending_status_and_participant_links(
    server: Harness,
) -> None:
    """POST /api/experiments is 201 with the code, status pending and one link per participant."""
    response = await server.http.post("/api/experiments", json={**VALID, "participants": 4})
    assert response.status_code == 201, response.text
    exp = response.json()
    assert isinstance(exp["code"], str) and URL_SAFE.match(exp["code"])
    assert exp["status"] == "pending"
    assert exp["game"] == "bimatrix"
    assert exp["blocks"] == 1
    assert exp["group_size"] == 2
    assert exp["config"]["payoffs"] == PRISONERS_DILEMMA
    assert len(exp["participants"]) == 4
    for person in exp["participants"]:
        assert set(person) >= {"code", "url", "label"}
        assert person["url"].startswith(server.base + "/")
        assert person["url"].endswith(f"/p/{person['code']}")
    assert len({p["label"] for p in exp["participants"]}) == 4


async def test_participant_codes_are_unique_url_safe_and_at_least_128_bits(server: Harness) -> None:
    """Every participant code is URL-safe, ≥ 22 base64url characters, and never repeats."""
    codes: list[str] = []
    for _ in range(5):
        exp = await server.create(participants=20)
        codes.extend(p["code"] for p in exp["participants"])
    assert len(codes) == 100
    assert len(set(codes)) == len(codes)
    for code in codes:
        assert URL_SAFE.match(code), code
        assert len(code) >= 22, code


async def test_a_participant_link_serves_the_participant_page(server: Harness) -> None:
    """The url of a created participant answers 200 with the participant page."""
    exp = await server.create()
    async with httpx.AsyncClient(timeout=timeout(5)) as anonymous:
        response = await anonymous.get(exp["participants"][0]["url"])
    assert response.status_code == 200
    assert "html" in response.headers["content-type"]


async def test_an_import_path_is_accepted_as_the_game(server: Harness) -> None:
    """game "groups.public_goods:PublicGoods" creates a public goods experiment."""
    response = await server.http.post(
        "/api/experiments",
        json={"game": "groups.public_goods:PublicGoods", "participants": 3, "group_size": 3},
    )
    assert response.status_code == 201, response.text
    exp = response.json()
    assert exp["config"] == {"endowment": 10, "mpcr": 0.5}
    assert len(exp["participants"]) == 3


async def test_a_body_that_is_not_json_is_refused_with_400(server: Harness) -> None:
    """A body that does not parse as JSON gets 400 and a message saying JSON was expected."""
    for raw in (b"{not json", b"", b"\xff\xfe"):
        response = await server.http.post(
            "/api/experiments", content=raw, headers={"content-type": "application/json"}
        )
        assert response.status_code == 400, response.text
        assert "JSON" in response.json()["error"]


async def test_a_body_that_is_not_an_object_is_refused_with_400(server: Harness) -> None:
    """A JSON list or string body gets 400 saying an object was expected and what arrived."""
    for raw, arrived in ((b"[1, 2]", "list"), (b'"bimatrix"', "str"), (b"null", "None"), (b"4", "int")):
        response = await server.http.post(
            "/api/experiments", content=raw, headers={"content-type": "application/json"}
        )
        assert response.status_code == 400, response.text
        message = response.json()["error"]
        assert "object" in message
        assert arrived in message


def _bad(overrides: dict[str, Any], field: str, *fragments: str, drop: str | None = None) -> dict[str, Any]:
    body = {**VALID, **overrides}
    if drop is not None:
        body.pop(drop)
    return {"body": body, "field": field, "fragments": fragments}


REFUSED_BODIES = [
    pytest.param(_bad({"colour": "red"}, "colour", "unknown field", "game"), id="unknown-field"),
    pytest.param(_bad({}, "game", "expected", "None", drop="game"), id="game-missing"),
    pytest.param(_bad({"game": 5}, "game", "expected", "5"), id="game-not-a-string"),
    pytest.param(_bad({"game": "chess"}, "game", "'chess'", "bimatrix", "public_goods"), id="game-unknown"),
    pytest.param(_bad({"game": "nowhere.at_all:Game"}, "game", "nowhere.at_all:Game"), id="game-bad-import"),
    pytest.param(_bad({"participants": 0}, "participants", "expected", "0"), id="participants-0"),
    pytest.param(_bad({"participants": -1}, "participants", "expected", "-1"), id="participants-negative"),
    pytest.param(_bad({"participants": "4"}, "participants", "expected", "'4'"), id="participants-string"),
    pytest.param(_bad({"participants": True}, "participants", "expected", "True"), id="participants-bool"),
    pytest.param(_bad({"participants": 2.0}, "participants", "expected", "2.0"), id="participants-float"),
    pytest.param(_bad({}, "participants", "expected", "nothing", drop="participants"), id="participants-missing"),
    pytest.param(_bad({"participants": 3}, "participants", "multiple", "2", "3"), id="participants-not-multiple"),
    pytest.param(_bad({"participants": 6, "group_size": 3}, "group_size", "2", "3"), id="group-size-3-bimatrix"),
    pytest.param(_bad({"group_size": 0}, "group_size", "expected", "0"), id="group-size-0"),
    pytest.param(_bad({"period_length": 0}, "period_length", "expected", "0"), id="period-length-0"),
    pytest.param(_bad({"period_length": -1}, "period_length", "expected", "-1"), id="period-length-negative"),
    pytest.param(_bad({"period_length": "x"}, "period_length", "expected", "'x'"), id="period-length-string"),
    pytest.param(_bad({"period_length": None}, "period_length", "expected", "null"), id="period-length-null"),
    pytest.param(_bad({"num_subperiods": 0}, "num_subperiods", "expected", "0"), id="num-subperiods-0"),
    pytest.param(_bad({"num_subperiods": 1.5}, "num_subperiods", "expected", "1.5"), id="num-subperiods-float"),
    pytest.param(_bad({"rate_limit": 0}, "rate_limit", "expected", "0"), id="rate-limit-0"),
    pytest.param(_bad({"rate_limit": "1"}, "rate_limit", "expected", "'1'"), id="rate-limit-string"),
    pytest.param(_bad({"blocks": 0}, "blocks", "expected", "0"), id="blocks-0"),
    pytest.param(_bad({"bonus_points": "x"}, "bonus_points", "expected", "'x'"), id="bonus-points-string"),
    pytest.param(_bad({"matching": "swiss"}, "matching", "'swiss'", "fixed", "random"), id="matching-swiss"),
    pytest.param(_bad({"config": "x"}, "config", "object", "'x'"), id="config-string"),
    pytest.param(_bad({"config": 5}, "config", "object", "5"), id="config-number"),
    pytest.param(_bad({"config": [1]}, "config", "object", "[1]"), id="config-list"),
    pytest.param(_bad({"config": []}, "config", "object", "[]"), id="config-empty-list"),
    pytest.param(_bad({"config": ""}, "config", "object", "''"), id="config-empty-string"),
    pytest.param(_bad({"config": 0}, "config", "object", "0"), id="config-zero"),
    pytest.param(_bad({"config": False}, "config", "object", "False"), id="config-false"),
    pytest.param(
        _bad({"config": {"colour": 1}}, "config.colour", "colour", "payoffs"), id="config-unknown-key"
    ),
    pytest.param(
        _bad(
            {"config": {"payoffs": {"AA": [3, 3], "AB": [0, 5], "BA": [5, 0]}}},
            "config.payoffs",
            "BB",
            "expected",
        ),
        id="bimatrix-payoffs-missing-cell",
    ),
    pytest.param(
        _bad(
            {"game": "public_goods", "participants": 3, "group_size": 3, "config": {"endowment": -1}},
            "config.endowment",
            "expected",
            "-1",
        ),
        id="public-goods-endowment-negative",
    ),
    # every number has an upper bound: a huge period's end overflowed the stored time (halting a
    # SQLite server's storage), a huge amount the sums of scores
    pytest.param(_bad({"period_length": 604_800.5}, "period_length", "604800", "604800.5"), id="period-length-over-a-week"),
    pytest.param(_bad({"period_length": 1e12}, "period_length", "604800"), id="period-length-1e12"),
    pytest.param(_bad({"period_length": 1e308}, "period_length", "604800"), id="period-length-1e308"),
    pytest.param(_bad({"rate_limit": 1e12}, "rate_limit", "604800"), id="rate-limit-1e12"),
    pytest.param(_bad({"block_pause": 1e308}, "block_pause", "3600"), id="block-pause-1e308"),
    pytest.param(_bad({"bonus_points": 1e308}, "bonus_points", "1e+09"), id="bonus-points-1e308"),
    pytest.param(_bad({"bonus_points": -1e308}, "bonus_points", "1e+09"), id="bonus-points-minus-1e308"),
    pytest.param(_bad({"bonus_points": 1e9 + 1}, "bonus_points", "1e+09"), id="bonus-points-over-1e9"),
    pytest.param(
        _bad({"config": {"payoffs": {**PRISONERS_DILEMMA, "AB": [0, 1.7e308]}}}, "config.payoffs.AB[1]", "1e+09"),
        id="bimatrix-payoff-1.7e308",
    ),
    pytest.param(
        _bad({"config": {"payoffs": {**PRISONERS_DILEMMA, "BA": [-1e9 - 1, 0]}}}, "config.payoffs.BA[0]", "1e+09"),
        id="bimatrix-payoff-below-minus-1e9",
    ),
    pytest.param(
        _bad({"game": "public_goods", "participants": 3, "group_size": 3, "config": {"endowment": 1e308}},
             "config.endowment", "1e+09"),
        id="public-goods-endowment-1e308",
    ),
    pytest.param(
        _bad({"game": "public_goods", "participants": 3, "group_size": 3, "config": {"mpcr": 1000.5}},
             "config.mpcr", "1000"),
        id="public-goods-mpcr-over-1000",
    ),
    pytest.param(
        _bad({"online": {"lobby_timeout": 1e308}}, "online.lobby_timeout", "86400"), id="online-lobby-timeout-1e308"
    ),
    pytest.param(
        _bad({"online": {"dropout_after": 86_401}}, "online.dropout_after", "86400"), id="online-dropout-after-over-a-day"
    ),
]


class Weighted(DecisionGroup):
    """A game whose config is checked by its schema alone (no ``validate_config`` of its own)."""

    config_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "weights": {
                "type": "array",
                "items": {"type": "object", "properties": {"w": {"type": "number", "minimum": 0}}, "required": ["w"]},
            },
        },
    }
    default_config: ClassVar[dict[str, Any]] = {"weights": [{"w": 1}]}


async def test_a_config_its_games_schema_refuses_is_400_naming_the_field(server: Harness) -> None:
    """The game's ``config_schema`` is enforced: a weight that is no number is a 400 on
    ``config.weights[2].w``, nothing is stored; the same config with numbers is created."""
    body = {"game": "tests.server.test_api:Weighted", "participants": 2, "group_size": 2}
    weights = [{"w": 1}, {"w": 2.5}, {"w": "heavy"}]
    response = await server.http.post("/api/experiments", json={**body, "config": {"weights": weights}})
    message = assert_refused(response, "config.weights[2].w")
    assert "expected a number at least 0" in message and "'heavy'" in message, message
    assert await stored_experiments(server) == 0
    weights[2] = {"w": 0}
    created = await server.create(**body, config={"weights": weights})
    assert created["config"] == {"weights": weights}


class SlipsOnItsConfig(DecisionGroup):
    """A researcher's validate_config with a bug: it reads a key nobody gave."""

    default_config: ClassVar[dict[str, Any]] = {"a": 1}

    @classmethod
    def validate_config(cls, config: Any) -> dict[str, Any]:
        merged = super().validate_config(config)
        merged["b"] = merged["missing"]
        return merged


async def test_a_game_whose_config_check_raises_is_a_400_saying_what_it_raised(
    server: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """Not ConfigError but a bug of the game's (KeyError) was a bare 500 "Internal Server Error":
    the researcher trying their game learnt nothing from it. Now a 400 on ``config`` naming the
    game and the exception, its traceback logged, nothing stored."""
    name = "tests.server.test_api:SlipsOnItsConfig"
    response = await server.http.post("/api/experiments", json={"game": name, "participants": 2, "group_size": 2})
    message = assert_refused(response, "config")
    assert name in message and "KeyError: 'missing'" in message, message
    assert await stored_experiments(server) == 0
    logged = [r for r in caplog.records if r.exc_info and name in r.getMessage()]
    assert logged and logged[0].exc_info is not None and logged[0].exc_info[0] is KeyError


class Rounds(DecisionGroup):
    """A game that relies on its schema for an integer (it would run ``range(rounds)``)."""

    config_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {"rounds": {"type": "integer", "minimum": 1}},
    }
    default_config: ClassVar[dict[str, Any]] = {"rounds": 1}


async def test_an_integer_written_2_0_is_400_and_2_is_created(server: Harness) -> None:
    """``"rounds": 2.0`` is refused on ``config.rounds`` (the game would get a float), ``2`` is taken as an int."""
    body = {"game": "tests.server.test_api:Rounds", "participants": 2, "group_size": 2}
    response = await server.http.post(
        "/api/experiments", content=orjson.dumps({**body, "config": {"rounds": 2.0}}),
        headers={"Content-Type": "application/json"},
    )
    message = assert_refused(response, "config.rounds")
    assert "expected an integer at least 1, got 2.0" in message, message
    assert await stored_experiments(server) == 0
    created = await server.create(**body, config={"rounds": 2})
    assert created["config"] == {"rounds": 2} and type(created["config"]["rounds"]) is int


@pytest.mark.parametrize("case", REFUSED_BODIES)
async def test_each_refused_body_gets_400_naming_the_field_with_expected_and_got(
    server: Harness, case: dict[str, Any]
) -> None:
    """A bad field is refused with 400, ``field`` naming it and a message with what was expected and what came."""
    response = await server.http.post("/api/experiments", json=case["body"])
    message = assert_refused(response, case["field"])
    for fragment in case["fragments"]:
        assert fragment in message, (fragment, message)
    assert await stored_experiments(server) == 0


async def test_every_number_at_its_limit_is_accepted(server: Harness) -> None:
    """A week's period_length and rate_limit, an hour's block_pause, bonus_points and payoffs of
    ±1e9, an endowment of 1e9 with an mpcr of 1000, a day's online waits: each is 201."""
    at_limit = {"AA": [1e9, -1e9], "AB": [0, 5], "BA": [5, 0], "BB": [-1e9, 1e9]}
    bodies = [
        {**VALID, "period_length": 604_800, "rate_limit": 604_800, "block_pause": 3600, "bonus_points": 1e9},
        {**VALID, "bonus_points": -1e9, "config": {"payoffs": at_limit}},
        {"game": "public_goods", "participants": 3, "group_size": 3, "config": {"endowment": 1e9, "mpcr": 1000}},
        {**VALID, "online": {"lobby_timeout": 86_400, "dropout_after": 86_400}},
    ]
    for body in bodies:
        response = await server.http.post("/api/experiments", json=body)
        assert response.status_code == 201, (body, response.text)


async def test_a_period_of_a_week_starts_and_is_stored(server: Harness) -> None:
    """The longest period_length starts (its end a week ahead is stored) and the server goes on serving."""
    exp = await server.create(period_length=604_800)
    started = await server.http.post(f"/api/experiments/{exp['code']}/start")
    assert started.status_code == 200, started.text
    for _ in range(50):
        detail = await server.http.get(f"/api/experiments/{exp['code']}")
        assert detail.status_code == 200, detail.text
        if detail.json()["status"] == "running":
            break
        await asyncio.sleep(0.1)
    assert detail.json()["status"] == "running"
    assert (await server.http.post("/api/experiments", json=VALID)).status_code == 201


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize(
    ("template", "field"),
    [
        pytest.param('{"game": "bimatrix", "participants": 2, "group_size": 2, "config": {"payoffs": %s}}', "config",
                     id="config-payoffs"),
        pytest.param('{"game": "bimatrix", "participants": 2, "group_size": 2, "config": %s}', "config", id="config"),
        pytest.param('{"game": %s, "participants": 2, "group_size": 2}', "game", id="game"),
        pytest.param('{"game": "bimatrix", "participants": %s, "group_size": 2}', "participants", id="participants"),
        pytest.param('{"game": "bimatrix", "participants": 2, "group_size": 2, "period_length": %s}', "period_length",
                     id="period-length"),
        pytest.param('{"game": "bimatrix", "participants": 2, "group_size": 2, "matching": %s}', "matching",
                     id="matching"),
        pytest.param('{"game": "bimatrix", "participants": 2, "group_size": 2, "online": {"fill": %s}}', "online.fill",
                     id="online-fill"),
    ],
)
async def test_a_value_nested_1000_deep_is_400_naming_its_field(server: Harness, template: str, field: str) -> None:
    """JSON nested 1,000 deep (which the body's parser takes) is refused with 400 and a short message,
    not a 500 (repr() of it raised RecursionError)."""
    body = (template % _nested(1_000)).encode()
    response = await server.http.post("/api/experiments", content=body, headers={"content-type": "application/json"})
    message = assert_refused(response, field)
    assert len(message) < 300, message
    assert await stored_experiments(server) == 0


async def test_defaults_fill_every_optional_field(server: Harness) -> None:
    """Only game, participants and group_size are needed; blocks defaults to 1 and config to the game's."""
    response = await server.http.post(
        "/api/experiments", json={"game": "public_goods", "participants": 4, "group_size": 2}
    )
    assert response.status_code == 201, response.text
    exp = response.json()
    assert exp["blocks"] == 1
    assert exp["config"] == {"endowment": 10, "mpcr": 0.5}
    assert exp["status"] == "pending"
    assert exp["num_participants"] == 4


async def test_a_partial_game_config_is_merged_with_the_defaults(server: Harness) -> None:
    """A config that sets only some keys keeps the game's defaults for the rest."""
    exp = await server.create(game="public_goods", participants=2, group_size=2, config={"mpcr": 0.8})
    assert exp["config"] == {"endowment": 10, "mpcr": 0.8}


# --------------------------------------------------------------------------- authentication


ADMIN_ENDPOINTS = [
    pytest.param("POST", "/api/experiments", id="create"),
    pytest.param("GET", "/api/experiments/{code}", id="detail"),
    pytest.param("GET", "/api/experiments/{code}/events", id="events"),
    pytest.param("GET", "/api/server", id="server"),
]


@pytest.mark.parametrize(("method", "path"), ADMIN_ENDPOINTS)
async def test_an_experimenter_endpoint_without_a_token_is_401(server: Harness, method: str, path: str) -> None:
    """No Authorization header (or not a bearer one) is 401 with a JSON error."""
    exp = await server.create()
    url = path.format(code=exp["code"])
    async with httpx.AsyncClient(base_url=server.base, timeout=timeout(5)) as anonymous:
        for headers in ({}, {"Authorization": "Basic dXNlcjpwYXNz"}, {"Authorization": "Bearer"}):
            response = await anonymous.request(method, url, json=VALID, headers=headers)
            assert response.status_code == 401, (headers, response.text)
            assert response.json()["error"]


@pytest.mark.parametrize(("method", "path"), ADMIN_ENDPOINTS)
async def test_an_experimenter_endpoint_with_a_wrong_token_is_403(server: Harness, method: str, path: str) -> None:
    """A bearer token that is not the experimenter token is 403, also for non-ASCII tokens."""
    exp = await server.create()
    url = path.format(code=exp["code"])
    async with httpx.AsyncClient(base_url=server.base, timeout=timeout(5)) as anonymous:
        for token in (b"wrong", TOKEN.encode() + b"x", TOKEN[:-1].encode(), "t\u00e9st".encode("latin-1")):
            response = await anonymous.request(
                method, url, json=VALID, headers={"Authorization": b"Bearer " + token}
            )
            assert response.status_code == 403, (token, response.text)
            assert response.json()["error"]


async def test_an_unauthenticated_creation_stores_nothing(server: Harness) -> None:
    """A POST without a token or with a wrong one leaves no experiment in the database."""
    async with httpx.AsyncClient(base_url=server.base, timeout=timeout(5)) as anonymous:
        assert (await anonymous.post("/api/experiments", json=VALID)).status_code == 401
        wrong = {"Authorization": "Bearer wrong"}
        assert (await anonymous.post("/api/experiments", json=VALID, headers=wrong)).status_code == 403
    assert await stored_experiments(server) == 0


async def test_auth_is_checked_before_the_experiment_is_looked_up(server: Harness) -> None:
    """An unknown experiment code without a token is 401, with a wrong one 403: no existence leak."""
    async with httpx.AsyncClient(base_url=server.base, timeout=timeout(5)) as anonymous:
        assert (await anonymous.get("/api/experiments/nope")).status_code == 401
        assert (await anonymous.get("/api/experiments/nope/events")).status_code == 401
        wrong = {"Authorization": "Bearer wrong"}
        assert (await anonymous.get("/api/experiments/nope", headers=wrong)).status_code == 403
        assert (await anonymous.get("/api/experiments/nope/events", headers=wrong)).status_code == 403


# --------------------------------------------------------------------------- detail


async def test_the_detail_repeats_what_creation_returned(server: Harness) -> None:
    """GET /api/experiments/{code} gives the same code, status, game and participants as the 201."""
    exp = await server.create(participants=4)
    response = await server.http.get(f"/api/experiments/{exp['code']}")
    assert response.status_code == 200, response.text
    detail = response.json()
    for key in ("code", "status", "game", "config", "group_size", "blocks", "participants"):
        assert detail[key] == exp[key], key


async def test_an_unknown_experiment_is_404(server: Harness) -> None:
    """The detail and the events of an unknown experiment code are 404 with a JSON error."""
    for path in ("/api/experiments/no-such-code", "/api/experiments/no-such-code/events"):
        response = await server.http.get(path)
        assert response.status_code == 404, path
        assert "no-such-code" in response.json()["error"]


# --------------------------------------------------------------------------- events


async def test_events_come_as_a_page_of_rows_with_every_field(server: Harness) -> None:
    """The events page has count, num_pages, current_page, next, previous, results; rows have the six fields."""
    exp, total = await play(server)
    codes = {p["code"] for p in exp["participants"]}
    response = await server.http.get(events_url(exp), params={"page_size": 3})
    assert response.status_code == 200, response.text
    page = response.json()
    assert set(page) == PAGE_FIELDS
    assert page["count"] == total
    assert page["num_pages"] == math.ceil(total / 3)
    assert page["current_page"] == 1
    assert page["previous"] is None
    assert page["next"] is not None
    assert len(page["results"]) == 3

    everything = (await server.http.get(events_url(exp), params={"page_size": 1000})).json()["results"]
    assert [row["seq"] for row in everything] == list(range(1, total + 1))
    groups = set()
    for row in everything:
        assert set(row) == ROW_FIELDS
        assert ISO_UTC_MICROSECONDS.match(row["timestamp"]), row["timestamp"]
        assert row["participant"] is None or row["participant"] in codes
        assert row["recipient"] is None or (row["recipient"] in codes and row["channel"] == "result")
        assert isinstance(row["channel"], str)
        groups.add(row["group"])
    assert len(groups) == 1
    decisions = [row for row in everything if row["channel"] == "decisions"]
    assert [row["value"] for row in decisions] == list(DECISIONS)
    ordered = [p["code"] for p in exp["participants"]]
    assert [row["participant"] for row in decisions] == [ordered[i % 2] for i in range(len(DECISIONS))]
    for row in everything:
        if row["channel"] in ("state", "group_decisions"):
            assert row["participant"] is None
    assert everything[0]["channel"] == "state" and everything[0]["value"] == "period_start"


async def test_following_next_links_walks_every_event_once_in_seq_order(server: Harness) -> None:
    """Starting at page 1 and following ``next`` visits each event exactly once, in seq order."""
    exp, total = await play(server)
    seen: list[int] = []
    url: str | None = f"{server.base}{events_url(exp)}?page_size=3"
    pages = 0
    while url is not None:
        pages += 1
        assert pages <= total + 1, "next links do not end"
        response = await server.http.get(url)
        assert response.status_code == 200, response.text
        page = response.json()
        assert page["current_page"] == pages
        assert len(page["results"]) <= 3
        seen.extend(row["seq"] for row in page["results"])
        url = page["next"]
    assert seen == list(range(1, total + 1))
    assert pages == math.ceil(total / 3)


async def test_previous_links_walk_back_to_the_first_page(server: Harness) -> None:
    """From the last page, ``previous`` links lead back to page 1, whose previous is null."""
    exp, total = await play(server)
    last = math.ceil(total / 2)
    response = await server.http.get(events_url(exp), params={"page": last, "page_size": 2})
    page = response.json()
    assert page["next"] is None
    numbers = [page["current_page"]]
    while page["previous"] is not None:
        assert len(numbers) <= last
        page = (await server.http.get(page["previous"])).json()
        numbers.append(page["current_page"])
    assert numbers == list(range(last, 0, -1))


async def test_page_size_accepts_1_and_1000(server: Harness) -> None:
    """page_size 1 gives one row per page; 1000 gives them all."""
    exp, total = await play(server)
    one = (await server.http.get(events_url(exp), params={"page_size": 1})).json()
    assert len(one["results"]) == 1 and one["num_pages"] == total
    second = (await server.http.get(events_url(exp), params={"page_size": 1, "page": 2})).json()
    assert [row["seq"] for row in second["results"]] == [2]
    big = (await server.http.get(events_url(exp), params={"page_size": 1000})).json()
    assert len(big["results"]) == total and big["num_pages"] == 1 and big["next"] is None


@pytest.mark.parametrize("value", ["0", "1001", "-1", "x", "1.5"])
async def test_a_bad_page_size_is_400_naming_page_size(server: Harness, value: str) -> None:
    """page_size outside 1..1000 or not an integer is 400 with field page_size."""
    exp = await server.create()
    response = await server.http.get(events_url(exp), params={"page_size": value})
    message = assert_refused(response, "page_size")
    assert repr(value) in message or value in message


@pytest.mark.parametrize("value", ["0", "-3", "x"])
async def test_a_bad_page_number_is_400_naming_page(server: Harness, value: str) -> None:
    """page 0, a negative page or a non-integer page is 400 with field page."""
    exp = await server.create()
    response = await server.http.get(events_url(exp), params={"page": value})
    assert_refused(response, "page")


async def test_a_page_past_the_last_is_404(server: Harness) -> None:
    """Asking for the page after the last one is 404."""
    exp, total = await play(server)
    last = math.ceil(total / 4)
    assert (await server.http.get(events_url(exp), params={"page": last, "page_size": 4})).status_code == 200
    response = await server.http.get(events_url(exp), params={"page": last + 1, "page_size": 4})
    assert response.status_code == 404
    assert response.json()["error"]


async def test_a_page_number_beyond_64_bits_is_refused_not_a_server_error(server: Harness) -> None:
    """page=10**30 is either past the last page (404) or out of range (400 naming page), never a 500."""
    exp = await server.create()
    response = await server.http.get(events_url(exp), params={"page": str(10**30)})
    assert response.status_code in (400, 404), response.text
    if response.status_code == 400:
        assert response.json()["field"] == "page"


@pytest.mark.parametrize(
    ("page", "page_size"), [pytest.param(2**63 - 1, 100, id="max-page"), pytest.param(10**18, 1000, id="big-offset")]
)
async def test_an_accepted_but_huge_page_number_is_404(server: Harness, page: int, page_size: int) -> None:
    """A page number the API accepts but far past the last page is 404, never a 500."""
    exp = await server.create()
    response = await server.http.get(events_url(exp), params={"page": str(page), "page_size": page_size})
    assert response.status_code == 404, response.text


@pytest.mark.parametrize("value", [str(2**63 - 1), str(10**30)])
async def test_a_gigantic_after_seq_is_answered_without_a_server_error(server: Harness, value: str) -> None:
    """A huge after_seq matches no event (200, empty) or is refused (400 naming after_seq), never a 500."""
    exp = await server.create()
    response = await server.http.get(events_url(exp), params={"after_seq": value})
    assert response.status_code in (200, 400), response.text
    if response.status_code == 200:
        assert response.json()["count"] == 0
    else:
        assert response.json()["field"] == "after_seq"


async def test_an_experiment_without_events_has_one_empty_page(server: Harness) -> None:
    """A fresh experiment: page 1 is empty with count 0 and num_pages 1; page 2 is 404."""
    exp = await server.create()
    page = (await server.http.get(events_url(exp))).json()
    assert page == {
        "count": 0,
        "num_pages": 1,
        "current_page": 1,
        "next": None,
        "previous": None,
        "results": [],
    }
    assert (await server.http.get(events_url(exp), params={"page": 2})).status_code == 404


async def test_after_seq_keeps_only_later_events(server: Harness) -> None:
    """after_seq=k returns exactly the events with seq > k, and count counts only those."""
    exp, total = await play(server)
    for after in (0, 1, 4, total - 1, total, total + 5):
        response = await server.http.get(events_url(exp), params={"after_seq": after, "page_size": 1000})
        assert response.status_code == 200, response.text
        page = response.json()
        expected = list(range(after + 1, total + 1))
        assert [row["seq"] for row in page["results"]] == expected
        assert page["count"] == len(expected)


async def test_next_links_keep_the_after_seq_filter(server: Harness) -> None:
    """Following ``next`` from a filtered first page stays filtered and visits each later event once."""
    exp, total = await play(server)
    after = 3
    seen = await follow_next(server, f"{server.base}{events_url(exp)}?after_seq={after}&page_size=2", total + 1)
    assert seen == list(range(after + 1, total + 1))


async def follow_next(server: Harness, url: str | None, most: int) -> list[int]:
    """The ``seq``s of every page from ``url`` on, by the ``next`` links (at most ``most`` pages)."""
    seen: list[int] = []
    for _ in range(most):
        if url is None:
            break
        page = (await server.http.get(url)).json()
        seen.extend(row["seq"] for row in page["results"])
        url = page["next"]
    assert url is None
    return seen


async def test_channel_keeps_only_that_channels_events_with_after_seq_and_the_next_links(server: Harness) -> None:
    """``?channel=`` (an extension): the events of that channel alone, counted alone, with after_seq
    and through the ``next`` links; a channel nobody used is one empty page."""
    exp, total = await play(server)
    everything = (await server.http.get(events_url(exp), params={"page_size": 1000})).json()["results"]
    for channel in sorted({row["channel"] for row in everything}):
        expected = [row for row in everything if row["channel"] == channel]
        page = (await server.http.get(events_url(exp), params={"channel": channel, "page_size": 1000})).json()
        assert page["results"] == expected and page["count"] == len(expected), channel
    decisions = [row["seq"] for row in everything if row["channel"] == "decisions"]
    assert len(decisions) >= 3
    url = f"{server.base}{events_url(exp)}?channel=decisions&after_seq={decisions[0]}&page_size=1"
    assert await follow_next(server, url, total + 1) == decisions[1:]
    page = (await server.http.get(events_url(exp), params={"channel": "nobody_sends_this"})).json()
    assert page["count"] == 0 and page["results"] == []


@pytest.mark.parametrize("value", ["x" * 65, "a\x00b"], ids=["too long", "nul"])
async def test_a_channel_no_event_can_have_is_400_naming_channel(server: Harness, value: str) -> None:
    exp = await server.create()
    response = await server.http.get(events_url(exp), params={"channel": value})
    assert_refused(response, "channel")


NOT_ASCII_INTEGERS = ["1_0", "+1", " 1", "1 ", "\u0661", "\uff11", "\u00b2", "0x1", "1e1", "-0_1"]


@pytest.mark.parametrize("name", ["page", "page_size", "after_seq"])
@pytest.mark.parametrize("value", NOT_ASCII_INTEGERS, ids=ascii)
async def test_a_query_integer_is_ascii_digits_only(server: Harness, name: str, value: str) -> None:
    """``1_0``, ``+1``, `` 1``, an Arabic-Indic or fullwidth one, ``²``: 400 naming the field
    (``int()`` took most of them: ``page=1_0`` was page 10)."""
    exp = await server.create()
    response = await server.http.get(events_url(exp), params={name: value})
    assert_refused(response, name)


async def test_a_group_history_of_a_digit_that_is_not_ascii_is_404(server: Harness) -> None:
    """``groups/²/history`` is 404, not a 500 (``'²'.isdigit()`` but ``int('²')`` fails)."""
    exp = await server.create()
    for raw in ("\u00b2", "\u0661", "1_0"):
        response = await server.http.get(f"/api/experiments/{exp['code']}/groups/{raw}/history")
        assert response.status_code == 404, (raw, response.text)


@pytest.mark.parametrize("value", ["-1", "x", "1.5"])
async def test_a_bad_after_seq_is_400_naming_after_seq(server: Harness, value: str) -> None:
    """A negative or non-integer after_seq is 400 with field after_seq."""
    exp = await server.create()
    response = await server.http.get(events_url(exp), params={"after_seq": value})
    assert_refused(response, "after_seq")


async def test_events_of_one_experiment_never_show_in_another(server: Harness) -> None:
    """Another experiment's event list stays empty while the first one has events."""
    other = await server.create()
    _, total = await play(server)
    assert total > 0
    page = (await server.http.get(events_url(other))).json()
    assert page["count"] == 0 and page["results"] == []


# --------------------------------------------------------------------------- the generated token


async def test_a_generated_admin_token_is_stored_hashed_and_not_made_again_by_the_next_process(
    sqlite_url: str,
) -> None:
    """Without SYNCLAB_ADMIN_TOKEN a token is generated once (the account ``admin``), kept only as a hash:
    the next process makes none and has no clear copy; with the variable set none is generated."""
    first = await Runtime.open(Settings(database_url=sqlite_url, admin_token=None))
    try:
        token = first.admin_token
    finally:
        await first.close()
    assert token is not None and URL_SAFE.match(token) and len(token) >= 22
    second = await Runtime.open(Settings(database_url=sqlite_url, admin_token=None))
    try:
        assert second.admin_token is None
        assert await second.accounts.identify(token) == Account("admin", "admin")
    finally:
        await second.close()
    engine = make_engine(sqlite_url)
    try:
        assert generated_token(engine, Settings(database_url=sqlite_url, admin_token=None)) is None
        assert [t["name"] for t in list_tokens(engine)] == ["admin"]
    finally:
        engine.dispose()
    other = make_engine(f"{sqlite_url}.env")
    try:
        prepare_schema(other)
        assert generated_token(other, Settings(database_url=sqlite_url, admin_token="from-env")) is None
        assert list_tokens(other) == []
    finally:
        other.dispose()


async def test_two_databases_get_different_generated_tokens(tmp_path: Any) -> None:
    """Each database generates its own token: tokens are random, not derived from anything fixed."""
    tokens = []
    for name in ("a", "b"):
        rt = await Runtime.open(Settings(database_url=f"sqlite:///{tmp_path}/{name}.db", admin_token=None))
        try:
            tokens.append(rt.admin_token)
        finally:
            await rt.close()
    assert tokens[0] != tokens[1]


async def test_a_server_without_a_configured_token_accepts_its_generated_one_across_restarts(
    sqlite_url: str,
) -> None:
    """A server with no token setting guards the API with the generated token, the same after a restart."""
    async with running_server(sqlite_url, admin_token=None) as first:
        token = first.runtime.admin_token
        async with httpx.AsyncClient(base_url=first.base, timeout=timeout(5)) as http:
            good = {"Authorization": f"Bearer {token}"}
            created = await http.post("/api/experiments", json=VALID, headers=good)
            assert created.status_code == 201, created.text
            code = created.json()["code"]
            bad = await http.post("/api/experiments", json=VALID, headers={"Authorization": f"Bearer {TOKEN}"})
            assert bad.status_code == 403
    async with running_server(sqlite_url, admin_token=None) as second:
        assert second.runtime.admin_token is None  # only its hash is stored
        async with httpx.AsyncClient(base_url=second.base, timeout=timeout(5)) as http:
            response = await http.get(f"/api/experiments/{code}", headers={"Authorization": f"Bearer {token}"})
            assert response.status_code == 200, response.text


# --------------------------------------------------------------------------- a refused write


def rename(database_url: str, table: str, to: str) -> None:
    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"ALTER TABLE {table} RENAME TO {to}")
    finally:
        engine.dispose()


async def test_an_experiment_created_while_a_batch_fails_is_refused_behind_it_or_made_beside_it(
    direct_server: Harness, database_url: str
) -> None:
    """On SQLite without the journal (one writer), POST /api/experiments queued behind a batch that
    fails is a 503 ``{"error": ...}`` and the next POST works; on PostgreSQL the experiment is a
    transaction of its own, beside the batches (``Database.write_aside``): made while the batch
    waits, and kept when the batch fails."""
    first = await direct_server.create()
    row = await direct_server.runtime.database.read(experiment_row, first["code"])
    assert row is not None
    failures: list[NotPersisted] = []
    broken = Write(row["id"], [NewEvent("decisions", 1, time.time(), group_id=999_999)])  # no such group
    body = {"game": "bimatrix", "participants": 2, "group_size": 2}
    if not direct_server.runtime.database.sqlite:
        with holding_writes(database_url):  # the broken batch waits in the database meanwhile
            direct_server.runtime.writer.submit(broken, lambda _: pytest.fail("a broken write was stored"), failures.append)
            made = await asyncio.wait_for(direct_server.http.post("/api/experiments", json=body), timeout(10))
            assert made.status_code == 201, made.text
            assert not failures  # answered before the batch's end
        await eventually(lambda: len(failures) == 1)
        listed = (await direct_server.http.get("/api/experiments")).json()
        assert sorted(e["code"] for e in listed["results"]) == sorted([first["code"], made.json()["code"]])
        return
    # a failure of the database itself (its events table gone), not of the write's data: a write
    # the database refuses for its data is refused alone, and what is queued behind it runs
    # (tests/server/test_refused_apart.py)
    rename(database_url, "events", "events_away")
    try:
        with holding_writes(database_url):  # the broken batch waits in the database while the POST queues its insert
            direct_server.runtime.writer.submit(broken, lambda _: pytest.fail("a broken write was stored"), failures.append)
            refused = asyncio.ensure_future(direct_server.http.post("/api/experiments", json=body))
            await until_queued(direct_server.runtime.database, 1)
        response = await asyncio.wait_for(refused, timeout(10))
    finally:
        rename(database_url, "events_away", "events")
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"error": "not run: it was queued behind a batch that could not be stored"}
    assert len(failures) == 1
    listed = (await direct_server.http.get("/api/experiments")).json()
    assert [e["code"] for e in listed["results"]] == [first["code"]], "nothing of the refused POST was stored"
    assert (await direct_server.http.post("/api/experiments", json=body)).status_code == 201
