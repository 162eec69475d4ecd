"""A decision's path through the core takes shortcuts for its common case (issue 21): each gives
what the general path gives, bit for bit, and leaves the uncommon cases to it."""

from __future__ import annotations

import enum
import math
import random
import struct
from collections.abc import Mapping
from typing import Any

import pytest

from groups import (
    DECISIONS,
    NOBODY,
    DecisionGroup,
    Event,
    GameFault,
    InvalidDecision,
    Timing,
    require_number,
)
from groups.messages import new_event
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


def test_new_event_is_the_event_its_fields_make() -> None:
    made = new_event(Event, (DECISIONS, 2.5, "a", NOBODY, None))
    assert type(made) is Event and made == Event(DECISIONS, 2.5, "a", NOBODY)
    assert (made.channel, made.payload, made.participant, made.to, made.tick) == (DECISIONS, 2.5, "a", NOBODY, None)


class Giving(DecisionGroup):
    """Continuous time; ``payoffs`` gives what the test sets in ``gives`` (a function of the decisions)."""

    name = "giving"

    def __init__(self, gives: Any) -> None:
        super().__init__(["a", "b", "c"], timing=Timing(period_length=10))
        self.gives = gives

    def validate_decision(self, participant: str, decision: Any) -> float:
        return require_number(decision, 0, 10)

    def initial_decision(self, participant: str) -> float:
        return 1.0

    def payoffs(self, decisions: Mapping[str, Any]) -> Any:
        return self.gives(decisions)


def played(gives: Any) -> Giving:
    group = Giving(gives)
    for member in group.members:
        group.connect(member, 0.0)
    group.receive("a", DECISIONS, 3, 1.0)
    group.receive("b", DECISIONS, 4, 2.5)
    group.end(4.0)
    return group


def in_order(decisions: Mapping[str, Any]) -> dict[str, float]:
    return {p: 0.5 * decisions[p] for p in ("a", "b", "c")}


@pytest.mark.parametrize(
    "gives",
    [
        lambda d: {p: 0.5 * d[p] for p in ("c", "a", "b")},  # out of the members' order
        lambda d: {**in_order(d), "zed": 1e300},  # a rate for nobody: dropped
        lambda d: {p: int(d[p]) / 2 if p == "b" else 0.5 * d[p] for p in ("a", "b", "c")},
        lambda d: {p: Amount(0.5 * d[p]) for p in ("a", "b", "c")},  # a float of its own type
    ],
    ids=["out-of-order", "extra-key", "int-rate", "float-subclass"],
)
def test_rates_that_are_not_the_common_case_score_as_the_checked_ones(gives: Any) -> None:
    """Rates the shortcut does not take (keys not the members in order, a value not a float) are
    checked and copied as before: the same integrals, no member that is none."""
    expected, got = played(in_order), played(gives)
    assert list(got.state.flow) == ["a", "b", "c"]
    assert [struct.pack("<d", v) for v in got.state.flow.values()] == [
        struct.pack("<d", v) for v in expected.state.flow.values()
    ]


def test_rates_for_a_stranger_instead_of_a_member_are_a_game_fault() -> None:
    """As many rates as members, one for a non-member: the game's fault, not the shortcut's."""
    with pytest.raises(GameFault, match="expected a payoff for each of"):
        played(lambda d: {"a": 1.0, "b": 1.0, "zed": 1.0})


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, True, None])
def test_a_bad_rate_is_still_refused_where_the_shortcut_looks(bad: Any) -> None:
    with pytest.raises(GameFault, match="a payoff must be a finite number"):
        played(lambda d: {**in_order(d), "b": bad})


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
