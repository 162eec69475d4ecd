"""The bundled games: bimatrix and public_goods (CONTRACT.md section 5)."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from groups import (
    DECISIONS,
    GROUP_DECISIONS,
    MAX_AMOUNT,
    Bimatrix,
    ConfigError,
    InvalidDecision,
    PublicGoods,
    config_integer,
    config_number,
    require_number,
    shown,
)
from groups.bimatrix import PRISONERS_DILEMMA
from groups.registry import available_games

PD = {"AA": [3, 3], "AB": [0, 5], "BA": [5, 0], "BB": [1, 1]}
# every number distinct, so a swapped cell or player cannot go unnoticed
DISTINCT = {"AA": [1, 2], "AB": [3, 4], "BA": [5, 6], "BB": [7, 8.5]}
PURE = {"AA": (1, 1), "AB": (1, 0), "BA": (0, 1), "BB": (0, 0)}


def started(group: Any) -> Any:
    """Connect every member so the period runs, and return the group."""
    for member in group.members:
        group.connect(member, 1.0)
    return group


def config_error(game: type[Any], config: dict[str, Any]) -> ConfigError:
    """The ConfigError ``game.check_config(config)`` raises (as creating an experiment does)."""
    with pytest.raises(ConfigError) as info:
        game.check_config(config)
    return info.value


# ---------------------------------------------------------------------- bimatrix


def test_bimatrix_roles_follow_the_member_order() -> None:
    """The first member is row, the second col."""
    group = Bimatrix(["x", "y"])
    assert (group.role("x"), group.role("y")) == ("row", "col")
    swapped = Bimatrix(["y", "x"])
    assert (swapped.role("y"), swapped.role("x")) == ("row", "col")


def test_bimatrix_default_config_is_the_prisoners_dilemma_starting_at_one_half() -> None:
    """Defaults: the PD table of the contract and an initial decision of 0.5."""
    assert Bimatrix.validate_config({}) == {"payoffs": PD, "initial_decision": 0.5}
    group = Bimatrix(["r", "c"])
    group.connect("r", 1.0)
    start = group.connect("c", 1.0)
    assert start[-1].channel == GROUP_DECISIONS
    assert start[-1].payload == {"r": 0.5, "c": 0.5}


def test_bimatrix_configured_initial_decision_is_used_as_a_float() -> None:
    """initial_decision 1 starts both players at 1.0."""
    group = started(Bimatrix(["r", "c"], config={"initial_decision": 1}))
    assert group.group_decisions == {"r": 1.0, "c": 1.0}
    assert all(isinstance(v, float) for v in group.group_decisions.values())


def test_bimatrix_default_config_does_not_alias_the_module_table() -> None:
    """Mutating a group's payoffs leaves PRISONERS_DILEMMA alone."""
    group = Bimatrix(["r", "c"])
    group.config["payoffs"]["AA"][0] = 99
    assert PRISONERS_DILEMMA == PD


@pytest.mark.parametrize("decision", [0, 1, 0.5, 0.0, 1.0, 0.999])
def test_bimatrix_accepts_weights_in_the_unit_interval(decision: float) -> None:
    """A decision in [0, 1] is stored as a float and broadcast."""
    group = started(Bimatrix(["r", "c"]))
    assert group.validate_decision("r", decision) == float(decision)
    events = group.receive("c", DECISIONS, decision, 2.0)
    assert events[-1].payload == {"r": 0.5, "c": float(decision)}
    assert isinstance(group.group_decisions["c"], float)


@pytest.mark.parametrize(
    "decision", [-0.1, 1.1, "a", "0.5", True, False, None, math.nan, math.inf, [0.5], {"p": 1}]
)
def test_bimatrix_refuses_anything_but_a_number_in_the_unit_interval(decision: Any) -> None:
    """Out-of-range values, strings, booleans, None and NaN raise InvalidDecision."""
    group = started(Bimatrix(["r", "c"]))
    before = group.state.copy()
    with pytest.raises(InvalidDecision, match=r"\[0\.0, 1\.0\]"):
        group.receive("r", DECISIONS, decision, 2.0)
    assert group.state == before


@pytest.mark.parametrize("table", [PD, DISTINCT], ids=["prisoners_dilemma", "distinct"])
@pytest.mark.parametrize("cell", sorted(PURE))
def test_bimatrix_pure_profiles_pay_the_table_cell(
    table: dict[str, list[float]], cell: str
) -> None:
    """Pure A/B profiles pay row the cell's first number and col its second."""
    group = Bimatrix(["r", "c"], config={"payoffs": table})
    p, q = PURE[cell]
    decisions = {"r": float(p), "c": float(q)}
    assert group.payoff("r", decisions) == table[cell][0]
    assert group.payoff("c", decisions) == table[cell][1]


def test_bimatrix_mixed_profile_pays_the_expected_payoff() -> None:
    """p=0.25, q=0.5 in the PD: row 2.625, col 1.375 (computed by hand)."""
    # cell weights: AA 0.125, AB 0.125, BA 0.375, BB 0.375
    # row: 0.125*3 + 0.125*0 + 0.375*5 + 0.375*1 = 2.625
    # col: 0.125*3 + 0.125*5 + 0.375*0 + 0.375*1 = 1.375
    group = started(Bimatrix(["r", "c"]))
    group.receive("r", DECISIONS, 0.25, 2.0)
    group.receive("c", DECISIONS, 0.5, 3.0)
    decisions = group.group_decisions
    assert decisions == {"r": 0.25, "c": 0.5}
    assert group.payoff("r", decisions) == pytest.approx(2.625)
    assert group.payoff("c", decisions) == pytest.approx(1.375)


def test_bimatrix_payoff_depends_on_roles_not_on_names() -> None:
    """Swapping the member order swaps who is row."""
    group = Bimatrix(["y", "x"], config={"payoffs": DISTINCT})
    decisions = {"y": 1.0, "x": 0.0}  # y (row) plays A, x (col) plays B: cell AB
    assert group.payoff("y", decisions) == 3
    assert group.payoff("x", decisions) == 4


def test_bimatrix_accepts_custom_payoffs() -> None:
    """A complete table of numbers replaces the default."""
    assert Bimatrix.validate_config({"payoffs": DISTINCT}) == {
        "payoffs": DISTINCT,
        "initial_decision": 0.5,
    }


@pytest.mark.parametrize(
    ("payoffs", "field"),
    [
        ({"AA": [3, 3], "AB": [0, 5], "BA": [5, 0]}, "config.payoffs"),
        ({**PD, "CC": [0, 0]}, "config.payoffs.CC"),
        ({}, "config.payoffs"),
        ([[3, 3], [0, 5], [5, 0], [1, 1]], "config.payoffs"),
        (None, "config.payoffs"),
        ({**PD, "AB": [0]}, "config.payoffs.AB"),
        ({**PD, "AB": [0, 5, 1]}, "config.payoffs.AB"),
        ({**PD, "BB": 1}, "config.payoffs.BB"),
        ({**PD, "BA": [5, "0"]}, "config.payoffs.BA[1]"),
        ({**PD, "BA": [None, 0]}, "config.payoffs.BA[0]"),
        ({**PD, "AA": [True, 3]}, "config.payoffs.AA[0]"),
    ],
    ids=[
        "missing_cell",
        "extra_cell",
        "empty",
        "not_an_object",
        "null",
        "too_short",
        "too_long",
        "not_a_list",
        "string",
        "none",
        "boolean",
    ],
)
def test_bimatrix_bad_payoffs_raise_config_error_naming_the_field(payoffs: Any, field: str) -> None:
    """A missing cell names config.payoffs, an extra one itself; a bad cell names the cell, a bad payoff its place."""
    error = config_error(Bimatrix, {"payoffs": payoffs})
    assert error.field == field
    assert str(error).startswith(f"{field}: ")


@pytest.mark.parametrize("initial", [-0.5, 1.5, "a", True, None, math.nan])
def test_bimatrix_bad_initial_decision_raises_config_error(initial: Any) -> None:
    """initial_decision outside [0, 1] or not a number is refused."""
    assert config_error(Bimatrix, {"initial_decision": initial}).field == "config.initial_decision"


def test_bimatrix_unknown_setting_raises_config_error_naming_it() -> None:
    """An unknown key names itself and lists the known settings."""
    error = config_error(Bimatrix, {"payoff": PD})
    assert error.field == "config.payoff"
    assert "bimatrix" in error.message
    assert "['initial_decision', 'payoffs']" in error.message


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_bimatrix_refuses_non_finite_payoffs(value: float) -> None:
    """A NaN or infinite payoff would make every score NaN/inf and must be a ConfigError."""
    assert (
        config_error(Bimatrix, {"payoffs": {**PD, "AA": [value, 3]}}).field == "config.payoffs.AA[0]"
    )


@pytest.mark.parametrize("value", [1.7e308, -1.7e308, 1e9 + 1, -1e9 - 1, 10**400])
def test_bimatrix_refuses_a_payoff_beyond_max_amount(value: float) -> None:
    """A payoff of magnitude above 1e9 is refused on its cell: 1.7e308 made every score inf."""
    error = config_error(Bimatrix, {"payoffs": {**PD, "BB": [1, value]}})
    assert error.field == "config.payoffs.BB[1]"
    assert "1e+09" in error.message and len(error.message) < 200


def test_bimatrix_takes_payoffs_of_max_amount() -> None:
    """±1e9 is the largest payoff, and scores of it stay finite."""
    table = {"AA": [MAX_AMOUNT, -MAX_AMOUNT], "AB": [0, 0], "BA": [0, 0], "BB": [-MAX_AMOUNT, MAX_AMOUNT]}
    group = Bimatrix(["r", "c"], config={"payoffs": table})
    assert group.payoff("r", {"r": 1, "c": 1}) == 1e9


def test_bimatrix_payoffs_nested_1000_deep_are_a_config_error_with_a_short_message() -> None:
    """repr() of the nested list raised RecursionError; the message shows its start."""
    deep: Any = []
    for _ in range(1_000):
        deep = [deep]
    for payoffs in (deep, {**PD, "AA": deep}, {**PD, "AA": [deep, 1]}):
        error = config_error(Bimatrix, {"payoffs": payoffs})
        assert error.field.startswith("config.payoffs")
        assert "[[[[" in error.message and len(error.message) < 200


@pytest.mark.parametrize("size", [1, 3])
def test_bimatrix_refuses_groups_other_than_two(size: int) -> None:
    """Only pairs play bimatrix."""
    with pytest.raises(ConfigError) as info:
        Bimatrix([f"p{i}" for i in range(size)])
    assert info.value.field == "group_size"
    assert info.value.message == f"bimatrix is played by exactly 2 members, got {size}"


# ---------------------------------------------------------------------- public goods


def test_public_goods_everyone_is_a_player_starting_at_zero() -> None:
    """Role player, initial contribution 0.0."""
    group = started(PublicGoods(["a", "b", "c"]))
    assert {group.role(m) for m in group.members} == {"player"}
    assert group.group_decisions == {"a": 0.0, "b": 0.0, "c": 0.0}


@pytest.mark.parametrize("contribution", [0, 10, 3.5, 0.0, 10.0])
def test_public_goods_accepts_contributions_within_the_endowment(contribution: float) -> None:
    """Any number in [0, endowment] is stored as a float."""
    group = started(PublicGoods(["a", "b"]))
    events = group.receive("a", DECISIONS, contribution, 2.0)
    assert events[-1].payload == {"a": float(contribution), "b": 0.0}


@pytest.mark.parametrize(
    "contribution", [-1, -0.01, 10.01, 11, "5", True, None, math.nan, math.inf]
)
def test_public_goods_refuses_contributions_outside_the_endowment(contribution: Any) -> None:
    """Negative, above the endowment, non-numbers, booleans and NaN raise InvalidDecision."""
    group = started(PublicGoods(["a", "b"]))
    before = group.state.copy()
    with pytest.raises(InvalidDecision, match=r"\[0\.0, 10\.0\]"):
        group.receive("a", DECISIONS, contribution, 2.0)
    assert group.state == before


def test_public_goods_bound_follows_the_configured_endowment() -> None:
    """With endowment 20, 15 is accepted and 20.5 refused."""
    group = started(PublicGoods(["a", "b"], config={"endowment": 20}))
    assert group.receive("a", DECISIONS, 15, 2.0)[-1].payload == {"a": 15.0, "b": 0.0}
    with pytest.raises(InvalidDecision):
        group.receive("a", DECISIONS, 20.5, 3.0)


def test_public_goods_payoff_of_four_players_matches_the_hand_computation() -> None:
    """endowment - c_i + mpcr * sum(c): 10, 0.4, contributions 0, 2.5, 5, 10."""
    # sum = 17.5, mpcr * sum = 7.0
    # a: 10 - 0 + 7 = 17; b: 10 - 2.5 + 7 = 14.5; c: 10 - 5 + 7 = 12; d: 10 - 10 + 7 = 7
    group = started(PublicGoods(["a", "b", "c", "d"], config={"mpcr": 0.4}))
    for now, (member, contribution) in enumerate(
        [("a", 0), ("b", 2.5), ("c", 5), ("d", 10)], start=2
    ):
        group.receive(member, DECISIONS, contribution, float(now))
    decisions = group.group_decisions
    expected = {"a": 17.0, "b": 14.5, "c": 12.0, "d": 7.0}
    assert {m: group.payoff(m, decisions) for m in group.members} == pytest.approx(expected)


def test_public_goods_payoff_with_the_defaults() -> None:
    """Nobody contributing pays the endowment; everyone contributing pays mpcr * n * endowment."""
    group = PublicGoods(["a", "b", "c"])
    assert group.payoff("a", {"a": 0.0, "b": 0.0, "c": 0.0}) == 10.0
    assert group.payoff("a", {"a": 10.0, "b": 10.0, "c": 10.0}) == pytest.approx(15.0)


def test_public_goods_config_defaults_and_custom_values() -> None:
    """Defaults endowment 10 and mpcr 0.5; custom values are kept."""
    assert PublicGoods.validate_config({}) == {"endowment": 10, "mpcr": 0.5}
    assert PublicGoods.validate_config({"endowment": 5.5, "mpcr": 0}) == {
        "endowment": 5.5,
        "mpcr": 0,
    }


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"endowment": 0}, "config.endowment"),
        ({"endowment": -1}, "config.endowment"),
        ({"endowment": "10"}, "config.endowment"),
        ({"endowment": True}, "config.endowment"),
        ({"endowment": None}, "config.endowment"),
        ({"mpcr": -0.1}, "config.mpcr"),
        ({"mpcr": "x"}, "config.mpcr"),
        ({"mpcr": False}, "config.mpcr"),
        ({"endowment": 1e308}, "config.endowment"),
        ({"endowment": 1e9 + 1}, "config.endowment"),
        ({"mpcr": 1e308}, "config.mpcr"),
        ({"mpcr": 1000.001}, "config.mpcr"),
        ({"budget": 10}, "config.budget"),
    ],
)
def test_public_goods_bad_config_raises_config_error_naming_the_field(
    config: dict[str, Any], field: str
) -> None:
    """Each bad value or unknown key is a ConfigError on its field."""
    assert config_error(PublicGoods, config).field == field


@pytest.mark.parametrize(
    "config",
    [{"endowment": math.nan}, {"endowment": math.inf}, {"mpcr": math.nan}, {"mpcr": math.inf}],
)
def test_public_goods_refuses_non_finite_settings(config: dict[str, Any]) -> None:
    """NaN/inf endowment or mpcr must be a ConfigError (NaN endowment refuses every decision)."""
    config_error(PublicGoods, config)


@pytest.mark.parametrize("size", [2, 4, 50])
def test_public_goods_takes_any_group_of_two_or_more(size: int) -> None:
    """Two players or more, no upper bound."""
    assert len(PublicGoods([f"p{i}" for i in range(size)]).members) == size


def test_public_goods_refuses_a_single_player() -> None:
    """One player is not a public goods game."""
    with pytest.raises(ConfigError) as info:
        PublicGoods(["solo"])
    assert info.value.field == "group_size"
    assert info.value.message.endswith("got 1")


# ---------------------------------------------------------------------- every game's payoffs


@pytest.mark.parametrize("name", sorted(available_games()))
def test_payoffs_at_once_are_exactly_each_members_payoff(name: str) -> None:
    """``payoffs`` (what the flow integral uses) gives, bit for bit, ``payoff`` of each member
    (what ``verify`` recomputes scores with), whatever the decisions, for every bundled game."""
    game = available_games()[name]
    rng = random.Random(name)
    for size in (2, 3, 4, 7):
        low, high = game.group_sizes
        if size < low or (high is not None and size > high):
            continue
        group = started(game([f"m{i}" for i in range(size)]))
        for _ in range(300):
            decisions = {}
            for member in group.members:
                decision = group.bot_decision(member, group.group_decisions, rng)
                decisions[member] = group.initial_decision(member) if decision is None else group.validate_decision(member, decision)
            expected = {m: float(group.payoff(m, decisions)) for m in group.members}
            got = group.payoffs(decisions)
            assert got == expected and list(got) == list(group.members)


def test_public_goods_takes_an_endowment_of_max_amount_and_an_mpcr_of_1000() -> None:
    """The largest endowment and mpcr are taken, and the payoff of a full group stays finite."""
    config = {"endowment": MAX_AMOUNT, "mpcr": 1000}
    assert PublicGoods.validate_config(config) == config
    group = PublicGoods([str(n) for n in range(100)], config=config)
    payoff = group.payoff("0", {str(n): MAX_AMOUNT for n in range(100)})
    assert math.isfinite(payoff) and payoff == 1000 * 100 * MAX_AMOUNT


def nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    "value",
    [nested(1_000), {"a": nested(1_000)}, "x" * 10_000, list(range(10_000)), 10**5000, 0.5, None, "decisions"],
    ids=["nested-list", "nested-in-dict", "long-string", "long-list", "huge-int", "float", "none", "string"],
)
def test_shown_is_short_and_never_raises(value: Any) -> None:
    """shown() of anything a client can send is at most 80 characters (repr() raised on the nested ones)."""
    text = shown(value)
    assert 0 < len(text) <= 80
    if value in (0.5, None, "decisions"):
        assert text == repr(value)


def test_shown_survives_a_value_whose_repr_fails() -> None:
    """A game's own value whose __repr__ raises is shown by its type."""

    class Broken:
        def __repr__(self) -> str:
            raise ValueError("no")

    assert shown(Broken()).startswith("<Broken")


def test_require_number_refuses_a_nested_decision_with_a_short_message() -> None:
    """A decision nested 1,000 deep is InvalidDecision (it raised RecursionError, which the server logged)."""
    with pytest.raises(InvalidDecision) as info:
        require_number(nested(1_000), 0, 1)
    assert len(info.value.message) < 200


@pytest.mark.parametrize(
    ("value", "low", "above_low", "accepted"),
    [
        (MAX_AMOUNT, -MAX_AMOUNT, False, True),
        (-MAX_AMOUNT, -MAX_AMOUNT, False, True),
        (MAX_AMOUNT * 1.0000001, -MAX_AMOUNT, False, False),
        (0, 0, False, True),
        (0, 0, True, False),
        (1e-9, 0, True, True),
        (math.inf, -MAX_AMOUNT, False, False),
        (math.nan, -MAX_AMOUNT, False, False),
        (True, -MAX_AMOUNT, False, False),
        ("1", -MAX_AMOUNT, False, False),
    ],
)
def test_config_number_bounds(value: Any, low: float, above_low: bool, accepted: bool) -> None:
    """config_number takes a finite number in [low, MAX_AMOUNT] ((low, ...] with above_low), else names the field."""
    if accepted:
        assert config_number(value, "config.x", low, above_low=above_low) == float(value)
    else:
        with pytest.raises(ConfigError) as info:
            config_number(value, "config.x", low, above_low=above_low)
        assert info.value.field == "config.x"


@pytest.mark.parametrize(
    ("value", "accepted"),
    [(1, True), (7, True), (4, True), (0, False), (8, False), (3.0, False), (True, False), ("3", False), (None, False)],
)
def test_config_integer_takes_an_int_in_its_bounds_and_names_the_field(value: Any, accepted: bool) -> None:
    """config_integer takes an int in [low, high]; 3.0 and true (which == 1) are refused, naming the field."""
    if accepted:
        assert config_integer(value, "config.start", 1, 7) == value
    else:
        with pytest.raises(ConfigError) as info:
            config_integer(value, "config.start", 1, 7)
        assert info.value.field == "config.start"
        assert "expected an integer from 1 to 7" in str(info.value)
