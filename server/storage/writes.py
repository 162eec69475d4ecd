"""What the writer stores: a :class:`Write` of events with the state, results, ticks and
connection change that go with them. Plain values, no SQL: the live groups build them, the batch
commits them.

The dataclasses have no ``__slots__``: the journal writes every batch with ``orjson``, which
reads a dataclass through its ``__dict__`` at once but walks a slotted one field by field, three
times as dear (:func:`.recovery.encode`, on the writer thread at every batch)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class NewEvent:
    channel: str
    value: Any
    timestamp: float
    group_id: int | None = None
    participant_id: int | None = None
    client_id: str | None = None
    #: made by a server-side bot standing in for the participant (``server.standins``)
    bot: bool = False
    #: the one participant the server sent it to alone (:attr:`groups.Event.recipient`); a journal's
    #: record written before this field decodes with ``None`` (``.recovery.decode``)
    recipient_id: int | None = None


@dataclass
class GroupUpdate:
    group_id: int
    phase: str
    started_at: float | None
    ends_at: float | None
    ended_at: float | None
    subperiod: int
    decisions: dict[str, Any]
    vars: dict[str, Any]
    clock: dict[str, Any] = field(default_factory=dict)


@dataclass
class NewResult:
    """A scored outcome, stored with the ``result`` event at ``event`` (an index in the write)."""

    event: int
    session_id: int
    subperiod: int | None
    decision: Any
    score: float


@dataclass
class NewTick:
    group_id: int
    kind: str
    index: int
    scheduled_at: float
    actual_at: float
    late: bool
    snapshot: dict[str, Any] | None


@dataclass
class ConnectionChange:
    """A connection opened (``opened`` set) or closed (``closed`` set)."""

    id: str
    participant_id: int
    experiment_id: int
    opened: float | None = None
    closed: float | None = None
    user_agent: str | None = None
    address: str | None = None
    route: str = "synclab"
    close_code: int | None = None
    #: the cluster's worker that holds the socket (``None`` in one process)
    worker: str | None = None


@dataclass(eq=False)
class Write:
    """One unit the writer commits: events that get consecutive ``seq``s, and state to store."""

    experiment_id: int
    events: list[NewEvent] = field(default_factory=list)
    group: GroupUpdate | None = None
    connection: ConnectionChange | None = None
    results: list[NewResult] = field(default_factory=list)
    ticks: list[NewTick] = field(default_factory=list)
    #: participants' statuses to set, ``(participant id, status)`` (see :mod:`.statuses`)
    statuses: list[tuple[int, str]] = field(default_factory=list)
    #: the fencing epoch it was computed under (a cluster's authority); ``None``: not checked
    epoch: int | None = None
    #: set by :func:`commit_writes`: the ``seq`` of each event, in order
    seqs: list[int] = field(default_factory=list)
    #: set by :func:`commit_writes`: refused, nothing of it stored, since the group's epoch in
    #: the database is no longer :attr:`epoch` (another authority took the group over)
    fenced: bool = False

