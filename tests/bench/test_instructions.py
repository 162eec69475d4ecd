"""bench.instructions' workload runs (callgrind itself is not needed to check that)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from server.clientids import KEPT


def _inner(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench.instructions", "--inner", *args], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("args", [
    ["loop", "40"],
    ["writer", "40", "--batch", "4", "--made-for", "80"],
    ["journal", "40", "--batch", "4", "--made-for", "80"],
    ["apply", "40", "--batch", "4", "--made-for", "80"],
])
def test_the_counted_workload_runs(args: list[str]) -> None:
    """Each part's inner run (what callgrind counts) completes on its own SQLite file."""
    done = _inner(*args)
    assert done.returncode == 0, done.stderr[-3000:]


def test_the_path_writes_every_member_its_frames() -> None:
    """The path's inner run sends each decision as a member's frame through their connection and
    checks that every member was written their group's frames and each sender their acks (it
    fails otherwise); each member has their older ids in the filter, as in a long run."""
    done = _inner("path", "40", "--batch", "3", "--old-ids", "150")
    assert done.returncode == 0, done.stderr[-3000:]
    said = re.search(r"path: 40 decisions, (\d+) frames written: (\d+) of the group's .* (\d+)-(\d+) ids known", done.stdout)
    assert said is not None, done.stdout
    frames, each, fewest = int(said[1]), int(said[2]), int(said[3])
    assert each >= 1 and frames == 40 * (4 * each + 1)  # groups of four, and the ack
    assert fewest > 2 * KEPT  # past what is kept as it is: the older ones in the filter


@pytest.mark.parametrize("part", ["journal", "apply"])
def test_the_journal_parts_store_the_groups_writes(part: str) -> None:
    """The journal's parts commit the writes the live groups made through the journal-first
    storage, the apply thread's turns taken on the same thread: every event numbered in a row
    by the journal; the apply's all in the database under those numbers with the last apply's
    marker, the journal's none (the run checks it and fails otherwise). A batch of three and
    applies of seven decisions: each apply takes three whole batches, the last one fewer."""
    done = _inner(part, "42", "--batch", "3", "--apply-batch", "7", "--made-for", "60")
    assert done.returncode == 0, done.stderr[-3000:]
    said = re.search(rf"{part}: (\d+) batches, (\d+) events numbered (\d+)-(\d+); (\d+) held by the database, "
                     r"its marker (\d+):(\d+):(\d+)", done.stdout)
    assert said is not None, done.stdout
    batches, events, first, last, held = (int(said[i]) for i in range(1, 6))
    assert batches == 100 + 42 // 3  # the warm batches, and the run's
    assert events == last - first + 1 and events >= batches * 3
    assert held == (events if part == "apply" else 0)


#: the journal's parts' inner run, and how many writes the collector still tracks when it checks
#: what it stored (after the last commit and apply)
_HELD_AT_THE_CHECK = """
import asyncio, gc, sys
import bench.instructions as instructions, bench.instructions_storage as storage
from server.storage import Write
check = storage._check
def counting(*args):
    print("writes held:", sum(1 for o in gc.get_objects() if type(o) is Write))
    check(*args)
storage._check = counting
asyncio.run(instructions._workload(sys.argv[1], 42, 3, 60, 0, 7))
"""


@pytest.mark.parametrize("part", ["journal", "apply"])
def test_the_journal_parts_drop_each_write_once_it_is_committed(part: str) -> None:
    """As the server, which holds a write only until it is applied: by the end none of the part's
    writes is alive (they were all kept to the end, some 73,000 objects more for the collector
    to pass over in a count's run, a share of its instructions that moved from run to run)."""
    done = subprocess.run([sys.executable, "-c", _HELD_AT_THE_CHECK, part], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "writes held: 0\n" in done.stdout, done.stdout


#: the writer part's inner run, and how many writes the collector still tracks when it checks what
#: it stored (after the last commit)
_HELD_AT_THE_WRITER_S_CHECK = _HELD_AT_THE_CHECK.replace("storage._check", "storage._check_stored")


def test_the_writer_part_drops_each_write_once_it_is_committed() -> None:
    """As the server's writer thread, which holds a write only until its commit, and as the
    journal's parts: by the end none of the part's writes is alive, and its events are all stored."""
    done = subprocess.run([sys.executable, "-c", _HELD_AT_THE_WRITER_S_CHECK, "writer"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "writes held: 0\n" in done.stdout, done.stdout
    said = re.search(r"writer: (\d+) batches, (\d+) events stored", done.stdout)
    assert said is not None and int(said[1]) == 100 + 42 // 3 and int(said[2]) >= 3 * int(said[1]), done.stdout
