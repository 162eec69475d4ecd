"""bench.instructions' workload runs (callgrind itself is not needed to check that)."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("args", [["loop", "40"], ["writer", "40", "--batch", "4", "--made-for", "80"]])
def test_the_counted_workload_runs(args: list[str]) -> None:
    """Each part's inner run (what callgrind counts) completes on its own SQLite file."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.instructions", "--inner", *args], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
