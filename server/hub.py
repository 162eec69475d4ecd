"""Fan-out: delivers encoded frames to the connections subscribed to a topic.

The in-memory hub serves one process. A Redis hub (``REDIS_URL``) will implement the same
interface for several processes. ``publish`` never blocks and never awaits: each subscriber
owns a bounded queue and decides what to do when it overflows (see ``server.connection``).
"""

from __future__ import annotations

from typing import Protocol


class Subscriber(Protocol):
    def deliver(self, to: frozenset[str] | None, data: str) -> None:
        """Take one encoded frame; ``to`` limits it to some participant codes."""


class Hub(Protocol):
    def subscribe(self, topic: str, subscriber: Subscriber) -> None: ...

    def unsubscribe(self, topic: str, subscriber: Subscriber) -> None: ...

    def publish(self, topic: str, data: str, to: frozenset[str] | None = None) -> None: ...

    def listening(self, topic: str) -> bool:
        """Whether anybody may be subscribed (so a publisher can skip encoding for nobody)."""


class MemoryHub:
    """Fan-out inside one process."""

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

    def publish(self, topic: str, data: str, to: frozenset[str] | None = None) -> None:
        # a copy: a subscriber may unsubscribe (be cut off) while we deliver
        for subscriber in list(self._topics.get(topic, {}).values()):
            subscriber.deliver(to, data)


def group_topic(group_id: int) -> str:
    return f"group:{group_id}"


def monitor_topic(experiment_id: int) -> str:
    """An experiment's feed for monitors: each stored write as a JSON list of event rows."""
    return f"monitor:{experiment_id}"


def monitor_presence_topic(experiment_id: int) -> str:
    """An experiment's connection changes for monitors: whole ``connection`` frames."""
    return f"presence:{experiment_id}"
