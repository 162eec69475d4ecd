"""Pure helpers for the bundled games' bot strategies (``DecisionGroup.bot_decision``).

``synclab bots`` (:mod:`server.bots`) plays absent participants by asking the game's
``bot_decision`` what to send. The strategies here take the bot's ``random.Random`` as an
argument and have no clock and no I/O, so a seeded generator gives the same choices.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from typing import Any

from .values import is_number


def clamp(value: float, low: float, high: float) -> float:
    """``value`` within ``[low, high]`` (a non-finite value becomes ``low``)."""
    if not math.isfinite(value):
        return low
    return min(high, max(low, value))


def walk(rng: random.Random, value: float, low: float, high: float, step: float) -> float:
    """One step of a bounded random walk: ``value`` plus a uniform step in ``[-step, step]``.

    A step past a bound is reflected back into ``[low, high]``, so a walk at a bound does not
    stick there.
    """
    moved = value + rng.uniform(-step, step)
    if moved < low:
        moved = low + (low - moved)
    elif moved > high:
        moved = high - (moved - high)
    return clamp(moved, low, high)


def toward(value: float, target: float, share: float) -> float:
    """``value`` moved ``share`` (0 to 1) of the way to ``target``."""
    return value + share * (target - value)


def current(decisions: Mapping[str, Any], participant: str, default: float) -> float:
    """``participant``'s decision in ``decisions`` as a float, or ``default`` when it is not a number."""
    value = decisions.get(participant)
    if isinstance(value, int | float) and is_number(value):
        return float(value)
    return default
