"""A participant's session in a block, with MUSCLE's helpers, for Python code beside the server.

Every method reads or writes the database, synchronously: call them from a thread (e.g.
``await runtime.database.read(lambda engine: SessionRecord.load(engine, code, 0).rank())``),
never on the event loop::

    record = SessionRecord.load(engine, participant_code, block=0)
    record.total_score()           # bonus_points + the sum of its results' scores
    record.rank()                  # 1 for the best final_score of the block (ties share a rank)
    record.percentile_rank(exclude_unfinished=True)
    record.last_result()           # the latest result, or None
    record.save_json_data({"survey": {...}})   # merged into json_data
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine

from .storage import (
    block_final_scores,
    find_session,
    merge_session_json,
    score_sum,
    session_results,
)


@dataclass
class SessionRecord:
    """One participant in one block: ``started_at``, ``finished_at``, ``json_data``, ``final_score``
    (``nan`` past a float's range, stored NULL: ranked below every number, as the participants are)."""

    engine: Engine = field(repr=False)
    id: int
    participant: str
    block: int
    block_id: int
    group: int
    started_at: str | None
    finished_at: str | None
    final_score: float
    bonus_points: float
    json_data: dict[str, Any]

    @classmethod
    def load(cls, engine: Engine, participant: str, block: int) -> SessionRecord | None:
        """The session of ``participant`` (its code) in block ``block`` (its index), or ``None``."""
        row = find_session(engine, participant, block)
        return None if row is None else cls(engine=engine, **row)

    @property
    def finished(self) -> bool:
        return self.finished_at is not None

    def results(self) -> list[dict[str, Any]]:
        """Its results in the order they were scored: ``seq, subperiod, decision, score``."""
        return session_results(self.engine, self.id)

    def total_score(self) -> float:
        """``bonus_points`` plus the sum of its results' scores (``final_score`` once its period
        ended): ``nan`` past a float's range, as that is stored."""
        total = score_sum([self.bonus_points, *(float(r["score"]) for r in self.results())])
        return total if math.isfinite(total) else math.nan

    def rank(self) -> int:
        """1 + how many distinct final scores of the block are higher (MUSCLE's dense rank)."""
        mine = _ranked(self.final_score)
        higher = {_ranked(s) for s in block_final_scores(self.engine, self.block_id, False) if _ranked(s) > mine}
        return len(higher) + 1

    def percentile_rank(self, exclude_unfinished: bool) -> float:
        """The percentage of the block's sessions scoring below it, ties counted half (0 for none).

        ``exclude_unfinished``: compared with the sessions its participants finished themselves
        only, as the participants list compares participants: not the unfinished ones, nor those
        whose seat a bot held when the block's period ended (a lobby's fill, a dropout's that it
        played on, as the group's log records it), whatever the participant's status now.
        """
        scores = block_final_scores(self.engine, self.block_id, exclude_unfinished)
        if not scores:
            return 0.0
        mine = _ranked(self.final_score)
        lower_or_equal = sum(_ranked(s) <= mine for s in scores)
        equal = sum(_ranked(s) == mine for s in scores)
        return 100.0 * (lower_or_equal - 0.5 * equal) / len(scores)

    def last_result(self) -> dict[str, Any] | None:
        """Its latest result, or ``None`` before the first."""
        results = self.results()
        return results[-1] if results else None

    def save_json_data(self, data: dict[str, Any]) -> None:
        """Merge ``data`` into ``json_data`` (its keys overwrite) and store it."""
        self.json_data = merge_session_json(self.engine, self.id, data)


def _ranked(score: float) -> float:
    """A final score as ranks compare it: ``nan`` (past a float's range) below every number."""
    return -math.inf if math.isnan(score) else score
