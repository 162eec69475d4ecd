"""The writer's cost per decision, without sockets: ``python -m bench.writer``.

The load runs of ``python -m bench`` give the writer thread's CPU only mixed with the event
loop's, on a core they share, and their latency moves with every stall of the machine. This
measures the writer alone, the way the server drives it: a real :class:`server.storage.Database`
on a new SQLite file (WAL, ``synchronous=FULL``), the real :class:`server.storage.EventWriter`
and writer thread, and real :class:`server.live.LiveGroup` s of a ``public_goods`` experiment
(400 participants in groups of 4 by default) whose decisions make the writes. With ``--postgres
URL`` the database is a new schema there instead (dropped after), and with ``--fenced`` every
group is claimed under a fencing epoch first, as a cluster's worker does, so that each batch
checks its groups' epochs (:func:`server.storage.commit_writes`). Each round
submits ``--batch`` decisions of random participants at once and waits until they are
committed, so each round is one batch (the table says how many writes a batch really held).
The event loop waits while the thread commits: the thread has the core to itself.

First ``--prefill`` decisions are stored unmeasured, so the tables and indexes have the size
of a load run's; then ``--rounds`` rounds are measured. For each round: the writer thread's
CPU time (``pthread_getcpuclockid``), the wall time from the submit to the last commit
callback, the bytes the process wrote (``wchar`` of ``/proc/self/io``: the log, and the
checkpoints that copy it into the database), and the event loop's CPU (the live groups' own
work: the core, the write's rows, the commit callbacks). CPU times are the figures to compare
between builds: a stall of the machine shows in wall time, hardly in CPU time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select

from server.experiments import parse_request, plan
from server.hub import MemoryHub
from server.live import LiveGroup
from server.routing import LiveGroups
from server.storage import (
    Database,
    EventWriter,
    claim_group,
    create_schema,
    events,
    experiment_groups,
    insert_experiment,
)

from .api import ENDOWMENT
from .measures import percentiles
from .services import Services, postgres_schema


def _written_bytes() -> int:
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("wchar:"):
                return int(line.split()[1])
    raise RuntimeError("no wchar in /proc/self/io")


def _writer_clock() -> int:
    for thread in threading.enumerate():
        if thread.name == "synclab-writer" and thread.ident is not None:
            return time.pthread_getcpuclockid(thread.ident)
    raise RuntimeError("the writer thread is not running")


def _stored_decisions(engine: Engine, experiment_id: int) -> int:
    with engine.connect() as conn:
        query = select(func.count()).where(events.c.experiment_id == experiment_id, events.c.channel == "decisions")
        return int(conn.execute(query).scalar_one())


async def measure(
    participants: int, group_size: int, batch: int, prefill: int, rounds: int, seed: int, directory: Path,
    database_url: str | None = None, fenced: bool = False,
) -> dict[str, Any]:
    db = Database(database_url or f"sqlite:///{directory / 'writer.db'}")
    create_schema(db.engine)
    spec = plan(parse_request({
        "game": "public_goods", "participants": participants, "group_size": group_size,
        "period_length": 24 * 3600, "block_pause": 0, "config": {"endowment": ENDOWMENT},
    }), seed=seed)
    experiment_id = await db.write(insert_experiment, spec)
    writer = EventWriter(db)
    writer.start()
    live = LiveGroups(db, writer, MemoryHub())
    try:
        seats: list[tuple[LiveGroup, str]] = []
        for place in await db.read(experiment_groups, experiment_id):
            epoch = None
            if fenced:
                epoch = 1
                assert await db.write(claim_group, place.group_id, epoch)
            group = await live.group(place.group_id, epoch=epoch)
            await group.start()
            seats.extend((group, code) for code in group.core.members)
        rng = random.Random(seed)
        numbers = dict.fromkeys(range(len(seats)), 0)

        async def one_round() -> None:
            futures = []
            for i in rng.sample(range(len(seats)), batch):
                numbers[i] += 1
                group, code = seats[i]
                k = numbers[i]
                futures.append(group.receive(code, "decisions", k, f"{k}"))
            await asyncio.gather(*futures)

        for _ in range(prefill // batch):
            await one_round()
        clock = _writer_clock()
        writer_cpu: list[float] = []
        loop_cpu: list[float] = []
        wall: list[float] = []
        written: list[int] = []
        batches = writer.batches
        started = time.perf_counter()
        for _ in range(rounds):
            # the loop's clock closest to the round: reading /proc is the benchmark's work, not the loop's
            w0, b0, l0, t0 = time.clock_gettime(clock), _written_bytes(), time.thread_time(), time.perf_counter()
            await one_round()
            t1, l1, b1, w1 = time.perf_counter(), time.thread_time(), _written_bytes(), time.clock_gettime(clock)
            writer_cpu.append(w1 - w0)
            loop_cpu.append(l1 - l0)
            wall.append(t1 - t0)
            written.append(b1 - b0)
        elapsed = time.perf_counter() - started
        batches = writer.batches - batches
        await writer.close()
        stored = await db.read(_stored_decisions, experiment_id)
    finally:  # closing the database stops the writer thread after what is queued
        live.close()
        db.close()
    decisions = rounds * batch
    return {
        "database": "postgres" if database_url else "sqlite",
        "fenced": fenced,
        "participants": participants,
        "group_size": group_size,
        "batch": batch,
        "writes_per_batch": decisions / batches if batches else 0.0,
        "prefill": prefill,
        "rounds": rounds,
        #: every decision of the prefill and the rounds, read back from the database
        "stored": stored,
        "seconds": elapsed,
        "writer_cpu_ms": percentiles(writer_cpu),
        "writer_cpu_us_per_decision": sum(writer_cpu) / decisions * 1e6,
        "loop_cpu_us_per_decision": sum(loop_cpu) / decisions * 1e6,
        "wall_ms": percentiles(wall),
        "written_kb_per_batch": statistics.fmean(written) / 1024,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.writer", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--participants", type=int, default=400)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--batch", type=int, default=5, help="decisions submitted per round (default 5)")
    parser.add_argument("--prefill", type=int, default=20_000, help="decisions stored before measuring (default 20,000)")
    parser.add_argument("--rounds", type=int, default=4000, help="measured rounds (default 4,000)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--postgres", metavar="URL", help="a new schema in this PostgreSQL database instead of an SQLite file")
    parser.add_argument("--fenced", action="store_true", help="every group claimed under an epoch, as in a cluster")
    args = parser.parse_args(argv)
    if not 1 <= args.batch <= args.participants:
        parser.error(f"--batch: expected 1 to --participants ({args.participants}), got {args.batch}")
    if args.rounds < 1 or args.prefill < 0:
        parser.error("--rounds: expected 1 or more; --prefill: expected 0 or more")
    with contextlib.ExitStack() as stack:
        directory = stack.enter_context(tempfile.TemporaryDirectory(prefix="synclab-writer-"))
        url = None
        if args.postgres is not None:
            url = stack.enter_context(postgres_schema(Services(postgres=args.postgres))).url
        r = asyncio.run(measure(
            args.participants, args.group_size, args.batch, args.prefill, args.rounds, args.seed, Path(directory),
            url, args.fenced,
        ))
    cpu, wall = r["writer_cpu_ms"], r["wall_ms"]
    submitted = (args.prefill // args.batch + args.rounds) * args.batch
    if r["stored"] != submitted:
        print(f"writer: {submitted} decisions submitted, {r['stored']} stored", file=sys.stderr)
        return 1
    print(
        f"writer ({r['database']}{', fenced' if r['fenced'] else ''}): {r['rounds']} batches of {r['writes_per_batch']:.2f} writes (batch {r['batch']}), "
        f"after {r['prefill']} decisions; {r['participants']} participants in groups of {r['group_size']}\n"
        f"  writer CPU per batch  p50 {cpu['p50']:.3f}  p90 {cpu['p90']:.3f}  p99 {cpu['p99']:.3f} ms"
        f"   = {r['writer_cpu_us_per_decision']:.0f} us per decision\n"
        f"  wall per batch        p50 {wall['p50']:.3f}  p90 {wall['p90']:.3f}  p99 {wall['p99']:.3f} ms\n"
        f"  written per batch     {r['written_kb_per_batch']:.1f} KiB\n"
        f"  event loop CPU        {r['loop_cpu_us_per_decision']:.0f} us per decision"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
