"""The guide's example game (examples/stag_hunt.py) as a pure class: no server, no clock."""

from __future__ import annotations

import random

import pytest

from examples.stag_hunt import StagHunt
from groups import RESULT, ConfigError, InvalidDecision, Timing, load_game

T0 = 1_000_000.0


def test_the_stag_pays_only_when_everybody_hunts_it() -> None:
    game = StagHunt(["a", "b", "c"])
    assert game.payoff("a", {"a": "stag", "b": "stag", "c": "stag"}) == 3.0
    assert game.payoff("a", {"a": "stag", "b": "stag", "c": "hare"}) == 0.0
    assert game.payoff("c", {"a": "stag", "b": "stag", "c": "hare"}) == 1.0


def test_a_period_scores_the_time_average_of_the_flow_payoff() -> None:
    """Both hunt stag for the second half of a 10 s period: (1·5 + 3·5) / 10 = 2 each."""
    game = StagHunt(["a", "b"], timing=Timing(period_length=10))
    game.connect("a", T0)
    game.connect("b", T0)
    game.receive("a", "decisions", "stag", T0 + 5)
    game.receive("b", "decisions", "stag", T0 + 5)
    scores = {next(iter(e.to or ())): e.payload["score"] for e in game.tick(T0 + 10) if e.channel == RESULT}
    assert scores == pytest.approx({"a": 2.0, "b": 2.0})


def test_bad_decisions_and_configs_are_refused_with_the_reason() -> None:
    game = StagHunt(["a", "b"], timing=Timing(period_length=10))
    game.connect("a", T0)
    game.connect("b", T0)
    with pytest.raises(InvalidDecision, match="stag"):
        game.receive("a", "decisions", "deer", T0 + 1)
    with pytest.raises(ConfigError, match=r"config\.stag"):
        StagHunt(["a", "b"], config={"stag": -1})


def test_it_is_found_by_its_import_path_and_its_bots_play_valid_moves() -> None:
    assert load_game("examples.stag_hunt:StagHunt") is StagHunt
    game = StagHunt(["a", "b"])
    rng = random.Random(7)
    for _ in range(100):
        move = game.bot_decision("a", {"a": "hare", "b": rng.choice(["stag", "hare"])}, rng)
        assert game.validate_decision("a", move) in ("stag", "hare")
    assert game.bot_decision("a", {"a": "hare", "b": "stag"}, rng) == "stag"
