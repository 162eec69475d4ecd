"""A busy machine: processes that spin on the target's core through a run (``Case.busy``).

A lab's server is seldom alone on its machine: a browser, a backup, another service take their
share of the cores. These cases measure the server with such a neighbour, a plain process at the
same priority that wants the whole core the target is pinned to; with ``--no-pin``, anywhere.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator

from .proc import pinned_command

#: a spinner ends by itself after this many seconds, should the bench not live to stop it
SPIN_LIMIT = 900.0
_SPIN = f"import time\nend = time.monotonic() + {SPIN_LIMIT}\nwhile time.monotonic() < end:\n    pass\n"


@contextlib.contextmanager
def spinning(count: int, core: int | None) -> Iterator[list[subprocess.Popen[bytes]]]:
    """``count`` processes spinning on ``core`` (``None``: wherever the kernel puts them) until the block ends."""
    spinners: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(count):
            command = pinned_command([sys.executable, "-c", _SPIN], core)
            spinners.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        yield spinners
    finally:
        for spinner in spinners:
            spinner.kill()
        for spinner in spinners:
            spinner.wait(10)
