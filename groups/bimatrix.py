"""A 2x2 game in continuous or discrete time, after the LEEPS lab's experiments.

The first member is ``row``, the second ``col``. A decision is the weight on action A in
``[0, 1]``; the flow payoff is the expected payoff of the mixed profile.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from .exceptions import ConfigError
from .group import DecisionGroup, is_number, require_number

PRISONERS_DILEMMA = {"AA": [3, 3], "AB": [0, 5], "BA": [5, 0], "BB": [1, 1]}
_CELLS = ("AA", "AB", "BA", "BB")


class Bimatrix(DecisionGroup):
    """Two players, a 2x2 game (default: the prisoner's dilemma, A = cooperate).

    The first member is row, the second col. A decision is the weight on action A, from 0 (pure
    B) to 1 (pure A); the flow payoff is the expected payoff of the mixed profile.
    """

    name = "bimatrix"
    group_sizes = (2, 2)
    config_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "payoffs": {
                "type": "object",
                "description": "cell -> [row payoff, col payoff]; A is the first action",
                "properties": {
                    cell: {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2}
                    for cell in _CELLS
                },
                "required": list(_CELLS),
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
        merged = super().validate_config(config)
        payoffs = merged["payoffs"]
        if not isinstance(payoffs, dict) or set(payoffs) != set(_CELLS):
            raise ConfigError("config.payoffs", f"expected an object with keys {list(_CELLS)}, got {payoffs!r}")
        for cell in _CELLS:
            pair = payoffs[cell]
            if (
                not isinstance(pair, list)
                or len(pair) != 2
                or not all(is_number(x) for x in pair)
            ):
                raise ConfigError(f"config.payoffs.{cell}", f"expected [row, col] numbers, got {pair!r}")
        initial = merged["initial_decision"]
        try:
            require_number(initial, 0, 1)
        except Exception as exc:
            raise ConfigError("config.initial_decision", f"expected a number in [0, 1], got {initial!r}") from exc
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
