"""The operations of the OpenAPI document (:mod:`server.openapi`): its paths, and the parameters and
refusals they share (``components.parameters`` and ``components.responses``).

Each operation names the role it needs (``x-role``) and the refusals it may answer with; the
parameters' bounds are the constants the endpoints check (page sizes, statuses, actions, tables).
"""

from __future__ import annotations

from typing import Any

from .control import ACTIONS
from .experimentapi import STATUSES
from .export import TABLES
from .queries import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, MAX_QUERY_INT
from .schemas import STRING, JSONSchema, ref

PATH = "/api/openapi.json"
#: what ``new_code`` makes (URL-safe base64) within the 64 characters its columns hold
CODE_PATTERN = "^[A-Za-z0-9_-]{1,64}$"


# --------------------------------------------------------------------------- parameters and responses


def _query(name: str, schema: JSONSchema, description: str, *, required: bool = False) -> JSONSchema:
    """A query parameter; an optional one sent empty (``?page=``) is the same as one not sent."""
    parameter = {"name": name, "in": "query", "required": required, "schema": schema, "description": description}
    if not required:
        parameter["allowEmptyValue"] = True
    return parameter


def parameters() -> dict[str, JSONSchema]:
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
            "means and percentile ranks over the participants who finished only (every block played "
            "themselves: none whose seat a bot held when its period ended)",
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
    response: JSONSchema = {"description": description, "content": {"application/json": {"schema": ref("Error")}}}
    if headers:
        response["headers"] = headers
    return response


def responses() -> dict[str, JSONSchema]:
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
    pages = {name: _json(ref(f"{name}Page"), "one page of rows") for name in listing}
    base = "/api/experiments/{code}"
    return {
        "/api/experiments": {
            **_get("listExperiments", "every experiment, the newest first", pages["ExperimentSummary"],
                   [*_params("status"), *page], (400, 401, 403, 404)),
            "post": {
                "operationId": "createExperiment",
                "summary": "create an experiment with its participants, blocks and groups",
                "requestBody": {"required": True,
                                "content": {"application/json": {"schema": ref("NewExperiment")}}},
                "responses": {"201": _json(ref("Experiment"), "created"), **_refused(400, 401, 403, 413, 503)},
                **ADMIN,
            },
        },
        base: _get("getExperiment", "one experiment with its participants' links",
                   _json(ref("Experiment"), "the experiment"), _params("code"), (401, 403, 404)),
        f"{base}/participants": _get(
            "listParticipants", "progress per participant; a participant's own code shows only itself",
            pages["Progress"],
            _params("code", "participantFilter", "group", "exclude_unfinished", "page", "page_size"),
            (400, 401, 403, 404), security=PARTICIPANT_OR_TOKEN,
        ),
        f"{base}/participants/{{participant}}": _get(
            "getParticipant", "one participant's progress with its sessions and their results",
            _json(ref("ProgressDetail"), "the participant"), _params("code", "participantPath", "exclude_unfinished"),
            (400, 401, 403, 404), security=PARTICIPANT_OR_TOKEN,
        ),
        f"{base}/stats": _get("getStats", "mean completion and score with counts", _json(ref("Stats"), "the stats"),
                              _params("code", "exclude_unfinished", "group"), (400, 401, 403, 404)),
        f"{base}/events": _get("listEvents", "stored events in seq order", pages["Event"],
                               [*_params("code", "after_seq"), *page], (400, 401, 403, 404)),
        f"{base}/groups/{{group}}/history": _get(
            "getGroupHistory", "the group's current (or last) period as its charts draw it: the group's "
            "decisions after each stored change since its period_start (the latest 5,000)",
            _json(ref("GroupHistory"), "the period"), _params("code", "groupPath", "upto_seq"), (400, 401, 403, 404)),
        f"{base}/sessions": _get("listSessions", "sessions in block, then participant order", pages["Session"],
                                 [*_params("code"), *page], (400, 401, 403, 404)),
        f"{base}/results": _get("listResults", "results in the order they were scored", pages["Result"],
                                [*_params("code"), *page], (400, 401, 403, 404)),
        f"{base}/deliveries": _get("listDeliveries", "the scores posted to oTree: pending, failing (retried), "
                                   "delivered or refused (never posted: a score that is no finite "
                                   "number), with attempts and the last error (a refusal's reason)", pages["Delivery"],
                                   [*_params("code"), *page], (400, 401, 403, 404)),
        f"{base}/export.csv": _get(
            "exportCsv", "one table as CSV (RFC 4180; JSON columns as JSON text)",
            {"description": "the table", "headers": _ATTACHMENT, "content": {"text/csv": {"schema": STRING}}},
            _params("code", "tableRequired"), (400, 401, 403, 404), **ADMIN,
        ),
        f"{base}/export.json": _get(
            "exportJson", "the whole experiment as one JSON document, or one table as an array",
            {"description": "the document or the rows", "headers": _ATTACHMENT,
             "content": {"application/json": {"schema": {"anyOf": [
                 ref("ExportDocument"),
                 *({"type": "array", "items": ref(item)} for item in ("Event", "Result", "Session", "Progress",
                                                                        "Connection", "Tick")),
             ]}}}},
            _params("code", "tableOptional"), (400, 401, 403, 404), **ADMIN,
        ),
        f"{base}/{{action}}": {
            "post": {
                "operationId": "controlExperiment",
                "summary": "start (force waiting groups), pause, resume or end the experiment or one group",
                "parameters": _params("code", "action", "group"),
                "responses": {"200": _json(ref("ActionResult"), "the groups acted on"),
                              **_refused(400, 401, 403, 404, 503),
                              "500": _json(ref("ActionFailed"), "the game failed on the action in some groups, "
                                           "each left as it was; the others acted on")},
                **ADMIN,
            }
        },
    }


def paths() -> dict[str, Any]:
    return {
        "/healthz": {"get": {
            "operationId": "healthz", "summary": "the server is up and can store (a cluster's worker: and reaches Redis)",
            "parameters": [], "security": PUBLIC,
            "responses": {"200": _json(ref("Health"), "ok"),
                          "503": _json(ref("Unhealthy"), "storage halted, or a cluster's worker that cannot reach Redis; and why")},
        }},
        PATH: _get("openapi", "this document", _json({"type": "object"}, "the OpenAPI document"), [], (),
                   security=PUBLIC),
        "/api/games": _get("listGames", "the registered games with their config schemas and defaults",
                           _json(ref("Games"), "the games"), [], (), security=PUBLIC),
        "/api/me": _get("getCaller", "the caller's token: its name and role (what the monitor may offer it)",
                        _json(ref("Caller"), "the token's account"), [], (401, 403)),
        "/api/server": _get("getServer", "this process since it started: the writer's batches, writes and events "
                            "committed, the live groups and participant sockets; in a cluster every worker",
                            _json(ref("ServerStatus"), "the counters"), [], (401, 403, 503)),
        **_experiment_paths(),
    }
