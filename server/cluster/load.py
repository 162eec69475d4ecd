"""How late this worker's event loop runs: the measure of a worker too busy to take more groups.

A timer due every :data:`EVERY` seconds notes how late it fired; :attr:`LagMeter.lag` is the
mean of those over the last :data:`WINDOW` seconds. A loop with CPU to spare fires it within a
millisecond or two; one short of CPU (too many groups, a starved VM) fires it tens or hundreds of
milliseconds late, time after time, and every frame of its groups waits as long. The mean, not
the worst: one pause (a burst of connections, a collection) is not a busy worker. The heartbeat
carries the figure; a busy worker leaves the groups nobody serves yet to a worker that is not
(see :meth:`server.cluster.node.Node.owner`) and hands some of its own over (:meth:`server.cluster.placement.Placement._shed`).
"""

from __future__ import annotations

import asyncio
from collections import deque

#: seconds between two looks at the loop's lateness
EVERY = 0.1
#: seconds over which the lateness is averaged
WINDOW = 2.0


class LagMeter:
    """The event loop's lateness, the mean of the last :data:`WINDOW` seconds."""

    def __init__(self) -> None:
        #: (when, how late), seconds of the loop's clock, oldest first
        self._seen: deque[tuple[float, float]] = deque()

    @property
    def lag(self) -> float:
        """Seconds: how late the timer fired in the window, on average (0 before the first look)."""
        return sum(late for _, late in self._seen) / len(self._seen) if self._seen else 0.0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + EVERY
            await asyncio.sleep(EVERY)
            now = loop.time()
            self.note(now, now - due)

    def note(self, now: float, late: float) -> None:
        """A look at ``now``: the timer fired ``late`` seconds after it was due."""
        self._seen.append((now, max(0.0, late)))
        while self._seen[0][0] < now - WINDOW:
            self._seen.popleft()
