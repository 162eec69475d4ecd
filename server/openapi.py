"""The OpenAPI 3.1 document of the REST API, served at ``GET /api/openapi.json``.

The document is Python data built from the same constants the endpoints check (page bounds,
statuses, actions, export tables, the create body's limits and the registered games), so a
bound changed in :mod:`server.api` or :mod:`server.experiments` changes the document with it.
Response schemas are closed (``additionalProperties: false``): a field added to an answer must
be added here too, and ``tests/server/test_openapi.py`` runs schemathesis against a real server
to hold the two together. It is built once, at the first request, and served as the same bytes.

WebSocket routes are not HTTP operations; they are listed under ``x-websockets`` and in the
``info.description``.
"""

from __future__ import annotations

import copy
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from groups import MATCHINGS, MAX_AMOUNT, DecisionGroup, available_games

from .api import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, MAX_QUERY_INT, STATUSES
from .control import ACTIONS
from .experiments import (
    MAX_BLOCK_PAUSE,
    MAX_BLOCKS,
    MAX_PARTICIPANTS,
    MAX_PERIOD_LENGTH,
    MAX_SESSIONS,
    MAX_SUBPERIODS,
)
from .export import TABLES
from .online import FILLS, MAX_WAIT
from .settings import DURABILITIES
from .storage import COMMIT_BUCKET_NAMES, ROLES
from .storage import STATUSES as PARTICIPANT_STATUSES

OPENAPI_VERSION = "3.1.0"
PATH = "/api/openapi.json"
#: what ``new_code`` makes (URL-safe base64) within the 64 characters its columns hold
CODE_PATTERN = "^[A-Za-z0-9_-]{1,64}$"
#: ``"module.path:Class"``, a game named by import path
IMPORT_PATH_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"

JSONSchema = dict[str, Any]

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


# --------------------------------------------------------------------------- small schema helpers


def _ref(name: str) -> JSONSchema:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: JSONSchema) -> JSONSchema:
    """``schema`` or null (OpenAPI 3.1: a type list, or ``anyOf`` for a reference)."""
    if "type" in schema and "$ref" not in schema:
        return {**schema, "type": [schema["type"], "null"]}
    return {"anyOf": [schema, {"type": "null"}]}


def _object(properties: dict[str, JSONSchema], *, optional: tuple[str, ...] = ()) -> JSONSchema:
    """A closed object: every property but ``optional`` is required, no others are allowed."""
    return {
        "type": "object",
        "properties": properties,
        "required": [name for name in properties if name not in optional],
        "additionalProperties": False,
    }


_TIME: JSONSchema = {"type": "string", "format": "date-time"}
_INT: JSONSchema = {"type": "integer"}
_NUMBER: JSONSchema = {"type": "number"}
_STRING: JSONSchema = {"type": "string"}
_SEQ: JSONSchema = {"type": "integer", "minimum": 1}
#: any JSON value: a decision, an event's value
_ANY: JSONSchema = {}


# --------------------------------------------------------------------------- rows


def _row_schemas() -> dict[str, JSONSchema]:
    """The rows the lists and exports give, named as the components they become."""
    completion = _object(
        {"earned": {"type": "integer", "minimum": 0}, "possible": {"type": "integer", "minimum": 0},
         "ratio": {"type": "number", "minimum": 0}}
    )
    progress: dict[str, JSONSchema] = {
        "code": _STRING,
        "label": _STRING,
        "group": _nullable(_INT),
        "connected": {"type": "boolean"},
        "connected_since": _nullable(_TIME),
        "completion": completion,
        "final_score": _NUMBER,
        "rank": {"type": "integer", "minimum": 1},
        "percentile_rank": _nullable({"type": "number", "minimum": 0, "maximum": 100}),
        "join_label": _nullable(_STRING),
        "joined_at": _nullable(_TIME),
        "completion_code": _nullable(_STRING),
        "status": _nullable({"type": "string", "enum": list(PARTICIPANT_STATUSES)}),
    }
    scored = {"subperiod": _nullable(_INT), "decision": _ANY, "score": _NUMBER, "seq": _SEQ}
    session: dict[str, JSONSchema] = {
        "participant": _STRING,
        "block": {"type": "integer", "minimum": 0},
        "group": _INT,
        "started_at": _nullable(_TIME),
        "finished_at": _nullable(_TIME),
        "final_score": _NUMBER,
        "json_data": {"type": "object"},
    }
    return {
        "Event": _object(
            {"seq": _SEQ, "timestamp": _TIME, "group": _nullable(_INT), "participant": _nullable(_STRING),
             "channel": _STRING, "value": _ANY, "bot": {"type": "boolean"}}
        ),
        "Session": _object(session),
        "Result": _object({"participant": _STRING, "block": session["block"], **scored}),
        "ScoredResult": _object(scored),
        "SessionWithResults": _object({**session, "results": {"type": "array", "items": _ref("ScoredResult")}}),
        "Progress": _object(progress),
        "ProgressDetail": _object({**progress, "sessions": {"type": "array", "items": _ref("SessionWithResults")}}),
        # a group's period as its charts draw it (server.storage.charts)
        "GroupHistory": _object({
            "group": _INT, "start_seq": _nullable(_SEQ), "truncated": {"type": "boolean"},
            "points": {"type": "array", "items": _object(
                {"seq": _SEQ, "ts": {"type": "integer"}, "decisions": {"type": "object"}})},
        }),
        # a score on its way back to oTree (server.deliveries); never the REST key
        "Delivery": _object(
            {"participant": _STRING, "label": _nullable(_STRING), "kind": {"type": "string", "enum": ["otree"]},
             "url": _STRING, "status": {"type": "string", "enum": ["pending", "failing", "delivered"]},
             "payload": _nullable({"type": "object"}), "attempts": {"type": "integer", "minimum": 0},
             "last_error": _nullable(_STRING), "created_at": _TIME, "next_at": _nullable(_TIME),
             "delivered_at": _nullable(_TIME)}
        ),
    }


def _experiment_schemas() -> dict[str, JSONSchema]:
    fields: dict[str, JSONSchema] = {
        "code": _STRING,
        "game": _STRING,
        "status": {"type": "string", "enum": list(STATUSES)},
        "config": {"type": "object"},
        "group_size": {"type": "integer", "minimum": 1},
        "num_participants": {"type": "integer", "minimum": 1},
        "blocks": {"type": "integer", "minimum": 1},
        "block_pause": {"type": "number", "minimum": 0},
        "created_at": _TIME,
        "started_at": _nullable(_TIME),
        "finished_at": _nullable(_TIME),
        "last_seq": {"type": "integer", "minimum": 0},
        "online": _nullable(_object({
            "label_param": _STRING, "lobby_timeout": _NUMBER, "fill": {"type": "string", "enum": list(FILLS)},
            "dropout_after": _NUMBER, "completion_url": _nullable(_STRING), "otree_url": _nullable(_STRING),
            "otree_rest_key": _nullable({"const": "set"}),
        })),
    }
    summary = {**fields, "monitor_url": {"type": "string", "format": "uri"},
               "join_url": _nullable({"type": "string", "format": "uri"})}
    link = _object({"code": _STRING, "label": _STRING, "url": {"type": "string", "format": "uri"}})
    block = _object(
        {
            "index": {"type": "integer", "minimum": 0},
            "period_length": _nullable({"type": "number", "exclusiveMinimum": 0}),
            "num_subperiods": _nullable({"type": "integer", "minimum": 1}),
            "rate_limit": _nullable({"type": "number", "exclusiveMinimum": 0}),
            "bonus_points": _NUMBER,
            "matching": {"type": "string", "enum": list(MATCHINGS)},
            "status": _STRING,
        }
    )
    group = _object(
        {"id": _INT, "block": {"type": "integer", "minimum": 0}, "index": {"type": "integer", "minimum": 0},
         "phase": _STRING, "started_at": _nullable(_TIME), "ended_at": _nullable(_TIME),
         "members": {"type": "array", "items": _STRING}}
    )
    return {
        "ExperimentSummary": _object(summary),
        "ParticipantLink": link,
        "Experiment": _object({**summary, "participants": {"type": "array", "items": _ref("ParticipantLink")}}),
        "ExportDocument": _object(
            {
                "experiment": _object(fields),
                "blocks": {"type": "array", "items": block},
                "groups": {"type": "array", "items": group},
                "participants": {"type": "array", "items": _ref("Progress")},
                "sessions": {"type": "array", "items": _ref("SessionWithResults")},
                "events": {"type": "array", "items": _ref("Event")},
            }
        ),
    }


def _other_schemas() -> dict[str, JSONSchema]:
    game = _object(
        {
            "name": _STRING,
            "group_sizes": {"type": "array", "prefixItems": [{"type": "integer", "minimum": 1},
                                                            _nullable({"type": "integer", "minimum": 1})],
                            "minItems": 2, "maxItems": 2},
            "channels": {"type": "array", "items": _STRING},
            "config_schema": {"type": "object"},
            "default_config": {"type": "object"},
            "doc": _STRING,
            "view_missing": {**_nullable(_STRING), "description": "why the game cannot be played: its view file "
                                                                   "is missing (creating an experiment with it is a 400)"},
        }
    )
    nullable_number = _nullable(_NUMBER)
    counter = {"type": "integer", "minimum": 0}
    return {
        "Error": _object(
            {"error": {"type": "string", "minLength": 1}, "field": {"type": "string", "minLength": 1}},
            optional=("field",),
        ),
        "Health": _object({"status": {"const": "ok"}}),
        # the caller's token: an account of the table, or SYNCLAB_ADMIN_TOKEN (its name is that)
        "Caller": _object({"name": {"type": "string", "minLength": 1},
                           "role": {"type": "string", "enum": list(ROLES)}}),
        "Unhealthy": _object({"status": {"const": "unavailable"}, "reason": {"type": "string", "minLength": 1}}),
        "ServerStatus": _object({
            "writer": _object({
                # log_restarts: SQLite's write-ahead log made to start over (Database.log_restarts)
                **{name: counter for name in ("batches", "writes", "events", "fenced", "log_restarts")},
                "commit_ms": _object({name: counter for name in COMMIT_BUCKET_NAMES}),
            }),
            # SYNCLAB_DURABILITY: what an acknowledged decision survives
            "durability": {"type": "string", "enum": list(DURABILITIES)},
            # SYNCLAB_JOURNAL: acknowledged once in the journal, applied to SQLite after
            "journal": {"type": "boolean"},
            "live_groups": counter,
            "connections": counter,
            "worker": _STRING,
            "cluster": _object({
                "name": _STRING,
                "workers": {"type": "array", "items": _object({
                    "worker": _STRING, "host": _STRING, "pid": {"type": "integer", "minimum": 1},
                    "started": _NUMBER, "at": _NUMBER, "groups": counter, "sockets": counter,
                    # how late its event loop runs (ms, the mean of the last 2 s), and whether that
                    # is past SYNCLAB_BUSY_LAG (absent from a worker of a build before them)
                    "lag_ms": {"type": "number", "minimum": 0}, "busy": {"type": "boolean"},
                    "writer": _object({name: counter for name in ("batches", "writes", "events")}),
                    # its connections' rows name it (absent from a worker of a build before that)
                    "names_connections": {"type": "boolean"},
                }, optional=("lag_ms", "busy", "names_connections"))},
                "groups": counter,
                "sockets": counter,
                "events": counter,
            }),
        }, optional=("worker", "cluster")),
        "Game": game,
        "Games": _object({"results": {"type": "array", "items": _ref("Game")}}),
        "Stats": _object(
            {
                "experiment": _STRING,
                "status": {"type": "string", "enum": list(STATUSES)},
                "group": _nullable({"type": "integer", "minimum": 1}),
                "last_seq": {"type": "integer", "minimum": 0},
                "mean_completion": nullable_number,
                "mean_score": nullable_number,
                "count": {"type": "integer", "minimum": 0},
                "participants": {"type": "integer", "minimum": 0},
                "finished": {"type": "integer", "minimum": 0},
                "played_by_bots": {"type": "integer", "minimum": 0},
                "connected": {"type": "integer", "minimum": 0},
                "exclude_unfinished": {"type": "boolean"},
            }
        ),
        "ActionResult": _object(
            {
                "action": {"type": "string", "enum": list(ACTIONS)},
                "groups": {"type": "array", "items": _INT},
                "status": {"type": "string", "enum": list(STATUSES)},
            }
        ),
    }


def _page(item: str) -> JSONSchema:
    """The edx-style page of ``item`` rows."""
    link = _nullable({"type": "string", "format": "uri"})
    return _object(
        {
            "count": {"type": "integer", "minimum": 0},
            "num_pages": {"type": "integer", "minimum": 1},
            "current_page": {"type": "integer", "minimum": 1},
            "next": link,
            "previous": link,
            "results": {"type": "array", "items": _ref(item), "maxItems": MAX_PAGE_SIZE},
        }
    )


PAGES = {f"{item}Page": item for item in ("ExperimentSummary", "Progress", "Event", "Session", "Result", "Delivery")}


# --------------------------------------------------------------------------- the create body


def _timing_properties() -> dict[str, JSONSchema]:
    """The fields every game takes, with the bounds and defaults ``parse_request`` applies."""
    return {
        "blocks": {"type": "integer", "minimum": 1, "maximum": MAX_BLOCKS, "default": 1,
                   "description": f"participants x blocks may be at most {MAX_SESSIONS}"},
        "period_length": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_PERIOD_LENGTH, "default": 60,
                          "description": "seconds from the period's start to its end"},
        "num_subperiods": {"type": ["integer", "null"], "minimum": 1, "maximum": MAX_SUBPERIODS, "default": None,
                           "description": "null: continuous time"},
        "rate_limit": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": MAX_PERIOD_LENGTH, "default": None,
                       "description": "seconds between group_decisions broadcasts; null: none"},
        "block_pause": {"type": "number", "minimum": 0, "maximum": MAX_BLOCK_PAUSE, "default": 5,
                        "description": "seconds between a group's period_end and its next block"},
        "bonus_points": {"type": "number", "minimum": -MAX_AMOUNT, "maximum": MAX_AMOUNT, "default": 0},
        "matching": {"type": "string", "enum": list(MATCHINGS), "default": MATCHINGS[0]},
    }


def _new_experiment(game: JSONSchema, sizes: tuple[int, int | None], config: JSONSchema) -> JSONSchema:
    """The body for one game: ``participants`` a multiple of ``group_size`` (not expressible
    in JSON Schema beyond a fixed group size; the server answers 400 naming ``participants``)."""
    low, high = sizes
    participants: JSONSchema = {"type": "integer", "minimum": max(1, low), "maximum": MAX_PARTICIPANTS}
    if low == high:
        participants["multipleOf"] = low
    return _object(
        {
            "game": game,
            "participants": participants,
            "group_size": {"type": "integer", "minimum": max(1, low),
                           "maximum": MAX_PARTICIPANTS if high is None else high},
            **_timing_properties(),
            "config": _nullable(config) if config else {"type": ["object", "null"]},
            "online": _ONLINE,
        },
        optional=(*_timing_properties(), "config", "online"),
    )


#: ``POST /api/experiments``'s ``online`` (see ``server.online``): the shared join link and the way back
_ONLINE: JSONSchema = {
    "description": "the shared join link /join/{code}, the lobby, the way back; true: the defaults",
    "anyOf": [
        {"type": "null"},
        {"const": True},
        _object(
            {
                "label_param": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"},
                "lobby_timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_WAIT},
                "fill": {"type": "string", "enum": list(FILLS)},
                "dropout_after": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_WAIT},
                "completion_url": {
                    "type": ["string", "null"], "maxLength": 500, "pattern": "^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[^\\s{}]*)?$",
                    "description": "a template of {label}, {code}, {completion_code}, {status}, {score} (URL-encoded)",
                },
            },
            optional=("label_param", "lobby_timeout", "fill", "dropout_after", "completion_url"),
        ),
    ],
}


def _game_config(game: type[DecisionGroup]) -> JSONSchema:
    schema = copy.deepcopy(game.config_schema)
    schema.setdefault("type", "object")
    schema["default"] = copy.deepcopy(game.default_config)
    return schema


def new_experiment_schema() -> JSONSchema:
    """``POST /api/experiments``: one branch per registered game, and one for an import path."""
    branches = [
        _new_experiment({"const": name}, game.group_sizes, _game_config(game))
        for name, game in sorted(available_games().items())
    ]
    by_path = {"type": "string", "pattern": IMPORT_PATH_PATTERN, "description": "a game by import path"}
    branches.append(_new_experiment(by_path, (1, None), {}))
    return {
        "description": "a bad field is a 400 whose `field` names it; `config` is checked by the game",
        "anyOf": branches,
    }


# --------------------------------------------------------------------------- parameters and responses


def _query(name: str, schema: JSONSchema, description: str, *, required: bool = False) -> JSONSchema:
    """A query parameter; an optional one sent empty (``?page=``) is the same as one not sent."""
    parameter = {"name": name, "in": "query", "required": required, "schema": schema, "description": description}
    if not required:
        parameter["allowEmptyValue"] = True
    return parameter


def _parameters() -> dict[str, JSONSchema]:
    positive = {"type": "integer", "minimum": 1, "maximum": MAX_QUERY_INT}
    return {
        "code": {"name": "code", "in": "path", "required": True, "description": "the experiment's code",
                 "schema": {"type": "string", "pattern": CODE_PATTERN}},
        "participantPath": {"name": "participant", "in": "path", "required": True,
                            "description": "a participant's code", "schema": {"type": "string", "pattern": CODE_PATTERN}},
        "action": {"name": "action", "in": "path", "required": True, "description": "what to do",
                   "schema": {"type": "string", "enum": list(ACTIONS)}},
        "page": _query("page", {**positive, "default": 1}, "1-based; past the last page is 404"),
        "page_size": _query("page_size", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE,
                                          "default": DEFAULT_PAGE_SIZE}, "rows per page"),
        "after_seq": _query("after_seq", {"type": "integer", "minimum": 0, "maximum": MAX_QUERY_INT, "default": 0},
                            "only events with a greater seq"),
        "group": _query("group", positive, "a group's id (as in hello and the rows); unknown is 404"),
        "groupPath": {"name": "group", "in": "path", "required": True,
                      "description": "a group's id (as in hello and the rows); unknown is 404",
                      "schema": positive},
        "upto_seq": _query("upto_seq", {"type": "integer", "minimum": 0, "maximum": MAX_QUERY_INT},
                           "only events up to this seq (what the page's snapshot covered); 0 or absent: all"),
        "exclude_unfinished": _query(
            "exclude_unfinished", {"type": "boolean", "default": False},
            "means and percentile ranks over the participants who finished only (no seat a bot played to the end)",
        ),
        "status": _query("status", {"type": "string", "enum": list(STATUSES)}, "only experiments in this status"),
        "participantFilter": _query(
            "participant", {"type": "string", "pattern": CODE_PATTERN},
            "with the token: only this participant (unknown is 404); without it: the participant's own "
            "code, its credential (security scheme participantCode)",
        ),
        "tableRequired": _query("table", {"type": "string", "enum": list(TABLES)}, "the table", required=True),
        "tableOptional": _query("table", {"type": "string", "enum": list(TABLES)},
                                "one table as a JSON array; without it the whole document"),
    }


def _error(description: str, headers: dict[str, Any] | None = None) -> JSONSchema:
    response: JSONSchema = {"description": description, "content": {"application/json": {"schema": _ref("Error")}}}
    if headers:
        response["headers"] = headers
    return response


def _responses() -> dict[str, JSONSchema]:
    return {
        "BadRequest": _error("an invalid value; `field` names it"),
        "Unauthorized": _error(
            "no experimenter token (nor a participant's code where one is accepted)",
            {"WWW-Authenticate": {"required": True, "schema": {"const": "Bearer"}}},
        ),
        "Forbidden": _error(
            "a wrong or revoked token, a `watch` token asking for what needs `admin` (the message names the "
            "token and its role), or another participant's data"
        ),
        "NotFound": _error("an unknown experiment, participant, group, action or page"),
        "PayloadTooLarge": _error(
            "a body larger than `SYNCLAB_MAX_BODY_BYTES` (1 MiB by default): declared so by its Content-Length, "
            "or grown past it while it was read; never read whole, and the connection is closed",
            {"Connection": {"required": True, "schema": {"const": "close"}}},
        ),
        "NotStored": _error(
            "the database could not store the change, or a write queued before it; try again later"
        ),
    }


def _json(schema: JSONSchema, description: str) -> JSONSchema:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _refused(*statuses: int) -> dict[str, JSONSchema]:
    names = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 413: "PayloadTooLarge",
             503: "NotStored"}
    return {str(s): {"$ref": f"#/components/responses/{names[s]}"} for s in statuses}


def _params(*names: str) -> list[JSONSchema]:
    return [{"$ref": f"#/components/parameters/{name}"} for name in names]


# --------------------------------------------------------------------------- operations


PUBLIC: list[dict[str, list[Any]]] = []
PARTICIPANT_OR_TOKEN: list[dict[str, list[Any]]] = [{"bearer": []}, {"participantCode": []}]
_ATTACHMENT = {
    "Content-Disposition": {
        "required": True,
        "schema": {"type": "string", "pattern": r'^attachment; filename="synclab-[A-Za-z0-9_-]+-[a-z]+\.(csv|json)"$'},
    }
}


#: the role an operation needs (``x-role``): reading is ``watch``; creating, controlling, exporting ``admin``
WATCH = {"x-role": "watch"}
ADMIN = {"x-role": "admin"}


def _get(op_id: str, summary: str, ok: JSONSchema, params: list[JSONSchema], refused: tuple[int, ...],
         **extra: Any) -> dict[str, Any]:
    """A GET operation; one behind the bearer token needs ``watch`` unless ``extra`` says otherwise."""
    role = WATCH if extra.get("security") != PUBLIC else {}
    return {"get": {"operationId": op_id, "summary": summary, "parameters": params,
                    "responses": {"200": ok, **_refused(*refused)}, **role, **extra}}


def _experiment_paths() -> dict[str, Any]:
    page = _params("page", "page_size")
    listing = ("ExperimentSummary", "Progress", "Event", "Session", "Result", "Delivery")
    pages = {name: _json(_ref(f"{name}Page"), "one page of rows") for name in listing}
    base = "/api/experiments/{code}"
    return {
        "/api/experiments": {
            **_get("listExperiments", "every experiment, the newest first", pages["ExperimentSummary"],
                   [*_params("status"), *page], (400, 401, 403, 404)),
            "post": {
                "operationId": "createExperiment",
                "summary": "create an experiment with its participants, blocks and groups",
                "requestBody": {"required": True,
                                "content": {"application/json": {"schema": _ref("NewExperiment")}}},
                "responses": {"201": _json(_ref("Experiment"), "created"), **_refused(400, 401, 403, 413, 503)},
                **ADMIN,
            },
        },
        base: _get("getExperiment", "one experiment with its participants' links",
                   _json(_ref("Experiment"), "the experiment"), _params("code"), (401, 403, 404)),
        f"{base}/participants": _get(
            "listParticipants", "progress per participant; a participant's own code shows only itself",
            pages["Progress"],
            _params("code", "participantFilter", "group", "exclude_unfinished", "page", "page_size"),
            (400, 401, 403, 404), security=PARTICIPANT_OR_TOKEN,
        ),
        f"{base}/participants/{{participant}}": _get(
            "getParticipant", "one participant's progress with its sessions and their results",
            _json(_ref("ProgressDetail"), "the participant"), _params("code", "participantPath", "exclude_unfinished"),
            (400, 401, 403, 404), security=PARTICIPANT_OR_TOKEN,
        ),
        f"{base}/stats": _get("getStats", "mean completion and score with counts", _json(_ref("Stats"), "the stats"),
                              _params("code", "exclude_unfinished", "group"), (400, 401, 403, 404)),
        f"{base}/events": _get("listEvents", "stored events in seq order", pages["Event"],
                               [*_params("code", "after_seq"), *page], (400, 401, 403, 404)),
        f"{base}/groups/{{group}}/history": _get(
            "getGroupHistory", "the group's current (or last) period as its charts draw it: the group's "
            "decisions after each stored change since its period_start (the latest 5,000)",
            _json(_ref("GroupHistory"), "the period"), _params("code", "groupPath", "upto_seq"), (400, 401, 403, 404)),
        f"{base}/sessions": _get("listSessions", "sessions in block, then participant order", pages["Session"],
                                 [*_params("code"), *page], (400, 401, 403, 404)),
        f"{base}/results": _get("listResults", "results in the order they were scored", pages["Result"],
                                [*_params("code"), *page], (400, 401, 403, 404)),
        f"{base}/deliveries": _get("listDeliveries", "the scores posted to oTree: pending, failing (retried) or "
                                   "delivered, with attempts and the last error", pages["Delivery"],
                                   [*_params("code"), *page], (400, 401, 403, 404)),
        f"{base}/export.csv": _get(
            "exportCsv", "one table as CSV (RFC 4180; JSON columns as JSON text)",
            {"description": "the table", "headers": _ATTACHMENT, "content": {"text/csv": {"schema": _STRING}}},
            _params("code", "tableRequired"), (400, 401, 403, 404), **ADMIN,
        ),
        f"{base}/export.json": _get(
            "exportJson", "the whole experiment as one JSON document, or one table as an array",
            {"description": "the document or the rows", "headers": _ATTACHMENT,
             "content": {"application/json": {"schema": {"anyOf": [
                 _ref("ExportDocument"),
                 *({"type": "array", "items": _ref(item)} for item in ("Event", "Result", "Session", "Progress")),
             ]}}}},
            _params("code", "tableOptional"), (400, 401, 403, 404), **ADMIN,
        ),
        f"{base}/{{action}}": {
            "post": {
                "operationId": "controlExperiment",
                "summary": "start (force waiting groups), pause, resume or end the experiment or one group",
                "parameters": _params("code", "action", "group"),
                "responses": {"200": _json(_ref("ActionResult"), "the groups acted on"),
                              **_refused(400, 401, 403, 404, 503)},
                **ADMIN,
            }
        },
    }


def _paths() -> dict[str, Any]:
    return {
        "/healthz": {"get": {
            "operationId": "healthz", "summary": "the server is up and can store (a cluster's worker: and reaches Redis)",
            "parameters": [], "security": PUBLIC,
            "responses": {"200": _json(_ref("Health"), "ok"),
                          "503": _json(_ref("Unhealthy"), "storage halted, or a cluster's worker that cannot reach Redis; and why")},
        }},
        PATH: _get("openapi", "this document", _json({"type": "object"}, "the OpenAPI document"), [], (),
                   security=PUBLIC),
        "/api/games": _get("listGames", "the registered games with their config schemas and defaults",
                           _json(_ref("Games"), "the games"), [], (), security=PUBLIC),
        "/api/me": _get("getCaller", "the caller's token: its name and role (what the monitor may offer it)",
                        _json(_ref("Caller"), "the token's account"), [], (401, 403)),
        "/api/server": _get("getServer", "this process since it started: the writer's batches, writes and events "
                            "committed, the live groups and participant sockets; in a cluster every worker",
                            _json(_ref("ServerStatus"), "the counters"), [], (401, 403, 503)),
        **_experiment_paths(),
    }


@cache
def document() -> dict[str, Any]:
    """The whole OpenAPI document (built once; the registered games are read then)."""
    try:
        release = version("synclab")
    except PackageNotFoundError:  # run from a source tree that is not installed
        release = "0"
    schemas = {**_row_schemas(), **_experiment_schemas(), **_other_schemas(),
               **{name: _page(item) for name, item in PAGES.items()},
               "NewExperiment": new_experiment_schema()}
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": "synclab", "version": release, "description": _DESCRIPTION},
        "security": [{"bearer": []}],
        "paths": _paths(),
        "components": {
            "schemas": schemas,
            "parameters": _parameters(),
            "responses": _responses(),
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
