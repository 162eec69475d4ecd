"""A load run's record reduced to its figures (bench/record.py, :meth:`Run.summary`), on records
filled in by hand as the schedule and the peers fill them in a run."""

from __future__ import annotations

import math
from array import array

from bench.load import Load
from bench.record import Run


def test_a_send_that_never_left_is_not_counted_delivered() -> None:
    """Of two sends, one left and reached nobody, the other never left: none delivered, one lost, one unsent."""
    run = Run("relay", Load(participants=2, group_size=2, rate=1.0, duration=1.0))
    run.t0 = run.last_send = 1.0
    run.due = array("d", [1.0, 1.5])
    run.sent_at = array("d", [1.0, math.nan])  # the second send's socket refused it
    run.groups = [[0, 1], [0, 1]]
    summary = run.summary()
    assert summary["sent"] == 1 and summary["unsent"] == 1 and summary["lost"] == 1, summary
    assert summary["delivered"] == 0, summary
