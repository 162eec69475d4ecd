"""The generator's reductions of timings: nearest-rank percentiles, and the part of each send's lag
that is the generator's own.

Functions of numbers alone, apart from the load run, so that the other benches (``bench.writer``,
``bench.disk``) report their timings the way the load runs do without importing the generator.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence


def own_lags(due: Sequence[float], sent: Sequence[float], spans: Sequence[float]) -> list[float]:
    """Each send's lag (``sent - due``, seconds) less the time the generator spent meanwhile on
    handling what it read (``spans``: starts and ends, flat, in order, not overlapping).

    The generator's loop runs a due send only after the reads it is handling: when the target
    releases a burst of frames at once (after a commit that waited for the disk, say), the
    sends behind it leave late because of the target. What is left is the generator's own lag:
    its loop's timers, its sends, and a machine that did not run it.
    """
    starts, ends = spans[0::2], spans[1::2]
    handled = [0.0]
    for a, b in zip(starts, ends, strict=True):
        handled.append(handled[-1] + (b - a))

    def before(t: float) -> float:
        """Time spent handling reads before ``t``."""
        i = bisect.bisect_right(starts, t)
        return handled[i] - (max(0.0, ends[i - 1] - t) if i else 0.0)

    return [max(0.0, (s - d) - (before(s) - before(d))) for d, s in zip(due, sent, strict=True)]


def percentiles(values: Sequence[float]) -> dict[str, float] | None:
    """p50, p90, p99 and max of ``values`` (seconds) in milliseconds (nearest rank)."""
    if not values:
        return None
    ordered = sorted(values)

    def rank(p: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, math.ceil(p * len(ordered)) - 1))] * 1000

    return {"p50": rank(0.50), "p90": rank(0.90), "p99": rank(0.99), "max": ordered[-1] * 1000, "n": len(ordered)}
