"""The OpenAPI 3.1 document of the REST API, served at ``GET /api/openapi.json``.

The document is Python data built from the same constants the endpoints check (page bounds,
statuses, actions, export tables, the create body's limits and the registered games), so a
bound changed in :mod:`server.queries` or :mod:`server.experiments` changes the document with it.
Its parts are built apart: the answers' schemas in :mod:`server.schemas`, the create body's in
:mod:`server.createschema`, the paths with their parameters and refusals in
:mod:`server.operations`. Response schemas are closed (``additionalProperties: false``): a field
added to an answer must be added there too, and ``tests/server/test_openapi.py`` runs schemathesis
against a real server to hold the two together. It is built once, at the first request, and
served as the same bytes.

WebSocket routes are not HTTP operations; they are listed under ``x-websockets`` and in the
``info.description``.
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .createschema import new_experiment_schema
from .operations import PATH, parameters, paths, responses
from .schemas import schemas

OPENAPI_VERSION = "3.1.0"

_DESCRIPTION = """\
synclab's REST API (contract section 4). Experimenter endpoints need
`Authorization: Bearer <an experimenter token>`: 401 without it, 403 with a wrong or revoked
one. Tokens are accounts with a role (`synclab token create NAME --role admin|watch`;
`SYNCLAB_ADMIN_TOKEN` is `admin`): each operation's `x-role` is the role it needs. `watch` reads
everything; creating, controlling and exporting experiments need `admin` (403 naming the token
and its role); `GET /api/me` tells a token its name and role. A participant's own code, as
`?participant=`, reads that participant's progress. Every refusal is JSON
`{"error": message, "field"?: the bad field}`. Times in rows are ISO 8601 UTC strings with
microseconds.

WebSockets (not HTTP operations, see `x-websockets`): `/ws/p/{code}` is a participant's socket,
`/redwood/app-name/{app}/group/{group}/participant/{code}/` the otree-redwood compatible one,
`/ws/monitor/{code}` the experimenter's live monitor, which takes no secret in its URL: its
first frame is `{"channel": "auth", "payload": {"token": ...}}` (any role), else it is closed
with 4401 (4403: a wrong or revoked token). Frames are JSON text `{"channel", "payload"}`
(contract section 3)."""

_WEBSOCKETS = [
    {"path": "/ws/p/{code}", "summary": "a participant's socket: hello, state, group_decisions, ack, error, ping",
     "x-auth": "the participant's own code, in the path"},
    {
        "path": "/redwood/app-name/{app}/group/{group}/participant/{code}/",
        "summary": "otree-redwood's wire protocol; app and group are checked against the participant's own",
        "x-auth": "the participant's own code, in the path",
    },
    {"path": "/ws/monitor/{code}", "summary": "the live monitor; the first frame is "
     '{"channel": "auth", "payload": {"token": ...}}: 4401 without it (or with ?token= in the URL), 4403 for a '
     "wrong or revoked token", "x-auth": "an experimenter token of any role, in the first frame", "x-role": "watch"},
]


@cache
def document() -> dict[str, Any]:
    """The whole OpenAPI document (built once; the registered games are read then)."""
    try:
        release = version("synclab")
    except PackageNotFoundError:  # run from a source tree that is not installed
        release = "0"
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": "synclab", "version": release, "description": _DESCRIPTION},
        "security": [{"bearer": []}],
        "paths": paths(),
        "components": {
            "schemas": {**schemas(), "NewExperiment": new_experiment_schema()},
            "parameters": parameters(),
            "responses": responses(),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "an experimenter token (`synclab token create`, or SYNCLAB_ADMIN_TOKEN); "
                                          "its role must be the operation's `x-role` or admin"},
                "participantCode": {"type": "apiKey", "in": "query", "name": "participant",
                                    "description": "a participant's own code: reads only that participant"},
            },
        },
        "x-websockets": _WEBSOCKETS,
    }


@cache
def _encoded() -> bytes:
    return orjson.dumps(document())


async def openapi_json(request: Request) -> Response:
    """The document; public, like ``/api/games``."""
    return Response(_encoded(), media_type="application/json")


routes = [Route(PATH, openapi_json)]
