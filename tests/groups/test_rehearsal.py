"""groups.rehearse: a game's period played by its own bots, with no server and no clock."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import pytest

from examples.min_effort import MinEffort
from examples.stag_hunt import StagHunt
from groups import (
    Bimatrix,
    ConfigError,
    DecisionGroup,
    GameFault,
    InvalidDecision,
    PublicGoods,
    rehearse,
)


def test_a_rehearsal_plays_the_period_to_its_end_and_scores_the_bots_moves() -> None:
    """Each score is the time average of the flow payoff, recomputed here from the moves made."""
    played = rehearse(MinEffort, ["a", "b", "c"], period_length=20, seed=5, config={"a": 3, "b": 1})
    assert played.group.phase.value == "ended"
    assert len(played.moves) > 20  # about one a second each
    decisions = {m: 7 for m in "abc"}
    integral = dict.fromkeys("abc", 0.0)
    since = 0.0
    for at, member, decision in [*played.moves, (20.0, None, None)]:
        for m in "abc":
            integral[m] += (3 * min(decisions.values()) - decisions[m]) * (at - since)
        since = at
        if member is not None:
            decisions[member] = decision
    assert played.scores == pytest.approx({m: integral[m] / 20 for m in "abc"})


def test_a_rehearsal_with_subperiods_makes_a_result_for_each() -> None:
    played = rehearse(StagHunt, ["a", "b"], period_length=10, num_subperiods=5, seed=1)
    results = [e for e in played.events if e.channel == "result"]
    assert sorted(e.payload["subperiod"] for e in results) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]


def test_a_seed_gives_the_same_moves_and_another_seed_others() -> None:
    first = rehearse(Bimatrix, period_length=15, seed=3)
    assert rehearse(Bimatrix, period_length=15, seed=3).moves == first.moves
    assert rehearse(Bimatrix, period_length=15, seed=4).moves != first.moves


@pytest.mark.parametrize("game", [Bimatrix, PublicGoods, StagHunt, MinEffort])
def test_every_bundled_and_example_game_rehearses_cleanly(game: type[DecisionGroup]) -> None:
    played = rehearse(game, ["a", "b", "c"] if game.group_sizes[1] != 2 else ["a", "b"], period_length=30, seed=2)
    assert played.moves and all(s == s for s in played.scores.values())


class Picky(DecisionGroup):
    """Its bots play what its own validate_decision refuses: a whole number as a float."""

    def validate_decision(self, participant: str, decision: Any) -> Any:
        if decision not in (1, 2):
            raise InvalidDecision(f"expected 1 or 2, got {decision!r}")
        return decision

    def bot_decision(self, participant: str, decisions: Mapping[str, Any], rng: random.Random) -> Any:
        return 3


def test_a_bot_move_the_game_refuses_fails_the_rehearsal_naming_bot_decision() -> None:
    with pytest.raises(InvalidDecision, match="expected 1 or 2") as info:
        rehearse(Picky, period_length=10)
    assert any("Picky.bot_decision for p" in note and "which gave 3" in note for note in info.value.__notes__)


class SharedTerm(DecisionGroup):
    """Its payoffs at once differ from payoff by a rounding: verify would report every score."""

    def initial_decision(self, participant: str) -> float:
        return 0.1

    def bot_decision(self, participant: str, decisions: Mapping[str, Any], rng: random.Random) -> Any:
        return rng.random()

    def payoff(self, participant: str, decisions: Mapping[str, Any]) -> float:
        return sum(decisions[m] for m in self.members) - decisions[participant]

    def payoffs(self, decisions: Mapping[str, Any]) -> dict[str, float]:
        total = round(sum(decisions.values()), 3)
        return {p: total - decisions[p] for p in self.members}


def test_payoffs_that_are_not_exactly_payoff_fail_the_rehearsal() -> None:
    with pytest.raises(GameFault, match=r"SharedTerm\.payoffs gave .* where payoff gives"):
        rehearse(SharedTerm, period_length=10)


class KeepsASet(DecisionGroup):
    """It keeps a set in the group's vars, which the server cannot store."""

    def when_all_players_ready(self) -> None:
        self.state.vars["seen"] = set(self.members)


def test_a_value_the_server_could_not_store_fails_the_rehearsal() -> None:
    with pytest.raises(GameFault, match=r"the group's vars .* is no JSON"):
        rehearse(KeepsASet, period_length=10)


def test_a_config_is_checked_as_creating_an_experiment_checks_it() -> None:
    with pytest.raises(ConfigError) as info:
        rehearse(MinEffort, config={"a": "lots"})
    assert info.value.field == "config.a"
    with pytest.raises(ConfigError, match="rate"):
        rehearse(MinEffort, rate=0)
