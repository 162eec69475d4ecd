"""Games of the cluster tests, which the workers import by their path: this module imports little,
as a worker's event loop waits for the import (a slow one makes it busy, and it places the group
on another worker, see ``server.cluster.placement``)."""

from __future__ import annotations

from typing import Any

from groups import PublicGoods


class FailsOnSeven(PublicGoods):
    """public_goods whose check of a decision raises on 7, and whose payoff raises once somebody
    contributes 3 (at the next accrual: a pause, say)."""

    def validate_decision(self, participant: str, decision: Any) -> Any:
        if decision == 7:
            raise RuntimeError("seven on purpose")
        return super().validate_decision(participant, decision)

    def payoffs(self, decisions: Any) -> dict[str, float]:
        if 3 in decisions.values():
            raise ZeroDivisionError("three on purpose")
        return super().payoffs(decisions)
