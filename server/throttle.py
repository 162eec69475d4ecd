"""Log lines of a repeated fault, at most one per interval per kind, the rest counted (pure: the time comes in)."""

from __future__ import annotations

from collections.abc import Hashable


class LogThrottle:
    """When each kind of a repeated fault was last logged, and how many were not logged since:
    a fault that comes with every frame or action is logged once, then counted."""

    def __init__(self, every: float, kept: int) -> None:
        self._every = every
        self._kept = kept
        self._last: dict[Hashable, tuple[float, int]] = {}

    def due(self, key: Hashable, now: float) -> int | None:
        """``None``: not to be logged now (counted); -1: the first of its kind (or the first for
        a long while, none skipped); else log it, with the count skipped since the last line."""
        last = self._last.get(key)
        if last is not None and now - last[0] < self._every:
            self._last[key] = (last[0], last[1] + 1)
            return None
        if last is None and len(self._last) >= self._kept:
            del self._last[next(iter(self._last))]
        self._last[key] = (now, 0)
        return -1 if last is None or last[1] == 0 else last[1]
