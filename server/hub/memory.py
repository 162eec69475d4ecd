"""The in-memory hub: fan-out inside one process."""

from __future__ import annotations

from .base import Subscriber


class MemoryHub:
    """Fan-out inside one process: a topic is a dict of its subscribers."""

    def __init__(self) -> None:
        self._topics: dict[str, dict[int, Subscriber]] = {}

    def subscribe(self, topic: str, subscriber: Subscriber) -> None:
        self._topics.setdefault(topic, {})[id(subscriber)] = subscriber

    def unsubscribe(self, topic: str, subscriber: Subscriber) -> None:
        subscribers = self._topics.get(topic)
        if subscribers is not None:
            subscribers.pop(id(subscriber), None)
            if not subscribers:
                del self._topics[topic]

    def listening(self, topic: str) -> bool:
        return topic in self._topics

    def publish(
        self, topic: str, data: str, to: frozenset[str] | None = None, *, seq: int | None = None, prev: int | None = None
    ) -> None:
        # a copy: a subscriber may unsubscribe (be cut off) while we deliver
        for subscriber in list(self._topics.get(topic, {}).values()):
            subscriber.deliver(to, data)
