"""``bench.proc``: a target outlives no bench, however the bench ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

#: a bench in miniature: the relay started as the matrix starts its targets, its pid printed, then a wait
_PARENT = textwrap.dedent("""
    import sys, time
    from bench.proc import running
    with running("relay", None) as target:
        print(target.process.pid, flush=True)
        time.sleep(60)
""")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent's death signal is Linux's")
def test_a_killed_bench_leaves_no_target_running() -> None:
    """SIGKILL to the bench (no ``finally`` of its runs, nothing of its own stop) ends its target too."""
    root = Path(__file__).resolve().parents[2]
    bench = subprocess.Popen(
        [sys.executable, "-c", _PARENT], cwd=root, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    target = 0
    try:
        assert bench.stdout is not None
        line = bench.stdout.readline()  # (the relay serves within the bench's own startup wait)
        assert line.strip().isdigit(), line
        target = int(line)
        assert _alive(target)
        bench.send_signal(signal.SIGKILL)
        bench.wait(10)
        deadline = time.monotonic() + 10
        while _alive(target):
            assert time.monotonic() < deadline, "the killed bench's relay is still running"
            time.sleep(0.05)
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait(10)
        if bench.stdout is not None:
            bench.stdout.close()
        if target and _alive(target):  # (the failure's: no relay left behind by the test either)
            os.kill(target, signal.SIGKILL)
