"""Blocks: the groups of each block (fixed or random matching) and which block is current."""

from __future__ import annotations

import random

import pytest

from groups import ConfigError, Phase, current_block, plan_groups

W, R, E = Phase.WAITING, Phase.RUNNING, Phase.ENDED


def test_fixed_matching_keeps_the_groups_of_block_zero() -> None:
    """Every block repeats 0-1, 2-3, 4-5."""
    plan = plan_groups(6, 2, 3, "fixed", random.Random(1))
    assert plan == [[[0, 1], [2, 3], [4, 5]]] * 3


@pytest.mark.parametrize("seed", range(10))
def test_random_matching_partitions_everyone_anew_each_block(seed: int) -> None:
    """Each block is a partition of all 12 participants into groups of 3; some block differs from block 0."""
    plan = plan_groups(12, 3, 5, "random", random.Random(seed))
    assert plan[0] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]
    for groups in plan:
        assert sorted(p for g in groups for p in g) == list(range(12))
        assert all(len(g) == 3 for g in groups)
    assert any(groups != plan[0] for groups in plan[1:])


def test_random_matching_is_reproducible_from_its_seed() -> None:
    """The same seed plans the same regrouping."""
    assert plan_groups(8, 2, 4, "random", random.Random(7)) == plan_groups(8, 2, 4, "random", random.Random(7))


def test_a_bad_matching_or_size_is_refused() -> None:
    """An unknown matching and a size that does not divide the participants raise ConfigError."""
    with pytest.raises(ConfigError):
        plan_groups(4, 2, 2, "swiss", random.Random())
    with pytest.raises(ConfigError):
        plan_groups(5, 2, 2, "fixed", random.Random())


@pytest.mark.parametrize(
    ("groups", "now", "expected"),
    [
        ([(W, None), (W, None)], 0.0, 0),  # nothing played yet
        ([(R, None), (W, None)], 0.0, 0),  # playing block 0
        ([(E, 100.0), (W, None)], 102.0, 0),  # block 0 ended 2 s ago: 5 s pause, still there
        ([(E, 100.0), (W, None)], 105.0, 1),  # the pause is over: block 1
        ([(E, 100.0), (R, None), (W, None)], 101.0, 0),  # someone forced block 1 early: still in the pause
        ([(E, 100.0), (E, 200.0)], 201.0, 1),  # the last block ended: stay on it
        ([(E, 100.0), (E, 200.0)], 9999.0, 1),
    ],
)
def test_the_current_block_waits_out_the_pause_after_a_block(
    groups: list[tuple[Phase, float | None]], now: float, expected: int
) -> None:
    """The first group not ended, unless the previous one ended less than `pause` ago."""
    assert current_block(groups, now, pause=5.0) == expected
