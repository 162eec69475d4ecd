"""A game's failure, described for the record: which hook failed, and how.

When a hook of a game raises (or gives what the core refuses: :class:`.GameFault`), the shell
records it as a ``game_fault`` event, and the experimenter's ``end`` ends the period without the
game (:meth:`.DecisionGroup.end_faulted`). :func:`describe_fault` says which hook it was and what
it raised, as JSON: ``{"hook", "error", "message", "during"}``.
"""

from __future__ import annotations

from typing import Any

from .exceptions import GameFault

#: the channel of a game's failure: recorded (sent to nobody), in the exports and on the monitor
GAME_FAULT = "game_fault"
#: the methods of :class:`.DecisionGroup` a game overrides (and ``on_<channel>``)
HOOKS = frozenset({
    "bot_decision",
    "initial_decision",
    "payoff",
    "payoffs",
    "role",
    "validate_decision",
    "when_all_players_ready",
    "when_player_disconnects",
})
#: how much of an exception's message is recorded
_MESSAGE_LENGTH = 300


def describe_fault(group: object, exc: BaseException, during: str) -> dict[str, Any]:
    """What ``group``'s game did wrong while the core ran ``during`` (``"tick"``, ``"end"``…), as JSON.

    ``hook`` is the game's method that failed (``None`` when no hook is on the way to the
    exception: a fault of the core itself), ``error`` the exception's type and ``message`` its
    text, cut to 300 characters.
    """
    return {"hook": fault_hook(group, exc), "error": type(exc).__name__, "message": _message(exc), "during": during}


def fault_hook(group: object, exc: BaseException) -> str | None:
    """The hook of ``group`` that raised ``exc``: the innermost hook called on it in the traceback."""
    if isinstance(exc, GameFault) and exc.hook is not None:  # the core refused what the hook gave
        return exc.hook
    found = None
    tb = exc.__traceback__
    while tb is not None:  # outermost first: the last one found is the innermost
        frame = tb.tb_frame
        name = frame.f_code.co_name
        if (name in HOOKS or name.startswith("on_")) and frame.f_locals.get("self") is group:
            found = name
        tb = tb.tb_next
    return found


def _message(exc: BaseException) -> str:
    try:
        text = str(exc)
    except Exception:  # a game's own exception whose __str__ fails
        text = f"<{type(exc).__name__}>"
    return text if len(text) <= _MESSAGE_LENGTH else text[: _MESSAGE_LENGTH - 3] + "..."
