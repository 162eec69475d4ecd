"""The guide's second example (examples/min_effort.py), and the decision helpers it is written with."""

from __future__ import annotations

import pytest

from examples.min_effort import MinEffort
from groups import (
    RESULT,
    ConfigError,
    InvalidDecision,
    Timing,
    load_game,
    rehearse,
    require_choice,
    require_integer,
)

T0 = 1_000_000.0


def test_the_group_earns_by_its_lowest_effort_and_each_pays_for_their_own() -> None:
    game = MinEffort(["a", "b", "c"], config={"a": 2, "b": 1})
    assert game.payoff("a", {"a": 7, "b": 7, "c": 7}) == 7.0
    assert game.payoff("a", {"a": 7, "b": 3, "c": 5}) == -1.0
    assert game.payoff("b", {"a": 7, "b": 3, "c": 5}) == 3.0


def test_a_period_scores_the_time_average_of_the_flow_payoff() -> None:
    """Both at 7 for 4 s (7 a second each), then b at 1 for 6 s: a earns 2-7, b 2-1."""
    game = MinEffort(["a", "b"], timing=Timing(period_length=10))
    game.connect("a", T0)
    game.connect("b", T0)
    game.receive("b", "decisions", 1, T0 + 4)
    scores = {next(iter(e.to or ())): e.payload["score"] for e in game.tick(T0 + 10) if e.channel == RESULT}
    assert scores == pytest.approx({"a": (7 * 4 - 5 * 6) / 10, "b": (7 * 4 + 1 * 6) / 10})


@pytest.mark.parametrize("decision", [True, False, 3.0, 3.5, 0, 8, "3", None, [3]])
def test_an_effort_is_a_whole_number_from_1_to_7_and_nothing_else(decision: object) -> None:
    """`decision in range(1, 8)`, the obvious check, took `true` for effort 1 and 3.0 for 3."""
    game = MinEffort(["a", "b"], timing=Timing(period_length=10))
    game.connect("a", T0)
    game.connect("b", T0)
    with pytest.raises(InvalidDecision, match="expected an integer from 1 to 7"):
        game.receive("a", "decisions", decision, T0 + 1)
    assert game.group_decisions == {"a": 7, "b": 7}


def test_require_choice_compares_types_too() -> None:
    assert require_choice("stag", ("stag", "hare")) == "stag"
    assert require_choice(2, (1, 2)) == 2
    for refused in (True, 1.0, "1", None):
        with pytest.raises(InvalidDecision, match=r"expected one of \[1, 2\]"):
            require_choice(refused, (1, 2))
    assert require_integer(7, 1, 7) == 7


def test_it_is_found_by_its_import_path_refuses_a_bad_config_and_rehearses_with_its_bots() -> None:
    assert load_game("examples.min_effort:MinEffort") is MinEffort
    with pytest.raises(ConfigError, match=r"config\.b"):
        MinEffort.check_config({"b": -1})
    played = rehearse(MinEffort, ["a", "b", "c", "d"], period_length=60, seed=11)
    assert {decision for _, _, decision in played.moves} <= set(range(1, 8))
    assert len(played.moves) > 100
