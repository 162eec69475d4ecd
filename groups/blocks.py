"""Blocks: who plays with whom in each block, and which block a participant is in now."""

from __future__ import annotations

import random
from collections.abc import Sequence

from .exceptions import ConfigError
from .state import Phase

FIXED = "fixed"
RANDOM = "random"
MATCHINGS = (FIXED, RANDOM)


def plan_groups(
    participants: int, group_size: int, blocks: int, matching: str, rng: random.Random
) -> list[list[list[int]]]:
    """The groups of every block, as participant indexes in member order.

    Block 0 groups participants in order (0..size-1, size..2·size-1, …). Later blocks keep
    those groups (``fixed``) or shuffle everyone into new groups (``random``), using ``rng``.
    """
    if matching not in MATCHINGS:
        raise ConfigError("matching", f"expected one of {list(MATCHINGS)}, got {matching!r}")
    if group_size < 1 or participants % group_size:
        raise ConfigError("participants", f"expected a multiple of group_size {group_size}, got {participants}")
    order = list(range(participants))
    plan = []
    for index in range(blocks):
        if index > 0 and matching == RANDOM:
            rng.shuffle(order)
        plan.append([order[g : g + group_size] for g in range(0, participants, group_size)])
    return plan


def current_block(groups: Sequence[tuple[Phase, float | None]], now: float, pause: float) -> int:
    """Which of a participant's groups (one per block, in order: ``(phase, ended_at)``) is current.

    The first group not ended, except during the ``pause`` seconds after the previous one
    ended: then the participant is still in that one (seeing its results). After the last
    block, the last group.
    """
    if not groups:
        raise ValueError("a participant has at least one group")
    for index, (phase, _) in enumerate(groups):
        if phase is not Phase.ENDED:
            if index > 0:
                ended_at = groups[index - 1][1]
                if ended_at is not None and now < ended_at + pause:
                    return index - 1
            return index
    return len(groups) - 1
