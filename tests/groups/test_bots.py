"""The bots' strategies (``bot_decision``) and their helpers: valid, bounded, reproducible."""

from __future__ import annotations

import random
from typing import Any

import pytest

from groups import Bimatrix, DecisionGroup, PublicGoods
from groups.bots import clamp, current, toward, walk

PD = {"AA": [3, 3], "AB": [0, 5], "BA": [5, 0], "BB": [1, 1]}
#: a stag hunt: A pays 4 when the partner plays A, B pays 1 for sure; A is best above a weight of 1/4
STAG = {"AA": [4, 4], "AB": [0, 1], "BA": [1, 0], "BB": [1, 1]}


def play(game: DecisionGroup, rng: random.Random, steps: int) -> list[dict[str, Any]]:
    """Every member decides ``steps`` times in turn, each seeing the others' latest decisions."""
    decisions = {m: game.initial_decision(m) for m in game.members}
    history = []
    for _ in range(steps):
        for member in game.members:
            value = game.bot_decision(member, decisions, rng)
            assert value is not None
            assert game.validate_decision(member, value) == value  # always a decision the game takes
            decisions[member] = value
        history.append(dict(decisions))
    return history


@pytest.mark.parametrize("seed", range(5))
def test_walk_stays_within_its_bounds_and_moves_at_most_a_step(seed: int) -> None:
    rng = random.Random(seed)
    value = 0.0
    for _ in range(2000):
        moved = walk(rng, value, 0.0, 2.0, 0.7)
        assert 0.0 <= moved <= 2.0
        assert abs(moved - value) <= 0.7 + 1e-12
        value = moved
    assert walk(random.Random(1), 5.0, 5.0, 5.0, 1.0) == 5.0  # an empty range holds the value


def test_helpers() -> None:
    assert clamp(3.0, 0.0, 1.0) == 1.0 and clamp(-1.0, 0.0, 1.0) == 0.0 and clamp(float("nan"), 0.0, 1.0) == 0.0
    assert toward(0.0, 10.0, 0.5) == 5.0 and toward(4.0, 4.0, 0.5) == 4.0
    assert current({"a": 2}, "a", 0.0) == 2.0
    assert current({"a": None, "b": True, "c": "x"}, "a", 1.5) == 1.5
    assert current({"b": True}, "b", 1.5) == 1.5 and current({}, "z", 0.25) == 0.25


def test_a_game_without_a_strategy_holds_still() -> None:
    class Plain(DecisionGroup):
        name = "plain"

    assert Plain(["a", "b"]).bot_decision("a", {"a": 1, "b": 2}, random.Random(0)) is None


@pytest.mark.parametrize("config", [{}, {"payoffs": STAG, "initial_decision": 0.9}, {"payoffs": PD}])
def test_bimatrix_bots_always_send_a_valid_weight(config: dict[str, Any]) -> None:
    game = Bimatrix(["row", "col"], config=config)
    for seed in range(10):
        for step in play(game, random.Random(seed), 60):
            assert all(0.0 <= v <= 1.0 for v in step.values())


def test_bimatrix_bots_best_respond() -> None:
    """PD: B is dominant, so the bots drift to defection; stag hunt: they follow the partner."""
    pd = Bimatrix(["row", "col"], config={"payoffs": PD})
    assert pd.best_response("row", 1.0) == 0.0 and pd.best_response("col", 0.0) == 0.0
    late = play(pd, random.Random(3), 80)[-20:]
    assert sum(s["row"] + s["col"] for s in late) / 40 < 0.3

    stag = Bimatrix(["row", "col"], config={"payoffs": STAG})
    assert stag.best_response("row", 1.0) == 1.0 and stag.best_response("row", 0.0) == 0.0
    assert stag.best_response("col", 0.25) is None  # 0.25·4 = 1 = the sure 1 of B: a tie
    high = play(Bimatrix(["row", "col"], config={"payoffs": STAG, "initial_decision": 0.95}), random.Random(4), 80)
    assert sum(s["row"] + s["col"] for s in high[-20:]) / 40 > 0.7

    class NoNoise(Bimatrix):
        bot_explore = 0.0

    exact = NoNoise(["row", "col"], config={"payoffs": PD})
    assert exact.bot_decision("row", {"row": 0.8, "col": 0.5}, random.Random(0)) == 0.4  # half way to 0


@pytest.mark.parametrize("config", [{}, {"endowment": 20, "mpcr": 0.4}, {"endowment": 0.5}])
def test_public_goods_bots_contribute_within_the_endowment(config: dict[str, Any]) -> None:
    game = PublicGoods(["a", "b", "c", "d"], config=config)
    endowment = float(game.config["endowment"])
    for seed in range(10):
        history = play(game, random.Random(seed), 60)
        assert all(0.0 <= v <= endowment for step in history for v in step.values())
        assert any(v > 0 for step in history for v in step.values())  # the noise moves them off 0


def test_public_goods_bots_follow_the_others() -> None:
    """Conditional cooperation: against generous others a bot gives more than against stingy ones."""
    game = PublicGoods(["a", "b", "c"], config={"endowment": 10})
    generous = [game.bot_decision("a", {"a": 5.0, "b": 10.0, "c": 10.0}, random.Random(s)) for s in range(200)]
    stingy = [game.bot_decision("a", {"a": 5.0, "b": 0.0, "c": 0.0}, random.Random(s)) for s in range(200)]
    assert sum(generous) / 200 > 7.0 > 3.0 > sum(stingy) / 200
    assert all(abs(v - 7.5) <= 1.5 + 0.01 for v in generous)  # half way, then at most 15% of 10


@pytest.mark.parametrize(
    "game", [Bimatrix(["row", "col"]), PublicGoods(["a", "b", "c"])], ids=["bimatrix", "public_goods"]
)
def test_a_seed_gives_the_same_decisions(game: DecisionGroup) -> None:
    first = play(game, random.Random(42), 30)
    assert play(game, random.Random(42), 30) == first
    assert play(game, random.Random(43), 30) != first
