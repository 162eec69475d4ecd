"""The pure core of synclab: decision groups and games, with no I/O and no clock.

Everything a game author needs is importable from here.
"""

from __future__ import annotations

from .bimatrix import Bimatrix
from .exceptions import (
    ConfigError,
    GroupError,
    InvalidDecision,
    InvalidState,
    NotAMember,
    NotRunning,
    RefusedAction,
    UnknownChannel,
    UnknownGame,
)
from .group import (
    DECISIONS,
    GROUP_DECISIONS,
    PERIOD_END,
    PERIOD_START,
    STATE,
    SUBPERIOD,
    DecisionGroup,
    GroupState,
    Phase,
    Timing,
    is_number,
    require_number,
)
from .messages import NOBODY, Event
from .public_goods import PublicGoods
from .registry import available_games, game_name, load_game

__all__ = [
    "DECISIONS",
    "GROUP_DECISIONS",
    "NOBODY",
    "PERIOD_END",
    "PERIOD_START",
    "STATE",
    "SUBPERIOD",
    "Bimatrix",
    "ConfigError",
    "DecisionGroup",
    "Event",
    "GroupError",
    "GroupState",
    "InvalidDecision",
    "InvalidState",
    "NotAMember",
    "NotRunning",
    "Phase",
    "PublicGoods",
    "RefusedAction",
    "Timing",
    "UnknownChannel",
    "UnknownGame",
    "available_games",
    "game_name",
    "is_number",
    "load_game",
    "require_number",
]
