"""Writes the database cannot take, refused alone: a batch that failed on one of them is stored
without it (and without what its group computed on top of it).

A game's value that is no JSON (a ``set`` in its vars, an object or bytes in a payload, a dict
with keys that are not strings, an integer past 64 bits) fails the encoding of the whole batch,
with the journal and without; a channel name past the ``events.channel`` column fails its commit
on PostgreSQL (the core refuses one first, :meth:`groups.DecisionGroup.send`; this is the last guard). Nothing is looked for while batches go through: only once a commit
has failed is each write encoded alone (:func:`refusals`), and the batch committed again without
the ones that cannot be, and without the later writes of their groups, which rest on them
(:func:`storing_apart`). :class:`PartlyStored` tells the writer which writes were left out
(:meth:`.writer.EventWriter._done`), which then also withdraws what those groups have queued.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from groups.messages import channel_problem

from .writes import Write

#: the times a database's ``datetime`` holds (years 1 to 9999), a day inside either end for any zone
_EARLIEST = datetime(1, 1, 2, tzinfo=UTC).timestamp()
_LATEST = datetime(9999, 12, 30, tzinfo=UTC).timestamp()


class PartlyStored(Exception):
    """A batch was stored without some of its writes: ``refused`` maps each one's place in the batch
    to why it cannot be stored, or to ``None`` when it came after one of its group's that cannot."""

    def __init__(self, refused: dict[int, str | None]) -> None:
        super().__init__(f"{len(refused)} writes of the batch refused, the others stored")
        self.refused = refused


def storing_apart(commit: Callable[[list[Write]], None]) -> Callable[[list[Write]], None]:
    """``commit``, which on a failure commits the batch again without the writes that cannot be
    stored and then raises :class:`PartlyStored`; when every write can be, or the second commit
    fails too (the database away), the failure is raised as it came."""

    def committing(writes: list[Write]) -> None:
        try:
            commit(writes)
        except Exception as exc:
            refused = refusals(writes)
            if not refused:
                raise
            kept = [w for i, w in enumerate(writes) if i not in refused]
            if kept:
                commit(kept)
            raise PartlyStored(refused) from exc

    return committing


def refusals(writes: Sequence[Write]) -> dict[int, str | None]:
    """The writes of a batch to refuse: each that cannot be stored (why), and every later write
    of the same group (``None``: computed on top of one that cannot)."""
    refused: dict[int, str | None] = {}
    spoilt: set[int] = set()
    for i, write in enumerate(writes):
        group = None if write.group is None else write.group.group_id
        if group is not None and group in spoilt:
            refused[i] = None
            continue
        why = unstorable(write)
        if why is not None:
            refused[i] = why
            if group is not None:
                spoilt.add(group)
    return refused


def unstorable(write: Write) -> str | None:
    """Why ``write`` cannot be stored, naming the value; ``None`` when it can."""
    try:
        storable((write,))
    except ValueError as exc:
        return str(exc)
    for ev in write.events:  # (the core refuses such a channel first: DecisionGroup.send; the last guard)
        problem = channel_problem(ev.channel)
        if problem is not None:
            return f"a channel the database cannot store: {problem}"
    parts: list[tuple[str, Any]] = [(f"the value on {ev.channel!r}", ev.value) for ev in write.events]
    if write.group is not None:
        parts += [("the group's decisions", write.group.decisions), ("the group's vars", write.group.vars),
                  ("the group's clock", write.group.clock)]
    parts += [("a result's decision", r.decision) for r in write.results]
    parts += [("a tick's snapshot", t.snapshot) for t in write.ticks]
    for where, value in parts:
        try:
            orjson.dumps(value)  # what the database's JSON and the journal's record encode it with
        except TypeError as exc:  # orjson.JSONEncodeError: no JSON, or past 64 bits, or 254 levels
            return f"{where}: {exc}"
    try:
        orjson.dumps(write)
    except TypeError as exc:
        return str(exc)
    return None


def storable(writes: Sequence[Write]) -> None:
    """Raise ``ValueError`` for a value the database cannot store: a time past the year 9999 (a
    period's end), a score that is no finite number (stored as NULL, which ``results`` refuses).

    The journal looks before it takes a batch: an acknowledged write is applied or storage halts,
    and such a write could never be applied, so it would halt storage for good (and every start
    after it). The direct writer needs no such look: its commit fails. Either way the batch is
    then stored without it (:func:`storing_apart`). (The core refuses a payoff that is no finite
    number first; this is the last guard.)"""
    for write in writes:
        for result in write.results:
            if not math.isfinite(result.score):
                raise ValueError(f"a score the database cannot store: {result.score!r}")
        group, connection = write.group, write.connection
        times = [] if group is None else [group.started_at, group.ends_at, group.ended_at]
        if connection is not None:
            times += (connection.opened, connection.closed)
        times += [tick.scheduled_at for tick in write.ticks]
        for value in times:
            if value is not None and not _EARLIEST <= value <= _LATEST:  # NaN is refused too
                raise ValueError(f"a time the database cannot store: {value!r} seconds since the epoch")
