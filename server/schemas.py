"""The schemas of the OpenAPI document's components (:mod:`server.openapi`): the rows the lists and
exports give, the experiments, the other answers and the edx-style pages, with the small vocabulary
they are written in (:func:`ref`, :func:`nullable`, :func:`closed_object`, :data:`TIME`...).

They are built from the same constants the endpoints check (statuses, actions, the page bounds),
so a bound changed there changes the document with it. They are closed
(``additionalProperties: false``): a field added to an answer must be added here too.
"""

from __future__ import annotations

from typing import Any

from groups import MATCHINGS

from .control import ACTIONS
from .experimentapi import STATUSES
from .online import FILLS
from .queries import MAX_PAGE_SIZE
from .settings import DURABILITIES
from .storage import COMMIT_BUCKET_NAMES, ROLES
from .storage import STATUSES as PARTICIPANT_STATUSES

JSONSchema = dict[str, Any]


# --------------------------------------------------------------------------- small schema helpers


def ref(name: str) -> JSONSchema:
    """A reference to the component schema ``name``."""
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: JSONSchema) -> JSONSchema:
    """``schema`` or null (OpenAPI 3.1: a type list, or ``anyOf`` for a reference)."""
    if "type" in schema and "$ref" not in schema:
        return {**schema, "type": [schema["type"], "null"]}
    return {"anyOf": [schema, {"type": "null"}]}


def closed_object(properties: dict[str, JSONSchema], *, optional: tuple[str, ...] = ()) -> JSONSchema:
    """A closed object: every property but ``optional`` is required, no others are allowed."""
    return {
        "type": "object",
        "properties": properties,
        "required": [name for name in properties if name not in optional],
        "additionalProperties": False,
    }


TIME: JSONSchema = {"type": "string", "format": "date-time"}
INT: JSONSchema = {"type": "integer"}
NUMBER: JSONSchema = {"type": "number"}
STRING: JSONSchema = {"type": "string"}
SEQ: JSONSchema = {"type": "integer", "minimum": 1}
#: any JSON value: a decision, an event's value
ANY: JSONSchema = {}


# --------------------------------------------------------------------------- rows


def _row_schemas() -> dict[str, JSONSchema]:
    """The rows the lists and exports give, named as the components they become."""
    completion = closed_object(
        {"earned": {"type": "integer", "minimum": 0}, "possible": {"type": "integer", "minimum": 0},
         "ratio": {"type": "number", "minimum": 0}}
    )
    progress: dict[str, JSONSchema] = {
        "code": STRING,
        "label": STRING,
        "group": nullable(INT),
        "connected": {"type": "boolean"},
        "connected_since": nullable(TIME),
        "completion": completion,
        # None: past a float's range (a participant's sum of scores near 1e308), never a number
        "final_score": nullable(NUMBER),
        "rank": {"type": "integer", "minimum": 1},
        "percentile_rank": nullable({"type": "number", "minimum": 0, "maximum": 100}),
        "join_label": nullable(STRING),
        "joined_at": nullable(TIME),
        "completion_code": nullable(STRING),
        "status": nullable({"type": "string", "enum": list(PARTICIPANT_STATUSES)}),
    }
    scored = {"subperiod": nullable(INT), "decision": ANY, "score": NUMBER, "seq": SEQ}
    session: dict[str, JSONSchema] = {
        "participant": STRING,
        "block": {"type": "integer", "minimum": 0},
        "group": INT,
        "started_at": nullable(TIME),
        "finished_at": nullable(TIME),
        # None: bonus + Σ results past a float's range (results near 1e308), never a number
        "final_score": nullable(NUMBER),
        "json_data": {"type": "object"},
    }
    return {
        "Event": closed_object(
            {"seq": SEQ, "timestamp": TIME, "group": nullable(INT), "participant": nullable(STRING),
             "channel": STRING, "value": ANY, "bot": {"type": "boolean"},
             # an extension of CONTRACT §2's event: the participant the server sent it to alone (a
             # result's, a game's send(…, to=[member])'s)
             "recipient": nullable(STRING)}
        ),
        "Session": closed_object(session),
        "Result": closed_object({"participant": STRING, "block": session["block"], **scored}),
        "ScoredResult": closed_object(scored),
        "SessionWithResults": closed_object({**session, "results": {"type": "array", "items": ref("ScoredResult")}}),
        "Progress": closed_object(progress),
        "ProgressDetail": closed_object({**progress, "sessions": {"type": "array", "items": ref("SessionWithResults")}}),
        # a group's period as its charts draw it (server.storage.charts)
        "GroupHistory": closed_object({
            "group": INT, "start_seq": nullable(SEQ), "truncated": {"type": "boolean"},
            "points": {"type": "array", "items": closed_object(
                {"seq": SEQ, "ts": {"type": "integer"}, "decisions": {"type": "object"}})},
        }),
        # the exports' connections and ticks (server.exportlogs)
        "Connection": closed_object(
            {"id": STRING, "participant": STRING, "connected_at": TIME, "disconnected_at": nullable(TIME),
             "close_code": nullable(INT), "route": STRING, "worker": nullable(STRING),
             "address": nullable(STRING), "user_agent": nullable(STRING)}
        ),
        "Tick": closed_object(
            {"group": INT, "block": {"type": "integer", "minimum": 0}, "kind": STRING,
             "index": {"type": "integer", "minimum": 0}, "scheduled_at": TIME, "actual_at": TIME,
             "late": {"type": "boolean"}, "snapshot": nullable({"type": "object"})}
        ),
        # a score on its way back to oTree (server.deliveries); never the REST key
        "Delivery": closed_object(
            {"participant": STRING, "label": nullable(STRING), "kind": {"type": "string", "enum": ["otree"]},
             "url": STRING, "status": {"type": "string", "enum": ["pending", "failing", "delivered", "refused"]},
             "payload": nullable({"type": "object"}), "attempts": {"type": "integer", "minimum": 0},
             "last_error": nullable(STRING), "created_at": TIME, "next_at": nullable(TIME),
             "delivered_at": nullable(TIME), "refused_at": nullable(TIME)}
        ),
    }


def _experiment_schemas() -> dict[str, JSONSchema]:
    fields: dict[str, JSONSchema] = {
        "code": STRING,
        "game": STRING,
        "status": {"type": "string", "enum": list(STATUSES)},
        "config": {"type": "object"},
        "group_size": {"type": "integer", "minimum": 1},
        "num_participants": {"type": "integer", "minimum": 1},
        "blocks": {"type": "integer", "minimum": 1},
        "block_pause": {"type": "number", "minimum": 0},
        "created_at": TIME,
        "started_at": nullable(TIME),
        "finished_at": nullable(TIME),
        "last_seq": {"type": "integer", "minimum": 0},
        "online": nullable(closed_object({
            "label_param": STRING, "lobby_timeout": NUMBER, "fill": {"type": "string", "enum": list(FILLS)},
            "dropout_after": NUMBER, "completion_url": nullable(STRING), "otree_url": nullable(STRING),
            "otree_rest_key": nullable({"const": "set"}),
        })),
    }
    summary = {**fields, "monitor_url": {"type": "string", "format": "uri"},
               "join_url": nullable({"type": "string", "format": "uri"})}
    link = closed_object({"code": STRING, "label": STRING, "url": {"type": "string", "format": "uri"}})
    block = closed_object(
        {
            "index": {"type": "integer", "minimum": 0},
            "period_length": nullable({"type": "number", "exclusiveMinimum": 0}),
            "num_subperiods": nullable({"type": "integer", "minimum": 1}),
            "rate_limit": nullable({"type": "number", "exclusiveMinimum": 0}),
            "bonus_points": NUMBER,
            "matching": {"type": "string", "enum": list(MATCHINGS)},
            "status": STRING,
        }
    )
    timing = {name: block["properties"][name]
              for name in ("period_length", "num_subperiods", "rate_limit", "bonus_points", "matching")}
    group = closed_object(
        {"id": INT, "block": {"type": "integer", "minimum": 0}, "index": {"type": "integer", "minimum": 0},
         "phase": STRING, "started_at": nullable(TIME), "ended_at": nullable(TIME),
         "members": {"type": "array", "items": STRING}}
    )
    return {
        # the timing its create request set for every block (as each block stored it), in the list too
        "ExperimentSummary": closed_object({**summary, **timing}),
        "ParticipantLink": link,
        # the detail adds the participants' links
        "Experiment": closed_object({**summary, **timing, "participants": {"type": "array",
                                                                          "items": ref("ParticipantLink")}}),
        "ExportDocument": closed_object(
            {
                "experiment": closed_object(fields),
                "blocks": {"type": "array", "items": block},
                "groups": {"type": "array", "items": group},
                "participants": {"type": "array", "items": ref("Progress")},
                "sessions": {"type": "array", "items": ref("SessionWithResults")},
                "events": {"type": "array", "items": ref("Event")},
                "connections": {"type": "array", "items": ref("Connection")},
                "ticks": {"type": "array", "items": ref("Tick")},
            }
        ),
    }


def _other_schemas() -> dict[str, JSONSchema]:
    game = closed_object(
        {
            "name": STRING,
            "group_sizes": {"type": "array", "prefixItems": [{"type": "integer", "minimum": 1},
                                                            nullable({"type": "integer", "minimum": 1})],
                            "minItems": 2, "maxItems": 2},
            "channels": {"type": "array", "items": STRING},
            "config_schema": {"type": "object"},
            "default_config": {"type": "object"},
            "doc": STRING,
            "view_missing": {**nullable(STRING), "description": "why the game cannot be played: its view file "
                                                                   "is missing (creating an experiment with it is a 400)"},
        }
    )
    nullable_number = nullable(NUMBER)
    counter = {"type": "integer", "minimum": 0}
    return {
        "Error": closed_object(
            {"error": {"type": "string", "minLength": 1}, "field": {"type": "string", "minLength": 1}},
            optional=("field",),
        ),
        "Health": closed_object({"status": {"const": "ok"}}),
        # the caller's token: an account of the table, or SYNCLAB_ADMIN_TOKEN (its name is that)
        "Caller": closed_object({"name": {"type": "string", "minLength": 1},
                           "role": {"type": "string", "enum": list(ROLES)}}),
        "Unhealthy": closed_object({"status": {"const": "unavailable"}, "reason": {"type": "string", "minLength": 1}}),
        "ServerStatus": closed_object({
            "writer": closed_object({
                # log_restarts: SQLite's write-ahead log made to start over (Database.log_restarts)
                **{name: counter for name in ("batches", "writes", "events", "fenced", "log_restarts")},
                "commit_ms": closed_object({name: counter for name in COMMIT_BUCKET_NAMES}),
            }),
            # SYNCLAB_DURABILITY: what an acknowledged decision survives
            "durability": {"type": "string", "enum": list(DURABILITIES)},
            # SYNCLAB_JOURNAL: acknowledged once in the journal, applied to SQLite after
            "journal": {"type": "boolean"},
            "live_groups": counter,
            "connections": counter,
            "worker": STRING,
            "cluster": closed_object({
                "name": STRING,
                "workers": {"type": "array", "items": closed_object({
                    "worker": STRING, "host": STRING, "pid": {"type": "integer", "minimum": 1},
                    "started": NUMBER, "at": NUMBER, "groups": counter, "sockets": counter,
                    # how late its event loop runs (ms, the mean of the last 2 s), and whether that
                    # is past SYNCLAB_BUSY_LAG (absent from a worker of a build before them)
                    "lag_ms": {"type": "number", "minimum": 0}, "busy": {"type": "boolean"},
                    "writer": closed_object({name: counter for name in ("batches", "writes", "events")}),
                    # its connections' rows name it (absent from a worker of a build before that)
                    "names_connections": {"type": "boolean"},
                }, optional=("lag_ms", "busy", "names_connections"))},
                "groups": counter,
                "sockets": counter,
                "events": counter,
            }),
        }, optional=("worker", "cluster")),
        "Game": game,
        "Games": closed_object({"results": {"type": "array", "items": ref("Game")}}),
        "Stats": closed_object(
            {
                "experiment": STRING,
                "status": {"type": "string", "enum": list(STATUSES)},
                "group": nullable({"type": "integer", "minimum": 1}),
                "last_seq": {"type": "integer", "minimum": 0},
                "mean_completion": nullable_number,
                "mean_score": nullable_number,
                "scores_not_finite": {"type": "integer", "minimum": 0},
                "count": {"type": "integer", "minimum": 0},
                "participants": {"type": "integer", "minimum": 0},
                "finished": {"type": "integer", "minimum": 0},
                "played_by_bots": {"type": "integer", "minimum": 0},
                "connected": {"type": "integer", "minimum": 0},
                "exclude_unfinished": {"type": "boolean"},
            }
        ),
        "ActionResult": closed_object(
            {
                "action": {"type": "string", "enum": list(ACTIONS)},
                "groups": {"type": "array", "items": INT},
                "status": {"type": "string", "enum": list(STATUSES)},
            }
        ),
        # the game failed on the action in some groups (server.exceptions.ActionFailed): the
        # groups acted on, and those it failed in (each left as it was)
        "ActionFailed": closed_object(
            {
                "error": {"type": "string", "minLength": 1},
                "action": {"type": "string", "enum": list(ACTIONS)},
                "groups": {"type": "array", "items": INT},
                "failed": {"type": "array", "items": INT, "minItems": 1},
            }
        ),
    }


def _page(item: str) -> JSONSchema:
    """The edx-style page of ``item`` rows."""
    link = nullable({"type": "string", "format": "uri"})
    return closed_object(
        {
            "count": {"type": "integer", "minimum": 0},
            "num_pages": {"type": "integer", "minimum": 1},
            "current_page": {"type": "integer", "minimum": 1},
            "next": link,
            "previous": link,
            "results": {"type": "array", "items": ref(item), "maxItems": MAX_PAGE_SIZE},
        }
    )


PAGES = {f"{item}Page": item for item in ("ExperimentSummary", "Progress", "Event", "Session", "Result", "Delivery")}


def schemas() -> dict[str, JSONSchema]:
    """The answers' schemas as ``components.schemas`` names them: rows, experiments, the others, pages."""
    return {**_row_schemas(), **_experiment_schemas(), **_other_schemas(),
            **{name: _page(item) for name, item in PAGES.items()}}
