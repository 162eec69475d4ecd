"""What a game declares and the hooks it overrides, with their defaults.

:class:`GameHooks` is the part of :class:`~groups.DecisionGroup` that a game author writes: the
class attributes (``name``, ``group_sizes``, ``channels``, the config's schema and defaults…),
the checks of a config, the hooks (``initial_decision``, ``validate_decision``, ``payoff``,
``when_all_players_ready``…) and what a hook may call (:meth:`~GameHooks.send`). A game
subclasses ``DecisionGroup``, not this class: the actions that call the hooks are there
(:mod:`groups.group`), the period's clock and scores in :mod:`groups.period`.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from .channels import game_channel_problem
from .exceptions import ConfigError, GameFault, NotAMember
from .messages import Event
from .schema import check
from .state import GroupState, Phase, Timing


class GameHooks:
    """A game's declarations and hooks, with their defaults: the base of
    :class:`~groups.DecisionGroup`, whose docstring says what each class attribute means."""

    name: ClassVar[str] = ""
    group_sizes: ClassVar[tuple[int, int | None]] = (1, None)
    channels: ClassVar[frozenset[str]] = frozenset()
    config_schema: ClassVar[dict[str, Any]] = {"type": "object", "properties": {}}
    default_config: ClassVar[dict[str, Any]] = {}
    #: when a member disconnects mid-period, stop the clock until every member is back
    pause_when_disconnected: ClassVar[bool] = False
    #: the participant page's view: an ES module, relative to the file of the class that sets it
    view: ClassVar[str | None] = None
    #: what the participant page calls the game (default: its name in words)
    title: ClassVar[str] = ""

    # set by DecisionGroup.__init__; the hooks and every part of the group read them
    members: tuple[str, ...]
    timing: Timing
    config: dict[str, Any]
    state: GroupState
    connected: set[str]
    now: float
    _outbox: list[Event]

    # ------------------------------------------------------------------ game hooks

    @classmethod
    def validate_config(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        """Return the complete config (defaults filled in) or raise :class:`ConfigError`.

        The base refuses a key not in ``default_config`` and fills in the defaults; an override
        calls it first, then checks what it needs. It runs every time a group is built, also
        from what the database holds. ``config_schema`` is not checked here but in
        :meth:`check_config`, when a config comes in.
        """
        return _with_defaults(cls, config)

    @classmethod
    def check_config(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        """A config that comes in (an experiment being created): the complete config, or
        :class:`ConfigError`.

        A key not in ``default_config`` is refused, the config with the defaults filled in must
        fit ``config_schema`` (the keywords :mod:`groups.schema` knows; the others are ignored),
        then :meth:`validate_config` has its say. A stored config is never checked against the
        schema again: an experiment created before its game's schema said more stays playable.
        """
        check(cls.config_schema, _with_defaults(cls, config))
        return cls.validate_config(config)

    @classmethod
    def check_channels(cls) -> None:
        """Raise :class:`ConfigError` unless each of ``channels`` can name a channel of the
        game's own: a non-empty string of at most :data:`~groups.MAX_CHANNEL_LENGTH` characters
        (a frame on a longer one could not be stored), none of :data:`RESERVED_CHANNELS` (its
        frames would be taken for synclab's own events). Checked when an experiment is created,
        not when a stored group is built: an experiment stored before stays playable."""
        for channel in sorted(cls.channels, key=repr):
            problem = game_channel_problem(channel)
            if problem is not None:
                raise ConfigError("channels", f"{cls.name or cls.__name__} declares a channel it cannot take: {problem}")

    @classmethod
    def check_group_size(cls, size: int) -> None:
        """Raise :class:`ConfigError` unless the game is played in groups of ``size``."""
        low, high = cls.group_sizes
        if size < low or (high is not None and size > high):
            if low == high:
                expected = f"exactly {low}"
            elif high is None:
                expected = f"at least {low}"
            else:
                expected = f"{low} to {high}"
            raise ConfigError(
                "group_size", f"{cls.name or cls.__name__} is played by {expected} members, got {size}"
            )

    def role(self, participant: str) -> str | None:
        """The participant's role in the group, shown in ``hello`` (default: none). A string; the
        server shows none (null) when this raises or gives what JSON cannot hold, and logs it."""
        return None

    def initial_decision(self, participant: str) -> Any:
        """Each member's decision when the period starts."""
        return None

    def validate_decision(self, participant: str, decision: Any) -> Any:
        """Return the decision to store, or raise :class:`InvalidDecision`."""
        return decision

    def payoff(self, participant: str, decisions: Mapping[str, Any]) -> float:
        """The flow payoff of ``participant`` when the group's decisions are ``decisions``."""
        return 0.0

    def payoffs(self, decisions: Mapping[str, Any]) -> dict[str, float]:
        """Every member's flow payoff at once, as :meth:`payoff` gives each (the default asks it
        for each member). A game whose payoffs share a term (a sum of all decisions, say) may
        compute it once here; the values must be exactly :meth:`payoff`'s, which ``verify`` uses."""
        return {p: self.payoff(p, decisions) for p in self.members}  # each checked by the core

    def bot_decision(self, participant: str, decisions: Mapping[str, Any], rng: random.Random) -> Any:
        """What a simulated participant (``synclab bots``) sends next, or ``None`` to send nothing now.

        ``decisions`` is the group's current decisions as the bot knows them (its own latest
        included); ``rng`` is the bot's only source of randomness. Called while the period runs,
        at the bot's own pace; a returned value must pass :meth:`validate_decision`. The default
        holds still: a game without a strategy is played by bots that connect and never decide.
        """
        return None

    def when_all_players_ready(self) -> None:
        """Runs exactly once, when the period starts (decisions are already initialised)."""

    def when_player_disconnects(self, participant: str) -> None:
        """Runs when a member's last connection closes."""

    # ------------------------------------------------------------------ for hooks

    def send(self, channel: str, payload: Any, *, to: Sequence[str] | None = None) -> None:
        """Broadcast ``payload`` on ``channel`` to the group (or to the members in ``to``).

        ``channel`` is a non-empty string of at most :data:`~groups.MAX_CHANNEL_LENGTH` (64)
        characters, what the database stores, and none of :data:`RESERVED_CHANNELS` (``state``,
        ``result``, ``hello``…: stored and sent on one of them, the event would be taken for
        synclab's own): anything else raises :class:`GameFault` at once, and the action that
        called the hook fails as when the hook raises.
        """
        problem = game_channel_problem(channel)
        if problem is not None:
            raise GameFault(f"{type(self).__name__}.send: {problem}")
        recipients = None if to is None else frozenset(to)
        if recipients is not None and not recipients <= set(self.members):
            raise NotAMember(f"send to {sorted(recipients - set(self.members))}: not members")
        self._outbox.append(Event(channel, payload, None, recipients))

    @property
    def group_decisions(self) -> dict[str, Any]:
        """The current decision of every member (a copy)."""
        return dict(self.state.decisions)

    @property
    def phase(self) -> Phase:
        return self.state.phase


def _with_defaults(game: type[GameHooks], config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` with ``game``'s defaults filled in; :class:`ConfigError` for a key it does not take."""
    unknown = set(config) - set(game.default_config)
    if unknown:
        raise ConfigError(
            f"config.{sorted(unknown)[0]}",
            f"unknown setting; {game.name or game.__name__} takes {sorted(game.default_config)}",
        )
    return {**copy.deepcopy(game.default_config), **config}
