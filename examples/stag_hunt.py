"""The stag hunt: the complete small game of the README's guide "Writing a game".

Each member chooses ``"stag"`` or ``"hare"`` at any moment of the period. A hare is a sure
``hare`` points a second; a stag pays ``stag`` points a second, but only while every member of
the group hunts stag (alone, a stag hunter gets nothing). Scored like every game: the time
average of the flow payoff over the period (or per subperiod).

Play it without installing anything: create an experiment with
``"game": "examples.stag_hunt:StagHunt"`` while running from the repository's directory.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any, ClassVar

from groups import MAX_AMOUNT, DecisionGroup, InvalidDecision, config_number, shown

CHOICES = ("stag", "hare")


class StagHunt(DecisionGroup):
    """n hunters; each chooses stag or hare; stags pay only when everybody hunts them."""

    name = "stag_hunt"
    title = "Stag hunt"
    group_sizes = (2, None)
    config_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "stag": {"type": "number", "minimum": 0, "maximum": MAX_AMOUNT, "description": "points a second when all hunt stag"},
            "hare": {"type": "number", "minimum": 0, "maximum": MAX_AMOUNT, "description": "points a second for a hare, always"},
        },
        "additionalProperties": False,
    }
    default_config: ClassVar[dict[str, Any]] = {"stag": 3, "hare": 1}
    #: the participant page's view of this game, beside this file
    view = "stag_hunt.js"

    @classmethod
    def validate_config(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        merged = super().validate_config(config)
        for key in ("stag", "hare"):  # a number from 0 to groups.MAX_AMOUNT, or ConfigError naming it
            config_number(merged[key], f"config.{key}", 0)
        return merged

    def initial_decision(self, participant: str) -> str:
        return "hare"

    def validate_decision(self, participant: str, decision: Any) -> str:
        if decision not in CHOICES:
            raise InvalidDecision(f"expected one of {list(CHOICES)}, got {shown(decision)}")
        return str(decision)

    def payoff(self, participant: str, decisions: Mapping[str, Any]) -> float:
        if decisions[participant] == "hare":
            return float(self.config["hare"])
        everybody = all(decisions[m] == "stag" for m in self.members)
        return float(self.config["stag"]) if everybody else 0.0

    def bot_decision(self, participant: str, decisions: Mapping[str, Any], rng: random.Random) -> str | None:
        """A bot hunts stag once another member does, else tries stag now and then."""
        others = [decisions.get(m) for m in self.members if m != participant]
        if any(d == "stag" for d in others):
            return "stag"
        return "stag" if rng.random() < 0.3 else "hare"
