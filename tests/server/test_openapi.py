"""The OpenAPI document at /api/openapi.json (issue 4): valid OpenAPI, one operation per HTTP
route and nothing else, and schemathesis against a real server finds no server error and no
answer the document does not allow.

The server runs on a thread of its own (uvicorn on 127.0.0.1, SQLite in a temporary directory)
because schemathesis calls it synchronously. It holds two experiments made first: one played to
``done`` (events, results, finished sessions) and one running (a group playing, a group waiting),
and the hooks below point generated cases at them, so the deeper code runs and not only the 404s.
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
import orjson
import pytest
import schemathesis
from hypothesis import settings
from hypothesis import strategies as st
from schemathesis.core.parameters import ParameterLocation
from starlette.routing import Route, WebSocketRoute

from server.app import create_app
from server.experiments import MAX_BLOCKS, MAX_PARTICIPANTS
from server.openapi import PATH, document
from server.settings import Settings
from tests.server.harness import TOKEN, Harness, running_server, timeout
from tests.server.test_cli import HEALTHY_SECONDS

#: participants times blocks of a generated experiment, past which the test lowers ``blocks``:
#: the create request inserts a session per participant and block, and the server allows
#: 10 000 participants and 1 000 blocks together (10 million rows in one request)
MAX_SESSIONS = 5000
PARTICIPANT_OPERATIONS = ("listParticipants", "getParticipant")
OPERATION_IDS = [op["operationId"] for item in document()["paths"].values() for op in item.values()]
#: how long one generated case may take: a request, or a create of 10 000 participants
DEADLINE = timedelta(seconds=timeout(10))
#: the same cases every run, so the suite is stable; SYNCLAB_FUZZ=random explores new ones
DERANDOMIZE = os.environ.get("SYNCLAB_FUZZ", "") != "random"


@dataclass
class Seeded:
    """The real server and the experiments made before the generated cases run."""

    base: str
    #: experiment code -> its participants' codes, in order
    participants: dict[str, list[str]] = field(default_factory=dict)
    #: experiment code -> the ids of its groups, every block
    groups: dict[str, list[int]] = field(default_factory=dict)


async def _seed(harness: Harness, seeded: Seeded) -> None:
    done = await harness.create(period_length=0.4, num_subperiods=2)
    running = await harness.create(participants=4, period_length=600, blocks=2)
    for exp in (done, running):
        seeded.participants[exp["code"]] = [p["code"] for p in exp["participants"]]
    pair = [await harness.connect(code) for code in seeded.participants[done["code"]]]
    for client in pair:
        assert (await client.expect("state"))["payload"] == "period_start"
    await pair[0].send("decisions", 1.0)
    for client in pair:
        assert (await client.expect("state"))["payload"] == "period_end"
    # the running experiment's first group plays (for 600 s); its second one waits for its members
    playing = [await harness.connect(code) for code in seeded.participants[running["code"]][:2]]
    for client in playing:
        assert (await client.expect("state"))["payload"] == "period_start"
    for code in seeded.participants:
        response = await harness.http.get(f"/api/experiments/{code}/sessions", params={"page_size": 1000})
        assert response.status_code == 200, response.text
        seeded.groups[code] = sorted({row["group"] for row in response.json()["results"]})
    # close the sockets (the group plays on without them): their keepalive pings draw on the
    # global random module on this thread, which Hypothesis, drawing on the other, takes for its own
    for client in harness.clients:
        await client.close()


def _serve(url: str, ready: queue.Queue[Seeded | BaseException], stop: threading.Event) -> None:
    """The server thread: serve, seed, report ready, and keep serving until ``stop``."""

    async def main() -> None:
        try:
            async with running_server(url) as harness:
                seeded = Seeded(harness.base)
                await _seed(harness, seeded)
                ready.put(seeded)
                await asyncio.to_thread(stop.wait)
        except BaseException as exc:
            ready.put(exc)

    asyncio.run(main())


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    url = f"sqlite:///{tmp_path_factory.mktemp('openapi')}/synclab.db"
    ready: queue.Queue[Seeded | BaseException] = queue.Queue()
    stop = threading.Event()
    thread = threading.Thread(target=_serve, args=(url, ready, stop), name="openapi-server", daemon=True)
    thread.start()
    try:
        # past running_server's own bound (60 s), which names what it waited for
        got = ready.get(timeout=timeout(HEALTHY_SECONDS))
        if isinstance(got, BaseException):
            raise got
        SEEDED[:] = [got]
        yield got
    finally:
        SEEDED.clear()
        stop.set()
        thread.join(timeout(10))
        assert not thread.is_alive(), "the server thread did not stop"


#: the module's server, for the hooks (schemathesis generates inside the test, after the fixture)
SEEDED: list[Seeded] = []


# --------------------------------------------------------------------------- the document


def _http_routes() -> dict[str, set[str]]:
    """Every HTTP route of the app under /api and /healthz, with its methods (HEAD, which
    Starlette adds to every GET, left out: OpenAPI lists it only when it differs)."""
    app = create_app(Settings(database_url="sqlite://", admin_token=TOKEN))
    routes: dict[str, set[str]] = {}
    for route in app.routes:
        if isinstance(route, Route) and (route.path.startswith("/api/") or route.path == "/healthz"):
            routes.setdefault(route.path, set()).update((route.methods or set()) - {"HEAD"})
    return routes


def test_every_http_route_is_an_operation_with_its_methods_and_nothing_else() -> None:
    doc = document()
    documented = {path: {method.upper() for method in item} for path, item in doc["paths"].items()}
    routes = _http_routes()
    assert documented == routes
    # the WebSockets are described, not made operations
    app = create_app(Settings(database_url="sqlite://", admin_token=TOKEN))
    sockets = {route.path for route in app.routes if isinstance(route, WebSocketRoute)}
    assert {socket["path"] for socket in doc["x-websockets"]} == sockets
    assert not sockets & set(doc["paths"])


def test_every_operation_has_an_id_and_every_refusal_the_error_shape() -> None:
    doc = document()
    ids = [op["operationId"] for item in doc["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids)) == 19  # 16, listDeliveries, getGroupHistory and getCaller
    error = {"$ref": "#/components/schemas/Error"}
    for name, response in doc["components"]["responses"].items():
        assert response["content"]["application/json"]["schema"] == error, name
    for path, item in doc["paths"].items():
        for method, op in item.items():
            for status in op["responses"]:
                assert status in {"200", "201", "400", "401", "403", "404", "413", "503"} or (
                    (status, op["operationId"]) == ("500", "controlExperiment")), (method, path, status)
            authed = op.get("security", doc["security"]) != []
            assert ("401" in op["responses"]) == authed, (method, path)


async def test_the_server_serves_the_document_without_a_token_and_schemathesis_loads_it(server: Harness) -> None:
    async with httpx.AsyncClient(base_url=server.base) as anonymous:
        response = await anonymous.get(PATH)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json() == orjson.loads(orjson.dumps(document()))
    loaded = await asyncio.to_thread(schemathesis.openapi.from_url, server.base + PATH)
    loaded.validate()  # the OpenAPI 3.1 meta-schema
    assert loaded.specification.version == "3.1.0"
    # schemathesis leaves out the operation that serves the document it tests
    labels = {result.ok().label for result in loaded.get_all_operations()}
    assert labels == {f"{m.upper()} {p}" for p, item in document()["paths"].items() for m in item} - {f"GET {PATH}"}


def test_the_create_body_holds_the_bounds_the_server_checks() -> None:
    body = document()["components"]["schemas"]["NewExperiment"]
    games = {branch["properties"]["game"].get("const") for branch in body["anyOf"]}
    assert games == {"bimatrix", "public_goods", None}  # None: the import-path branch
    for branch in body["anyOf"]:
        props = branch["properties"]
        assert branch["additionalProperties"] is False
        assert set(branch["required"]) == {"game", "participants", "group_size"}
        assert props["participants"]["maximum"] == MAX_PARTICIPANTS
        assert {k: v for k, v in props["blocks"].items() if k != "description"} == {
            "type": "integer", "minimum": 1, "maximum": MAX_BLOCKS, "default": 1}
    bimatrix = next(b for b in body["anyOf"] if b["properties"]["game"].get("const") == "bimatrix")
    assert bimatrix["properties"]["group_size"] == {"type": "integer", "minimum": 2, "maximum": 2}
    assert bimatrix["properties"]["participants"]["multipleOf"] == 2


# --------------------------------------------------------------------------- server faults found



async def test_a_repeated_group_never_widens_an_action_to_the_whole_experiment(server: Harness) -> None:
    exp = await server.create(participants=4)
    response = await server.http.post(f"/api/experiments/{exp['code']}/end", params=[("group", "999"), ("group", "")])
    after = (await server.http.get(f"/api/experiments/{exp['code']}")).json()
    assert (response.status_code, after["status"]) in {(400, "pending"), (404, "pending")}, response.text



async def test_a_wrong_method_is_answered_with_the_methods_of_the_path(server: Harness) -> None:
    exp = await server.create()
    listing = await server.http.request("OPTIONS", "/api/experiments")
    export = await server.http.request("PUT", f"/api/experiments/{exp['code']}/export.csv")
    assert (listing.status_code, export.status_code) == (405, 405)
    assert set(listing.headers["allow"].split(", ")) == {"GET", "HEAD", "POST"}
    assert set(export.headers["allow"].split(", ")) == {"GET", "HEAD"}
    assert "PUT is not allowed here" in export.json()["error"]  # JSON, as the API's other errors


async def test_an_unknown_address_in_the_api_is_a_json_404(server: Harness) -> None:
    """``GET …/export.xml`` matched only the actions' route (POST) and was a plain-text 405, and an
    unknown ``/api/`` path a plain-text 404; both are JSON errors as the API's others, the unknown
    export a 404 naming the exports there are. A control action's GET stays a 405 (Allow: POST),
    and an address outside the API keeps its plain 404."""
    exp = await server.create()
    for path in (f"/api/experiments/{exp['code']}/export.xml", "/api/experiments/nope/export.xml"):
        unknown = await server.http.get(path)
        assert unknown.status_code == 404, unknown.text
        assert unknown.headers["content-type"].startswith("application/json")
        assert "export.csv and export.json" in unknown.json()["error"]
    for table in ("connections", "ticks.csv"):  # a table without an address of its own: where it is
        unknown = await server.http.get(f"/api/experiments/{exp['code']}/{table}")
        assert unknown.status_code == 404, unknown.text
        assert f"no address '{table}' under an experiment" in unknown.json()["error"]
        assert "?table= one of events, results, sessions, participants, connections, ticks" in unknown.json()["error"]
    nowhere = await server.http.get("/api/nowhere")
    assert nowhere.status_code == 404 and "no such address in the API" in nowhere.json()["error"]
    start = await server.http.get(f"/api/experiments/{exp['code']}/start")
    assert start.status_code == 405 and start.headers["allow"] == "POST"
    assert "GET is not allowed here; allowed: POST" in start.json()["error"]
    outside = await server.http.get("/nowhere")
    assert (outside.status_code, outside.text) == (404, "Not Found")


# --------------------------------------------------------------------------- schemathesis


def _query_names(case: Any) -> set[str]:
    """The query parameters ``case``'s operation takes (the participant credential included)."""
    doc = document()
    operation = doc["paths"][case.path][case.method.lower()]
    names = {doc["components"]["parameters"][p["$ref"].rsplit("/", 1)[1]]["name"] for p in operation["parameters"]}
    if operation.get("security") and {"participantCode": []} in operation["security"]:
        names.add("participant")
    return names


def _aim(case: Any, generated: tuple[dict[str, Any], dict[str, Any]], path: dict[str, Any],
         query: dict[str, Any]) -> Any:
    """``case`` with ``path`` and ``query`` values laid over the ``generated`` ones.

    Assigning (not editing in place) marks the containers changed, so schemathesis labels the
    case again: a substituted value is judged as what it is.
    """
    case.path_parameters = {**generated[0], **path}
    case.query = {**generated[1], **query}
    return case


def flatmap_case(context: Any, case: Any) -> Any:
    """Point a case, sometimes, at a seeded experiment, its participants and its groups.

    A component generated to be invalid (negative mode) is left as it is.
    """
    if not SEEDED or case.meta is None or "{code}" not in case.path:
        return st.just(case)
    seeded = SEEDED[0]
    names = _query_names(case)
    aims: list[tuple[dict[str, Any], dict[str, Any]]] = []
    keep_path = case.meta.is_negative_at(ParameterLocation.PATH)
    keep_query = case.meta.is_negative_at(ParameterLocation.QUERY)
    for code, people in seeded.participants.items():
        paths = [{}] if keep_path else [{"code": code}]
        if "{participant}" in case.path and not keep_path:
            paths += [{"code": code, "participant": p} for p in people]
        queries: list[dict[str, Any]] = [{}]
        if not keep_query:
            if "participant" in names:
                queries += [{"participant": p} for p in people[:2]]
            if "group" in names:
                queries += [{"group": g} for g in seeded.groups[code]]
            if "page" in names:  # a page that exists: past the last one is a 404
                queries.append({"page": 1})
        aims += [(p, q) for p in paths for q in queries if p or q]
    # the generated values last: Hypothesis favours (and shrinks towards) the first choices
    aims.append(({}, {}))
    generated = (dict(case.path_parameters or {}), dict(case.query or {}))
    return st.sampled_from(aims).map(lambda aim: _aim(case, generated, *aim))


def _bounded(case: Any) -> None:
    """Lower ``blocks`` of a large valid create body, so one case stays well under a second."""
    body = case.body
    if case.path != "/api/experiments" or case.method != "POST" or not isinstance(body, dict):
        return
    people, blocks = body.get("participants"), body.get("blocks", 1)
    valid = all(isinstance(v, int) and not isinstance(v, bool) for v in (people, blocks))
    if valid and 1 <= people <= MAX_PARTICIPANTS and 1 <= blocks <= MAX_BLOCKS and people * blocks > MAX_SESSIONS:
        body["blocks"] = max(1, MAX_SESSIONS // people)


def _config(auth: dict[str, Any] | None, *, as_participant: bool = False) -> Any:
    return schemathesis.Config.from_dict(
        {
            "generation": {"mode": "all", "max-examples": 50, "allow-extra-parameters": False},
            "request-timeout": timeout(10),
            "checks": {
                # as a participant, ?participant= is the credential, and the hook puts real codes
                # there: schemathesis takes any credential it did not configure for an invalid one
                "ignored_auth": {"enabled": not as_participant},
            },
            **({"auth": auth} if auth else {}),
            "operations": [
                # a valid body may name a module that does not exist, or participants that are
                # no multiple of group_size: JSON Schema cannot say either, the server says 400
                {"include-operation-id": "createExperiment", "checks": {"positive_data_acceptance": {"enabled": False}}},
            ],
        }
    )


experimenter_api = schemathesis.openapi.from_dict(document(), config=_config({"openapi": {"bearer": {"bearer": TOKEN}}}))
experimenter_api.hook(flatmap_case)
# (exclude, not include: parametrize adds an include of its own, and includes are alternatives)
participant_api = schemathesis.openapi.from_dict(document(), config=_config(None, as_participant=True)).exclude(
    operation_id=[op for op in OPERATION_IDS if op not in PARTICIPANT_OPERATIONS]
)
participant_api.hook(flatmap_case)


@experimenter_api.parametrize()
@settings(deadline=DEADLINE, database=None, derandomize=DERANDOMIZE)
def test_schemathesis_as_the_experimenter(case: Any, seeded: Seeded) -> None:
    """Every operation with the experimenter's token: every check of schemathesis but the
    two named in :func:`_config`."""
    _bounded(case)
    case.call_and_validate(base_url=seeded.base)


@participant_api.parametrize()
@settings(deadline=DEADLINE, database=None, derandomize=DERANDOMIZE)
def test_schemathesis_as_a_participant(case: Any, seeded: Seeded) -> None:
    """The two participant operations without the token: ``?participant=`` is the credential."""
    case.call_and_validate(base_url=seeded.base)
