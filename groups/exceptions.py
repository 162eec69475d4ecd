"""Every exception the pure core raises.

    GroupError                  base class; never escapes the shell unhandled
    ├── RefusedAction           an action that changes nothing and gets an ``error`` frame
    │   ├── NotAMember          the participant is not in this group
    │   ├── NotRunning          a decision outside the running period
    │   ├── UnknownChannel      a channel the game does not declare
    │   └── InvalidDecision     the game's ``validate_decision`` refused the value
    ├── InvalidState            an action the current phase forbids (a bug in the caller)
    ├── GameFault               a game's hook gave what the core cannot use (a payoff of NaN, a
    │                           channel name in ``send`` that cannot be stored or is synclab's own)
    ├── ConfigError             a bad game or timing configuration, refused at creation
    └── UnknownGame             no game by that name, import path or entry point

Each refused action carries a short machine ``code`` and a message that says what was
expected and what arrived.
"""

from __future__ import annotations


class GroupError(Exception):
    """Base class of the core's exceptions."""


class RefusedAction(GroupError):
    """An input that is refused; the group state is unchanged."""

    code = "refused"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotAMember(RefusedAction):
    code = "not_a_member"


class NotRunning(RefusedAction):
    code = "not_running"


class UnknownChannel(RefusedAction):
    code = "unknown_channel"


class InvalidDecision(RefusedAction):
    code = "invalid_decision"


class InvalidState(GroupError):
    """The phase of the group does not allow this action."""


class GameFault(GroupError):
    """A game's hook gave what the core cannot use: a payoff that is not a finite number.

    Raised before anything of the action changed the group, so the tick that met it can be
    tried again; nothing that could not be stored (a score of NaN) reaches the database. Also
    what :meth:`.DecisionGroup.send` raises for a channel name that cannot be stored, or that
    synclab keeps for its own (``hook`` ``None``: :func:`.describe_fault` finds the hook that
    called it in the traceback).
    ``hook`` names the game's method that gave it to the core: ``"payoff"``, or ``"payoffs"``
    when the game overrides that (the whole group's at once)."""

    def __init__(self, message: str, hook: str | None = None) -> None:
        super().__init__(message)
        self.hook = hook


class ConfigError(GroupError):
    """A configuration value is refused; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class UnknownGame(GroupError):
    """No game is registered by that name."""
