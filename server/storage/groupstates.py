"""The groups' rows of a batch: each group's state after its last write, one row per group.

The writer (:func:`.batch.commit_writes`) stores them with the batch's other rows. The journal's
apply (:mod:`.applying`) holds them back instead (:class:`HeldStates`) over its transaction,
which stays open a second over a hundred applies, and writes each group's last state once,
before the commit: a group in play has a write at every action, and a row per group an apply
was written some twenty times a second, each time with its state's three JSON texts, for the
one that the commit keeps. A read sees only what is committed, so it sees the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine

from .statements import BatchStatements, SeqStatements, batch_statements
from .writes import GroupUpdate, Write

#: group id → its latest state and the ``seq`` of its last event (``None``: none stored with it)
Latest = dict[int, tuple[GroupUpdate, int | None]]


def latest_states(writes: Sequence[Write], seqs: Sequence[list[int]], into: Latest | None = None) -> Latest:
    """Each group's state after its last write in ``writes`` (``seqs``: each write's events'
    numbers), added to ``into`` (the states before them, which they replace)."""
    latest: Latest = {} if into is None else into
    for write, numbers in zip(writes, seqs, strict=True):
        if write.group is not None:
            last = numbers[-1] if numbers else None
            previous = latest.get(write.group.group_id)
            if last is None and previous is not None:
                last = previous[1]
            latest[write.group.group_id] = (write.group, last)
    return latest


def store_states(cursor: Any, sql: BatchStatements, by: SeqStatements, latest: Latest) -> None:
    """The groups' rows of ``latest``, one statement's ``executemany``."""
    if not latest:
        return
    time = sql.time
    known = time.known  # looked up here, the call only on a miss (see StoredTimes)
    texts = iter(sql.json_texts([value for g, _ in latest.values() for value in (g.decisions, g.vars, g.clock)]))
    by.group.run(cursor, [
        (
            g.phase,
            known.get(g.started_at) or time(g.started_at),
            known.get(g.ends_at) or time(g.ends_at),
            None if g.ended_at is None else known.get(g.ended_at) or time(g.ended_at),  # (None: no call)
            g.subperiod,
            next(texts),
            next(texts),
            next(texts),
            last,
            g.group_id,
        )
        for g, last in latest.values()
    ])


class HeldStates:
    """The groups' states an apply's open transaction holds back, written once before its commit
    (see the module's docstring). Used by whoever holds the apply's connection."""

    __slots__ = ("latest",)

    def __init__(self) -> None:
        self.latest: Latest = {}

    def hold(self, writes: Sequence[Write], seqs: Sequence[list[int]]) -> None:
        latest_states(writes, seqs, self.latest)

    def store(self, cursor: Any, engine: Engine) -> None:
        """Write the states held, in the transaction ``cursor`` (on ``engine``) is in; none held after.

        Let go first: if the statement fails the transaction is lost, and the states with it
        (what it held is applied again, and holds them again)."""
        latest, self.latest = self.latest, {}
        if latest:
            sql = batch_statements(engine)
            store_states(cursor, sql, sql.numbered, latest)

    def clear(self) -> None:
        """The transaction lost: its states with it."""
        self.latest = {}
