"""What an action of a group returns: the events to persist and to send."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from .values import shown

#: ``Event.to`` for an event that is recorded but sent to nobody (an inbound decision).
NOBODY: frozenset[str] = frozenset()
#: the longest channel name, in characters: what the events table's ``channel`` column holds
#: (``server.storage.tables`` declares the column with it; PostgreSQL refuses a longer one)
MAX_CHANNEL_LENGTH = 64


def channel_problem(channel: object) -> str | None:
    """Why ``channel`` cannot name a channel (``None`` when it can): a channel is a non-empty
    string of at most :data:`MAX_CHANNEL_LENGTH` characters, none of them NUL."""
    if isinstance(channel, str) and 0 < len(channel) <= MAX_CHANNEL_LENGTH and "\x00" not in channel:
        return None
    expected = f"expected a channel name of 1 to {MAX_CHANNEL_LENGTH} characters"
    if not isinstance(channel, str):
        return f"{expected}, got {type(channel).__name__}"
    if "\x00" in channel and 0 < len(channel) <= MAX_CHANNEL_LENGTH:  # PostgreSQL's text refuses a NUL
        return f"{expected} without NUL, got {shown(channel)}"
    return f"{expected}, got {len(channel)}: {shown(channel)}"


@dataclass(frozen=True, slots=True)
class Tick:
    """A timed tick the core applied: what was due, when it was due, and when it ran.

    ``kind`` is ``"subperiod"`` (``index`` 0-based) or ``"period_end"`` (``index`` 0).
    ``late`` is set when it ran more than :data:`LATE_AFTER` seconds after it was due.
    """

    kind: str
    index: int
    scheduled_at: float
    actual_at: float

    @property
    def late(self) -> bool:
        return self.actual_at - self.scheduled_at > LATE_AFTER


#: seconds after its schedule from which a tick counts as late
LATE_AFTER = 0.05


class Event(NamedTuple):
    """One message in or out of a group, to be persisted and then delivered.

    ``participant`` is the sender's code, or ``None`` when the server sent it.
    ``to`` is ``None`` for the whole group, or the set of participant codes that receive
    it (``NOBODY`` records the event without sending it). ``tick`` is set on the event a
    scheduled tick produced (``subperiod``, and the ``state`` of a period's timed end).

    Immutable, as a named tuple: two are made at every decision, and a frozen dataclass sets each
    field through ``object.__setattr__``, which made its construction three times as dear.
    """

    channel: str
    payload: Any
    participant: str | None = None
    to: frozenset[str] | None = None
    tick: Tick | None = None

    @property
    def broadcast(self) -> bool:
        return self.to is None

    @property
    def recipient(self) -> str | None:
        """The one participant it is sent to alone (a result, a game's ``send(…, to=[member])``),
        which the event log stores; ``None`` when sent to the group, to nobody, or to several
        (whom the log does not name: one column holds one participant)."""
        to = self.to
        return next(iter(to)) if to is not None and len(to) == 1 else None


#: ``new_event(Event, (channel, payload, participant, to, tick))``, every field given: the ``Event``
#: that ``Event(...)`` makes, without its ``__new__``, a function in Python that packs the
#: arguments into this very tuple (for the two events of every decision: half the cost)
new_event = tuple.__new__
