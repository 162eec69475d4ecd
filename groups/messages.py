"""What an action of a group returns: the events to persist and to send."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: ``Event.to`` for an event that is recorded but sent to nobody (an inbound decision).
NOBODY: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Event:
    """One message in or out of a group, to be persisted and then delivered.

    ``participant`` is the sender's code, or ``None`` when the server sent it.
    ``to`` is ``None`` for the whole group, or the set of participant codes that receive
    it (``NOBODY`` records the event without sending it).
    """

    channel: str
    payload: Any
    participant: str | None = None
    to: frozenset[str] | None = None

    @property
    def broadcast(self) -> bool:
        return self.to is None
