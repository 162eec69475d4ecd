"""Fan-out: delivers encoded frames to the connections subscribed to a topic, in one process or many.

    memory   one process: a dict of topics (no ``REDIS_URL``)
    redis    several processes and hosts: Redis pub/sub, with delivery inside the process at once

The backend is picked by the URL's scheme (:func:`open_hub`), as ``encode/broadcaster`` does.
``publish`` never blocks and never awaits: each subscriber owns a bounded queue and decides what
to do when it overflows (see ``server.connection``). A group topic's frames carry the ``seq`` of
the event and of the group's event before it (``prev``), so a process that misses one (Redis
pub/sub is at most once) sees the gap and resends the group's state to its members.
"""

from __future__ import annotations

from .base import Hub, Resync, Subscriber
from .memory import MemoryHub


def group_topic(group_id: int) -> str:
    return f"group:{group_id}"


def group_of(topic: str) -> int | None:
    """The group id of a group topic, else ``None``."""
    kind, _, rest = topic.partition(":")
    return int(rest) if kind == "group" and rest.isdigit() else None


def monitor_topic(experiment_id: int) -> str:
    """An experiment's feed for monitors: each stored write as a JSON list of event rows."""
    return f"monitor:{experiment_id}"


def monitor_presence_topic(experiment_id: int) -> str:
    """An experiment's connection changes for monitors: whole ``connection`` frames."""
    return f"presence:{experiment_id}"


__all__ = [
    "Hub",
    "MemoryHub",
    "Resync",
    "Subscriber",
    "group_of",
    "group_topic",
    "monitor_presence_topic",
    "monitor_topic",
]
