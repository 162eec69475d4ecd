"""Values a client sent, in messages and checks: :func:`shown` in an error message, :func:`is_number`."""

from __future__ import annotations

import math
import reprlib

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
