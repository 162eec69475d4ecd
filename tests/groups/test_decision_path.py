"""A decision's path through the core takes shortcuts for its common case (issue 21): each gives
what the general path gives, bit for bit, and leaves the uncommon cases to it."""

from __future__ import annotations

import enum
import math
import random
import struct
from typing import Any

import pytest

from groups import InvalidDecision, require_number
from groups.public_goods import PublicGoods
from groups.values import is_number, shown


def reference_require_number(decision: Any, low: float, high: float) -> float:
    """``require_number`` as it was before its shortcut."""
    if not is_number(decision):
        raise InvalidDecision(f"expected a number in [{low}, {high}], got {shown(decision)}")
    value = float(decision)
    if not low <= value <= high:
        raise InvalidDecision(f"expected a number in [{low}, {high}], got {shown(decision)}")
    return value


class Level(enum.IntEnum):
    HIGH = 7


class Amount(float):
    pass


DECISION_VALUES = [
    0, 5, 10, 11, -1, 5.5, 0.0, -0.0, 10.0, 10.000001, True, False, 2**53 + 1, 2**1023, 2**1024 - 1, 10**400,
    -(10**400), math.inf, -math.inf, math.nan, Level.HIGH, Amount(2.5), "5", None, [5], {"n": 5},
]


@pytest.mark.parametrize(("low", "high"), [(0, 10), (0.0, math.inf), (-math.inf, math.inf), (-1e308, 1e308)])
@pytest.mark.parametrize("decision", DECISION_VALUES, ids=repr)
def test_require_number_gives_what_it_gave(decision: Any, low: float, high: float) -> None:
    """The same float of the same type, or the same refusal, for every kind of value and bound."""
    try:
        expected: Any = reference_require_number(decision, low, high)
    except InvalidDecision as exc:
        with pytest.raises(InvalidDecision) as got:
            require_number(decision, low, high)
        assert str(got.value) == str(exc)
    else:
        value = require_number(decision, low, high)
        assert type(value) is float and struct.pack("<d", value) == struct.pack("<d", expected)


def test_public_goods_payoffs_are_its_payoff_bit_for_bit() -> None:
    """``payoffs`` (every decision's) and ``payoff`` (verify's, the page's) give the same floats."""
    rng = random.Random(21)
    for size in (2, 4, 7):
        members = [f"m{i}" for i in range(size)]
        group = PublicGoods(members, config={"endowment": rng.choice([100, 7.3, 1e9]), "mpcr": rng.random()})
        for _ in range(200):
            decisions = {m: rng.choice([0, 1, rng.random() * 100, rng.uniform(0, 1e9)]) for m in members}
            rates = group.payoffs(decisions)
            assert list(rates) == members
            for m in members:
                assert struct.pack("<d", rates[m]) == struct.pack("<d", group.payoff(m, decisions))
