"""A linear public goods game: each member contributes part of an endowment."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any, ClassVar

from .bots import clamp, current, toward, walk
from .group import DecisionGroup
from .values import MAX_AMOUNT, config_number, require_number

#: the largest marginal per-capita return (a lab's is below 1; a few games use up to n)
MAX_MPCR = 1000.0


class PublicGoods(DecisionGroup):
    """n players; a decision is a contribution from 0 to the endowment.

    Flow payoff: endowment - own contribution + mpcr x the sum of all contributions.

    Bots (``synclab bots``) are noisy conditional cooperators: each decision moves half way from
    the bot's contribution to the mean of the others' current contributions, then takes a random
    walk step of up to 15% of the endowment (reflected at 0 and the endowment), rounded to cents.
    """

    name = "public_goods"
    title = "Public goods game"
    group_sizes = (2, None)
    #: the share of the way to the others' mean a bot moves in one decision, and its noise
    bot_adjust: ClassVar[float] = 0.5
    bot_noise: ClassVar[float] = 0.15
    config_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "endowment": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_AMOUNT},
            "mpcr": {"type": "number", "minimum": 0, "maximum": MAX_MPCR, "description": "marginal per-capita return"},
        },
        "additionalProperties": False,
    }
    default_config: ClassVar[dict[str, Any]] = {"endowment": 10, "mpcr": 0.5}

    @classmethod
    def validate_config(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        """``endowment`` in (0, :data:`~groups.MAX_AMOUNT`], ``mpcr`` in [0, :data:`MAX_MPCR`]."""
        merged = super().validate_config(config)
        config_number(merged["endowment"], "config.endowment", 0.0, MAX_AMOUNT, above_low=True)
        config_number(merged["mpcr"], "config.mpcr", 0.0, MAX_MPCR)
        return merged

    def role(self, participant: str) -> str:
        return "player"

    def initial_decision(self, participant: str) -> float:
        return 0.0

    def validate_decision(self, participant: str, decision: Any) -> float:
        return require_number(decision, 0.0, float(self.config["endowment"]))

    def payoff(self, participant: str, decisions: Mapping[str, Any]) -> float:
        endowment = float(self.config["endowment"])
        total = sum(float(decisions[m]) for m in self.members)
        return endowment - float(decisions[participant]) + float(self.config["mpcr"]) * total

    def payoffs(self, decisions: Mapping[str, Any]) -> dict[str, float]:
        """:meth:`payoff` of every member, the contributions summed once (the same arithmetic)."""
        endowment, mpcr = float(self.config["endowment"]), float(self.config["mpcr"])
        members = self.members
        # (at every decision: a map and a loop, not comprehensions, each a function's frame in
        # Python 3.11, nor zip, whose strict= is a dearer call)
        share = mpcr * sum(map(float, map(decisions.__getitem__, members)))  # payoff's product, made once
        rates = {}
        for m in members:
            rates[m] = endowment - float(decisions[m]) + share
        return rates

    def bot_decision(self, participant: str, decisions: Mapping[str, Any], rng: random.Random) -> float:
        """Conditional cooperation with noise (see the class docstring)."""
        endowment = float(self.config["endowment"])
        own = current(decisions, participant, self.initial_decision(participant))
        others = [current(decisions, m, 0.0) for m in self.members if m != participant]
        target = sum(others) / len(others) if others else own
        value = walk(rng, toward(own, target, self.bot_adjust), 0.0, endowment, self.bot_noise * endowment)
        return clamp(round(value, 2), 0.0, endowment)
