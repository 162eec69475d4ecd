"""A 2x2 game in continuous or discrete time, after the LEEPS lab's experiments.

The first member is ``row``, the second ``col``. A decision is the weight on action A in
``[0, 1]``; the flow payoff is the expected payoff of the mixed profile.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any, ClassVar

from .bots import clamp, current, toward, walk
from .exceptions import ConfigError
from .group import DecisionGroup
from .values import MAX_AMOUNT, config_number, require_number, shown

PRISONERS_DILEMMA = {"AA": [3, 3], "AB": [0, 5], "BA": [5, 0], "BB": [1, 1]}
_CELLS = ("AA", "AB", "BA", "BB")


class Bimatrix(DecisionGroup):
    """Two players, a 2x2 game (default: the prisoner's dilemma, A = cooperate).

    The first member is row, the second col. A decision is the weight on action A, from 0 (pure
    B) to 1 (pure A); the flow payoff is the expected payoff of the mixed profile.

    Bots (``synclab bots``) play a noisy best response: most of the time a bot moves half way
    from its weight to its best response to the partner's current weight (1 when A pays more, 0
    when B does, where it is when they tie); one time in five it explores instead, a random walk
    step of up to 0.25. In the prisoner's dilemma that drifts towards defection (B).
    """

    name = "bimatrix"
    title = "Two-player game"
    group_sizes = (2, 2)
    #: a bot's chance to explore (a random walk step of up to ``bot_step``) instead of adjusting
    bot_explore: ClassVar[float] = 0.2
    bot_step: ClassVar[float] = 0.25
    #: the share of the way to the best response a bot moves in one decision
    bot_adjust: ClassVar[float] = 0.5
    config_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "payoffs": {
                "type": "object",
                "description": "cell -> [row payoff, col payoff]; A is the first action",
                "properties": {
                    cell: {
                        "type": "array",
                        "items": {"type": "number", "minimum": -MAX_AMOUNT, "maximum": MAX_AMOUNT},
                        "minItems": 2,
                        "maxItems": 2,
                    }
                    for cell in _CELLS
                },
                "required": list(_CELLS),
                "additionalProperties": False,
            },
            "initial_decision": {"type": "number", "minimum": 0, "maximum": 1},
        },
        "additionalProperties": False,
    }
    default_config: ClassVar[dict[str, Any]] = {
        "payoffs": PRISONERS_DILEMMA,
        "initial_decision": 0.5,
    }

    @classmethod
    def validate_config(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        """Each payoff a number of magnitude at most :data:`~groups.MAX_AMOUNT`, the initial weight in [0, 1]."""
        merged = super().validate_config(config)
        payoffs = merged["payoffs"]
        if not isinstance(payoffs, dict) or set(payoffs) != set(_CELLS):
            raise ConfigError("config.payoffs", f"expected an object with keys {list(_CELLS)}, got {shown(payoffs)}")
        for cell in _CELLS:
            pair = payoffs[cell]
            if not isinstance(pair, list) or len(pair) != 2:
                raise ConfigError(f"config.payoffs.{cell}", f"expected [row, col] numbers, got {shown(pair)}")
            for x in pair:
                config_number(x, f"config.payoffs.{cell}")
        config_number(merged["initial_decision"], "config.initial_decision", 0, 1)
        return merged

    def role(self, participant: str) -> str:
        return "row" if participant == self.members[0] else "col"

    def initial_decision(self, participant: str) -> float:
        return float(self.config["initial_decision"])

    def validate_decision(self, participant: str, decision: Any) -> float:
        return require_number(decision, 0.0, 1.0)

    def payoff(self, participant: str, decisions: Mapping[str, Any]) -> float:
        row, col = self.members
        p, q = float(decisions[row]), float(decisions[col])
        index = 0 if participant == row else 1
        table = self.config["payoffs"]
        return float(
            p * q * table["AA"][index]
            + p * (1 - q) * table["AB"][index]
            + (1 - p) * q * table["BA"][index]
            + (1 - p) * (1 - q) * table["BB"][index]
        )

    def best_response(self, participant: str, partner_weight: float) -> float | None:
        """1 when action A pays ``participant`` more against ``partner_weight``, 0 when B does, None on a tie."""
        table = self.config["payoffs"]
        q = partner_weight
        if participant == self.members[0]:  # row: the partner's weight is on the columns
            a = q * table["AA"][0] + (1 - q) * table["AB"][0]
            b = q * table["BA"][0] + (1 - q) * table["BB"][0]
        else:  # col: the partner's weight is on the rows
            a = q * table["AA"][1] + (1 - q) * table["BA"][1]
            b = q * table["AB"][1] + (1 - q) * table["BB"][1]
        if a == b:
            return None
        return 1.0 if a > b else 0.0

    def bot_decision(self, participant: str, decisions: Mapping[str, Any], rng: random.Random) -> float:
        """A noisy best response to the partner's current weight (see the class docstring)."""
        initial = self.initial_decision(participant)
        own = current(decisions, participant, initial)
        partner = next(m for m in self.members if m != participant)
        if rng.random() < self.bot_explore:
            value = walk(rng, own, 0.0, 1.0, self.bot_step)
        else:
            target = self.best_response(participant, current(decisions, partner, initial))
            value = own if target is None else toward(own, target, self.bot_adjust)
        return clamp(round(value, 3), 0.0, 1.0)
