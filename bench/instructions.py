"""Instructions per decision of the server's own work, counted by callgrind: the figure to compare builds by.

``python -m bench.instructions``: the CPU time of a load run moves by a tenth from one minute to the
next on this VM, more than most single changes save; an instruction count does not. It runs the
two parts of a decision that are the server's own (not the WebSocket stack's, which the relay has
too) in one process, without sockets or threads, under ``valgrind --tool=callgrind``, and prints
the instructions (user space) each takes per decision:

- ``loop``: what the event loop does for a decision: the game's core (``public_goods``, 400
  participants in groups of 4, as in ``server-2000``), the write's rows, the commit callbacks
  (the frames encoded and published to a hub with nobody listening);
- ``writer``: what the writer thread does for a batch of ``--batch`` such writes: the statements,
  the rows and the commit, on SQLite with ``synchronous=OFF`` (``fdatasync`` is the kernel's work,
  and not counted by callgrind anyway).

Each count is the difference of two runs, ``--small`` and ``--large`` decisions, so the start-up
is left out. ``PYTHONHASHSEED=0`` makes a run repeat its count to a few hundred instructions.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: what the server sets (server.cli.GC_THRESHOLD)
GC_THRESHOLD = 10_000
#: writes made before the writer's count starts: the statements warm, the tables past their first pages
WARM_BATCHES = 100


async def _workload(part: str, decisions: int, batch: int, made_for: int) -> None:
    """Make ``decisions`` decisions' work of ``part`` (the ``--inner`` run, under callgrind).

    The writer's part makes the writes of ``made_for`` decisions in every run (making them is the
    loop's work, the same in both runs) and commits those of ``decisions``."""
    from server.experiments import parse_request, plan
    from server.hub import MemoryHub
    from server.routing import LiveGroups
    from server.storage import (
        Database,
        EventWriter,
        Write,
        commit_writes,
        create_schema,
        experiment_groups,
        insert_experiment,
        writer_connection,
    )

    directory = Path(tempfile.mkdtemp(prefix="synclab-instructions-"))
    db = Database(f"sqlite:///{directory / 'instructions.db'}")
    try:
        create_schema(db.engine)
        spec = plan(parse_request({
            "game": "public_goods", "participants": 400, "group_size": 4, "period_length": 24 * 3600,
            "block_pause": 0, "config": {"endowment": 100},
        }), seed=1)
        experiment_id = await db.write(insert_experiment, spec)
        writer = EventWriter(db)
        writer.start()
        live = LiveGroups(db, writer, MemoryHub())
        seats: list[tuple[Any, str]] = []
        for place in await db.read(experiment_groups, experiment_id):
            group = await live.group(place.group_id)
            await group.start()
            for code in group.core.members:  # each member's ids read, as their seat reads them (none stored)
                group.load_client_ids(code, [])
                seats.append((group, code))
        await writer.close()
        made: list[Write] = []
        numbers = iter(range(10**6, 10**9))

        class StoredAtOnce:
            """The writer's place: each write numbered and committed at once, kept for the writer's part."""

            def submit(self, write: Write, on_commit: Any, _on_fail: Any) -> None:
                write.seqs = [next(numbers) for _ in write.events]
                if part == "writer":
                    made.append(write)
                on_commit(write)

        at_once = StoredAtOnce()
        for group, _code in seats:
            group._writer = at_once  # only its submit is called
        rng = random.Random(1)
        gc.collect()
        gc.freeze()
        _, older, oldest = gc.get_threshold()
        gc.set_threshold(GC_THRESHOLD, older, oldest)
        count = decisions if part == "loop" else (WARM_BATCHES + made_for // batch) * batch
        for k in range(1, count + 1):
            group, code = seats[rng.randrange(len(seats))]
            group.receive(code, "decisions", k % 100, f"c{k}")
        if part == "writer":
            conn = writer_connection(db.engine)
            conn.exec_driver_sql("PRAGMA synchronous=OFF")
            conn.commit()
            batches = [made[i:i + batch] for i in range(0, len(made), batch)]
            # the warm batches are in both runs: the difference leaves them out
            for writes in batches[:WARM_BATCHES + decisions // batch]:
                commit_writes(conn, writes)
            conn.close()
        live.close()
    finally:
        db.close()
        shutil.rmtree(directory, ignore_errors=True)


def _count(part: str, decisions: int, batch: int, made_for: int) -> int:
    """Instructions of one inner run under callgrind."""
    with tempfile.TemporaryDirectory(prefix="synclab-callgrind-") as out:
        done = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}/cg.out",
             sys.executable, "-m", "bench.instructions", "--inner", part, str(decisions),
             "--batch", str(batch), "--made-for", str(made_for)],
            env={**os.environ, "PYTHONHASHSEED": "0"}, capture_output=True, text=True, check=False, timeout=1800,
        )
    found = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"callgrind failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return int(found[1])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=("loop", "writer", "both"), default="both")
    parser.add_argument("--batch", type=int, default=4, help="writes per commit for the writer's part (default 4)")
    parser.add_argument("--small", type=int, default=1200, help="decisions of the smaller run (default 1,200)")
    parser.add_argument("--large", type=int, default=5200, help="decisions of the larger run (default 5,200)")
    parser.add_argument("--inner", nargs=2, metavar=("PART", "DECISIONS"), help=argparse.SUPPRESS)
    parser.add_argument("--made-for", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.inner:
        import uvloop  # the server's loop (uvicorn takes uvloop when it is installed)

        uvloop.install()
        asyncio.run(_workload(args.inner[0], int(args.inner[1]), args.batch, args.made_for))
        return 0
    if shutil.which("valgrind") is None:
        print("bench.instructions: valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    parts = ("loop", "writer") if args.part == "both" else (args.part,)
    for part in parts:
        small, large = (_count(part, n, args.batch, args.large) for n in (args.small, args.large))
        per = (large - small) / (args.large - args.small)
        print(f"{part:6s} {per:10,.0f} instructions per decision"
              + (f" (batches of {args.batch})" if part == "writer" else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
