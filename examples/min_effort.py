"""The minimum-effort game (the weakest link) in continuous time: a second small game of the guide.

Each member picks an effort from 1 to 7 at any moment of the period. The flow payoff is
``a * min(efforts) - b * own effort`` points a second: everybody gains from the group's lowest
effort and pays for their own, so every common effort is an equilibrium and the highest pays
best. Scored like every game: the time average of the flow payoff over the period (or per
subperiod).

Play it from the repository's directory: create an experiment with
``"game": "examples.min_effort:MinEffort"``.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any, ClassVar

from groups import MAX_AMOUNT, DecisionGroup, config_number, require_integer

LOWEST, HIGHEST = 1, 7


class MinEffort(DecisionGroup):
    """n players; the group earns by its weakest link, each pays for their own effort."""

    name = "min_effort"
    title = "Minimum effort"
    group_sizes = (2, None)
    config_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "a": {"type": "number", "minimum": 0, "maximum": MAX_AMOUNT, "description": "points a second per unit of the group's lowest effort"},
            "b": {"type": "number", "minimum": 0, "maximum": MAX_AMOUNT, "description": "points a second per unit of one's own effort"},
        },
        "additionalProperties": False,
    }
    default_config: ClassVar[dict[str, Any]] = {"a": 2, "b": 1}
    #: the participant page's view of this game, beside this file
    view = "min_effort.js"

    @classmethod
    def validate_config(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        merged = super().validate_config(config)
        for key in ("a", "b"):
            config_number(merged[key], f"config.{key}", 0)
        return merged

    def initial_decision(self, participant: str) -> int:
        return HIGHEST

    def validate_decision(self, participant: str, decision: Any) -> int:
        # not `decision in range(1, 8)`: that takes `true` for 1 and 3.5 never, but 3.0 for 3
        return require_integer(decision, LOWEST, HIGHEST)

    def payoff(self, participant: str, decisions: Mapping[str, Any]) -> float:
        lowest = min(decisions[m] for m in self.members)
        return float(self.config["a"]) * lowest - float(self.config["b"]) * decisions[participant]

    def bot_decision(self, participant: str, decisions: Mapping[str, Any], rng: random.Random) -> int | None:
        """A bot matches the lowest effort of the others (a best response), and now and then tries another."""
        others = [decisions[m] for m in self.members if m != participant and isinstance(decisions.get(m), int)]
        if others and rng.random() < 0.8:
            return min(others)
        return rng.randint(LOWEST, HIGHEST)
