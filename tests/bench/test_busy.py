"""``bench.busy``: the neighbours of a busy-machine case spin while the run lasts, and are gone after."""

from __future__ import annotations

import os
import time

from bench.busy import spinning
from bench.cases import matrix
from bench.proc import cpu_seconds


def test_spinners_take_a_core_while_the_block_lasts_and_are_gone_after() -> None:
    core = sorted(os.sched_getaffinity(0))[-1]
    with spinning(2, core) as spinners:
        assert len(spinners) == 2
        deadline = time.monotonic() + 10  # (a busy machine gives them a small share of the core)
        while any(cpu_seconds(s.pid) <= 0.05 for s in spinners):  # spinning, not waiting
            assert time.monotonic() < deadline, [cpu_seconds(s.pid) for s in spinners]
            time.sleep(0.05)
        for spinner in spinners:
            assert spinner.poll() is None
            assert os.sched_getaffinity(spinner.pid) == {core}
    assert all(spinner.poll() is not None for spinner in spinners)


def test_the_busy_cases_have_one_neighbour_and_the_others_none() -> None:
    busy = {c.name: c.busy for c in matrix(1.0, 2) if c.busy}
    assert busy == {"relay-fsync-busy-1000": 1, "server-busy-1000": 1}
