"""What an experiment's monitors show in their ``stats``: the throughput and broadcast latency of its stored writes."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import orjson


class Meter:
    """Recent throughput and broadcast latency of an experiment's stored writes, for its monitors' ``stats``.

    One per experiment in a process, shared by the monitors watching it there: the hub hands every
    subscriber the same frame, so a write's rows are read once however many monitors watch, and a
    monitor's count is what came since it opened (:meth:`summary`'s ``since``).
    """

    def __init__(self, clock: Callable[[], float], window: int = 512) -> None:
        self.events = 0
        self._clock = clock
        #: (when, how many events, seconds from the action to its broadcast) of recent writes
        self.recent: deque[tuple[float, int, float]] = deque(maxlen=window)
        #: the last write's frame: the next monitor it is delivered to adds nothing
        self._last: str | None = None

    def observe(self, data: str) -> None:
        """One stored write's rows (a JSON list, every row with the write's ``latency`` in ms), counted once."""
        if data is self._last:
            return
        self._last = data
        rows = orjson.loads(data)
        if rows:
            self.events += len(rows)
            self.recent.append((self._clock(), len(rows), float(rows[0].get("latency") or 0.0) / 1000))

    def summary(self, over: float = 1.0, since: int = 0) -> dict[str, Any]:
        """Events since the count stood at ``since``, per second over the last ``over`` seconds, and the latency of the last writes."""
        now = self._clock()
        latest = [r for r in self.recent if r[0] >= now - over]
        latencies = sorted(r[2] for r in self.recent)
        return {
            "events": self.events - since,
            "events_per_second": sum(r[1] for r in latest) / over,
            "latency_ms": {
                "last": round(self.recent[-1][2] * 1000, 3) if self.recent else None,
                "p50": round(latencies[len(latencies) // 2] * 1000, 3) if latencies else None,
                "max": round(latencies[-1] * 1000, 3) if latencies else None,
            },
        }
