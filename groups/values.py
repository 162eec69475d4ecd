"""Values a client sent, in messages and checks: :func:`shown` in an error message, :func:`is_number`,
and a game's checks (:func:`require_number`, :func:`require_integer` and :func:`require_choice`
for a decision, :func:`config_number` for a setting, within :data:`MAX_AMOUNT`)."""

from __future__ import annotations

import math
import reprlib
from collections.abc import Sequence
from typing import Any

from .exceptions import ConfigError, InvalidDecision

#: how much of a value :func:`shown` writes out
_SHOWN_LENGTH = 80


class _Shown(reprlib.Repr):
    def __init__(self) -> None:
        super().__init__()
        # a few levels and items: a frame nested 1,000 deep is shown as [[[[...]]]], not recursed into
        self.maxlevel = 4
        self.maxlist = self.maxtuple = self.maxset = self.maxdict = 6
        self.maxstring = self.maxother = self.maxlong = _SHOWN_LENGTH


_shown = _Shown()


def shown(value: object) -> str:
    """``repr(value)`` for an error message: a few levels deep, at most 80 characters, never raising.

    Use it for whatever a client sent (a decision, a config value): ``repr`` of JSON nested a
    thousand deep raises ``RecursionError``, and a megabyte of it would fill the message.
    """
    try:
        text = _shown.repr(value)
    except Exception:  # a huge int, a game's own type whose __repr__ fails
        return f"<{type(value).__name__}>"
    return text if len(text) <= _SHOWN_LENGTH else text[: _SHOWN_LENGTH - 3] + "..."


def is_number(value: object) -> bool:
    """A finite int or float (an int a float can hold), and not a bool."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond any float
        return False


#: the largest magnitude a bundled game takes for a payoff, an endowment or points, far beyond
#: any lab's: every sum of scores over an experiment's sessions then stays a finite float
MAX_AMOUNT = 1e9


def require_number(decision: Any, low: float, high: float) -> float:
    """A helper for ``validate_decision``: ``decision`` as a float in ``[low, high]``."""
    kind = type(decision)
    if kind is float or kind is int:  # a decision's common case (a bool is neither), looked at cheaply
        try:
            value = float(decision)  # (a float itself)
        except OverflowError:  # an int beyond any float
            value = math.nan
        if low <= value <= high and value - value == 0.0:  # in range and finite (inf - inf is nan)
            return value
        raise InvalidDecision(f"expected a number in [{low}, {high}], got {shown(decision)}")
    if not is_number(decision):
        raise InvalidDecision(f"expected a number in [{low}, {high}], got {shown(decision)}")
    value = float(decision)
    if not low <= value <= high:  # also refuses NaN
        raise InvalidDecision(f"expected a number in [{low}, {high}], got {shown(decision)}")
    return value


def require_integer(decision: Any, low: int, high: int) -> int:
    """A helper for ``validate_decision``: ``decision`` as an ``int`` in ``[low, high]`` (an
    effort level, a count). A whole number written without a fraction, as the config schema's
    ``integer``: ``3``, not ``3.0``, and never ``true``, which ``decision in range(1, 8)`` takes
    for 1."""
    if isinstance(decision, bool) or not isinstance(decision, int) or not low <= decision <= high:
        raise InvalidDecision(f"expected an integer from {low} to {high}, got {shown(decision)}")
    return decision


def require_choice(decision: Any, choices: Sequence[Any]) -> Any:
    """A helper for ``validate_decision``: ``decision`` if it is one of ``choices``, of the same
    type (``true`` is not the choice ``1``, nor ``1.0`` the choice ``1``), else
    :class:`InvalidDecision` listing them."""
    for choice in choices:
        if type(decision) is type(choice) and decision == choice:
            return choice
    raise InvalidDecision(f"expected one of {shown(list(choices))}, got {shown(decision)}")


def config_integer(value: Any, field: str, low: int, high: int) -> int:
    """A helper for ``validate_config``: ``value`` as an ``int`` in ``[low, high]`` (a number of
    rounds, an effort level to start at), or :class:`ConfigError` naming ``field``. A whole number
    written without a fraction, as the config schema's ``integer``: ``3``, not ``3.0``, never
    ``true``."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(field, f"expected an integer from {low} to {high}, got {shown(value)}")
    return value


def config_number(
    value: Any, field: str, low: float = -MAX_AMOUNT, high: float = MAX_AMOUNT, *, above_low: bool = False
) -> float:
    """A helper for ``validate_config``: ``value`` as a float in ``[low, high]`` (``(low, high]``
    with ``above_low``), or :class:`ConfigError` naming ``field`` (``"config.endowment"``).

    The default bounds are :data:`MAX_AMOUNT` either way: bound every payoff and amount of a game,
    or a huge one makes scores, and the sums of scores, infinite.
    """
    opening = "(" if above_low else "["
    expected = f"expected a number in {opening}{low:g}, {high:g}]"
    if not is_number(value):
        raise ConfigError(field, f"{expected}, got {shown(value)}")
    number = float(value)
    if not (low < number if above_low else low <= number) or number > high:
        raise ConfigError(field, f"{expected}, got {shown(value)}")
    return number
