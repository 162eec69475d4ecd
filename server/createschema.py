"""The schema of ``POST /api/experiments``'s body (``NewExperiment`` in :mod:`server.openapi`): one
branch per registered game, and one for a game named by import path.

The bounds and defaults are those :func:`server.experiments.parse_request` applies, read from the
same constants, and each game's branch carries its own config schema and defaults.
"""

from __future__ import annotations

import copy

from groups import MATCHINGS, MAX_AMOUNT, DecisionGroup, available_games

from .experiments import (
    MAX_BLOCK_PAUSE,
    MAX_BLOCKS,
    MAX_PARTICIPANTS,
    MAX_PERIOD_LENGTH,
    MAX_SESSIONS,
    MAX_SUBPERIODS,
)
from .online import FILLS, MAX_WAIT
from .schemas import JSONSchema, closed_object, nullable

#: ``"module.path:Class"``, a game named by import path
IMPORT_PATH_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"


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
    return closed_object(
        {
            "game": game,
            "participants": participants,
            "group_size": {"type": "integer", "minimum": max(1, low),
                           "maximum": MAX_PARTICIPANTS if high is None else high},
            **_timing_properties(),
            "config": nullable(config) if config else {"type": ["object", "null"]},
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
        closed_object(
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
