"""The pure core of synclab: decision groups and games, with no I/O and no clock.

Everything a game author needs is importable from here.
"""

from __future__ import annotations

from .bimatrix import Bimatrix
from .blocks import FIXED, MATCHINGS, RANDOM, current_block, plan_groups
from .channels import (
    DECISIONS,
    GROUP_DECISIONS,
    PERIOD,
    PERIOD_END,
    PERIOD_START,
    RESERVED_CHANNELS,
    RESULT,
    STATE,
    SUBPERIOD,
)
from .exceptions import (
    ConfigError,
    GameFault,
    GroupError,
    InvalidDecision,
    InvalidState,
    NotAMember,
    NotRunning,
    RefusedAction,
    UnknownChannel,
    UnknownGame,
)
from .faults import GAME_FAULT, describe_fault
from .group import DecisionGroup
from .messages import LATE_AFTER, MAX_CHANNEL_LENGTH, NOBODY, Event, Tick
from .public_goods import PublicGoods
from .registry import available_games, game_name, load_game
from .rehearsal import Rehearsal, rehearse
from .state import (
    PAUSED_BY_DISCONNECT,
    PAUSED_BY_EXPERIMENTER,
    GroupState,
    Phase,
    Timing,
    add_flow,
    flow_score,
)
from .values import (
    MAX_AMOUNT,
    config_integer,
    config_number,
    is_number,
    require_choice,
    require_integer,
    require_number,
    shown,
)

__all__ = [
    "DECISIONS",
    "FIXED",
    "GAME_FAULT",
    "GROUP_DECISIONS",
    "LATE_AFTER",
    "MATCHINGS",
    "MAX_AMOUNT",
    "MAX_CHANNEL_LENGTH",
    "NOBODY",
    "PAUSED_BY_DISCONNECT",
    "PAUSED_BY_EXPERIMENTER",
    "PERIOD",
    "PERIOD_END",
    "PERIOD_START",
    "RANDOM",
    "RESERVED_CHANNELS",
    "RESULT",
    "STATE",
    "SUBPERIOD",
    "Bimatrix",
    "ConfigError",
    "DecisionGroup",
    "Event",
    "GameFault",
    "GroupError",
    "GroupState",
    "InvalidDecision",
    "InvalidState",
    "NotAMember",
    "NotRunning",
    "Phase",
    "PublicGoods",
    "RefusedAction",
    "Rehearsal",
    "Tick",
    "Timing",
    "UnknownChannel",
    "UnknownGame",
    "add_flow",
    "available_games",
    "config_integer",
    "config_number",
    "current_block",
    "describe_fault",
    "flow_score",
    "game_name",
    "is_number",
    "load_game",
    "plan_groups",
    "rehearse",
    "require_choice",
    "require_integer",
    "require_number",
    "shown",
]
