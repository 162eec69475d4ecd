"""Creating an experiment: the request body checked field by field, then the rows built."""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import Any

from groups import (
    MATCHINGS,
    MAX_AMOUNT,
    ConfigError,
    DecisionGroup,
    Timing,
    UnknownGame,
    config_number,
    game_name,
    load_game,
    plan_groups,
    shown,
)

from .exceptions import BadRequest
from .online import OnlineSettings, parse_online
from .storage import NewBlock, NewExperiment, new_code
from .viewfiles import missing_view
from .wire import nested_deeper

log = logging.getLogger(__name__)

MAX_PARTICIPANTS = 10_000
MAX_BLOCKS = 1_000
#: participants x blocks: one session row each, all inserted by the create request
MAX_SESSIONS = 100_000
MAX_SUBPERIODS = 100_000
#: a week: a period's end (and a rate limit) stays a time the database can store
MAX_PERIOD_LENGTH = 604_800.0
#: how deep ``config`` may nest: far more than any game's settings, and less than JSON storage takes
MAX_CONFIG_DEPTH = 32

_FIELDS = {
    "game", "participants", "group_size", "blocks", "period_length", "num_subperiods",
    "rate_limit", "bonus_points", "matching", "config", "block_pause", "online",
}
MAX_BLOCK_PAUSE = 3600.0


@dataclass(frozen=True, slots=True)
class ExperimentRequest:
    game: type[DecisionGroup]
    participants: int
    group_size: int
    blocks: int
    timing: Timing
    bonus_points: float
    matching: str
    config: dict[str, Any]
    block_pause: float = 5.0
    online: OnlineSettings | None = None


def _integer(body: dict[str, Any], name: str, default: int | None, low: int, high: int) -> int:
    value = body.get(name, default)
    if value is None:
        raise BadRequest(f"{name}: expected an integer from {low} to {high}, got nothing", field=name)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadRequest(f"{name}: expected an integer from {low} to {high}, got {shown(value)}", field=name)
    return value


def _number(
    body: dict[str, Any], name: str, default: float | None, low: float, high: float, *, above_low: bool, nullable: bool
) -> float | None:
    """A number from ``low`` (above it with ``above_low``) to ``high``, or null if ``nullable``
    (:func:`groups.config_number`'s check, answered as a 400).

    Every number has an upper bound: a huge time overflows a period's end as the database stores
    it, a huge amount the sums of scores.
    """
    value = body.get(name, default)
    if value is None:
        if nullable:
            return None
        raise BadRequest(f"{name}: expected a number, got null", field=name)
    try:
        return config_number(value, name, low, high, above_low=above_low)
    except ConfigError as exc:
        raise BadRequest(str(exc), field=name) from None


def parse_request(body: Any) -> ExperimentRequest:
    """Check every field of ``POST /api/experiments``; a :class:`BadRequest` names the first bad one."""
    if not isinstance(body, dict):
        raise BadRequest(f"expected a JSON object, got {type(body).__name__}")
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise BadRequest(f"{unknown[0]}: unknown field; expected some of {sorted(_FIELDS)}", field=unknown[0])
    name = body.get("game")
    if not isinstance(name, str):
        raise BadRequest(f"game: expected a game name, got {shown(name)}", field="game")
    try:
        game = load_game(name)
    except UnknownGame as exc:
        raise BadRequest(f"game: {exc}", field="game") from None
    try:
        game.check_channels()
    except ConfigError as exc:
        raise BadRequest(f"game: {exc}", field="game") from None
    missing = missing_view(game, name)  # every participant's page would say it cannot show the game
    if missing is not None:
        raise BadRequest(f"game: {missing}", field="game")
    participants = _integer(body, "participants", None, 1, MAX_PARTICIPANTS)
    group_size = _integer(body, "group_size", None, 1, MAX_PARTICIPANTS)
    try:
        game.check_group_size(group_size)
    except ConfigError as exc:
        raise BadRequest(str(exc), field="group_size") from None
    if participants % group_size:
        raise BadRequest(
            f"participants: expected a multiple of group_size {group_size}, got {participants}", field="participants"
        )
    blocks = _integer(body, "blocks", 1, 1, MAX_BLOCKS)
    if participants * blocks > MAX_SESSIONS:
        raise BadRequest(
            f"blocks: expected participants x blocks of at most {MAX_SESSIONS} (one session each), "
            f"got {participants} x {blocks} = {participants * blocks}",
            field="blocks",
        )
    period_length = _number(body, "period_length", 60.0, 0, MAX_PERIOD_LENGTH, above_low=True, nullable=False)
    num_subperiods = body.get("num_subperiods")
    if num_subperiods is not None:
        num_subperiods = _integer(body, "num_subperiods", None, 1, MAX_SUBPERIODS)
    rate_limit = _number(body, "rate_limit", None, 0, MAX_PERIOD_LENGTH, above_low=True, nullable=True)
    block_pause = _number(body, "block_pause", 5.0, 0, MAX_BLOCK_PAUSE, above_low=False, nullable=False) or 0.0
    bonus_points = _number(body, "bonus_points", 0.0, -MAX_AMOUNT, MAX_AMOUNT, above_low=False, nullable=False)
    matching = body.get("matching", "fixed")
    if not isinstance(matching, str) or matching not in MATCHINGS:
        raise BadRequest(f"matching: expected one of {list(MATCHINGS)}, got {shown(matching)}", field="matching")
    config = body.get("config")
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise BadRequest(f"config: expected an object, got {shown(config)}", field="config")
    if nested_deeper(config, MAX_CONFIG_DEPTH):
        raise BadRequest(f"config: expected at most {MAX_CONFIG_DEPTH} levels of nesting, got more", field="config")
    try:
        timing = Timing(period_length, num_subperiods, rate_limit)
        config = game.check_config(config)
    except ConfigError as exc:
        raise BadRequest(str(exc), field=exc.field) from None
    except Exception as exc:  # the game's own check has a bug: say what it raised, not a bare 500
        log.exception("the game %s failed checking a config", name)
        raise BadRequest(
            f"config: the game {name} failed checking it: {type(exc).__name__}: {str(exc)[:200]} "
            "(the server's log has the traceback)",
            field="config",
        ) from None
    online = parse_online(body.get("online"))
    return ExperimentRequest(
        game, participants, group_size, blocks, timing, bonus_points or 0.0, matching, config, block_pause, online
    )


def plan(request: ExperimentRequest, *, seed: int | None = None) -> NewExperiment:
    """The rows of a new experiment: codes, blocks, and the groups of every block.

    Block 0 groups participants in order; later blocks keep those groups (``fixed``) or
    shuffle everyone into new ones (``random``).
    """
    n, size = request.participants, request.group_size
    grouping = plan_groups(n, size, request.blocks, request.matching, random.Random(seed))
    blocks = [
        NewBlock(
            index=index,
            period_length=request.timing.period_length,
            num_subperiods=request.timing.num_subperiods,
            rate_limit=request.timing.rate_limit,
            bonus_points=request.bonus_points,
            matching=request.matching,
            groups=groups,
        )
        for index, groups in enumerate(grouping)
    ]
    return NewExperiment(
        code=new_code(12),
        game=game_name(request.game),
        config=request.config,
        group_size=size,
        participant_codes=[new_code() for _ in range(n)],
        blocks=blocks,
        created_at=time.time(),
        block_pause=request.block_pause,
        online=request.online.stored() if request.online else None,
    )
