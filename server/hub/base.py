"""What every hub is: the protocol of a hub and of its subscribers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


class Subscriber(Protocol):
    def deliver(self, to: frozenset[str] | None, data: str) -> None:
        """Take one encoded frame; ``to`` limits it to some participant codes."""


class Hub(Protocol):
    def subscribe(self, topic: str, subscriber: Subscriber) -> None: ...

    def unsubscribe(self, topic: str, subscriber: Subscriber) -> None: ...

    def publish(
        self, topic: str, data: str, to: frozenset[str] | None = None, *, seq: int | None = None, prev: int | None = None
    ) -> None: ...

    def listening(self, topic: str) -> bool:
        """Whether anybody may be subscribed (so a publisher can skip encoding for nobody)."""


#: called with a topic whose frames may have been missed (a gap, a reconnect): resend its state
Resync = Callable[[str], None]
