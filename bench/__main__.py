"""``python -m bench``: the standard matrix, a table, and JSON lines.

Each run starts a fresh target process (``synclab serve`` on a new SQLite file or a new
PostgreSQL schema, or the bare relay) pinned to one core, while this process, the generator, is
pinned to another; or a cluster of ``synclab serve`` workers on PostgreSQL and Redis. See
``bench/README.md``.

This module is the command line and the loop over the runs; its parts are modules of their own:
:mod:`bench.cases` the matrix's cases and one run of a case, :mod:`bench.table` the table printed,
:mod:`bench.verdicts` the targets met or missed (``python -m bench soak`` is :mod:`bench.soak`).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from .cases import Case, matrix, run_case
from .proc import cores, device_interrupts, pin_self, raise_open_files, read_interrupts
from .services import POSTGRES_URL, REDIS_URL, Services
from .table import table
from .verdicts import cpu_ratios, median_runs, verdicts

#: the names the tests import from here, which lived here before the modules above held them
__all__ = ["Case", "cpu_ratios", "main", "matrix", "median_runs", "run_case", "table", "verdicts"]

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = RESULTS.parent.parent


def build() -> str | None:
    """The checkout's commit, ``+dirty`` when the server's or the games' code differs from it
    (the runs start the code of the working tree), or ``None`` outside git."""
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        changed = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "server", "groups"],
                                 capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if changed else "")


async def main_async(args: argparse.Namespace) -> int:
    target_core, generator_core = (None, None) if args.no_pin else cores()
    pin_self(generator_core)
    # a cluster's workers: on the target's core, or (--cluster-pin none) wherever the kernel puts them
    cluster_core = target_core if args.cluster_pin == "target" else None
    services = Services(postgres=args.postgres_url, redis=args.redis_url)
    files = raise_open_files()
    cases = matrix(args.duration, args.idle, args.scale)
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {c.name for c in cases}
        if unknown:
            print(f"bench: unknown run {sorted(unknown)}; expected some of {[c.name for c in cases]}", file=sys.stderr)
            return 2
        cases = [c for c in cases if c.name in wanted]
    out = Path(args.out) if args.out else RESULTS / f"{dt.datetime.now():%Y%m%d-%H%M%S}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    machine = {
        "cpus": os.cpu_count(), "target_core": target_core, "generator_core": generator_core, "cluster_core": cluster_core,
        "device_interrupts": {f"cpu{cpu}": n for cpu, n in device_interrupts(read_interrupts()).items()},
        "python": platform.python_version(), "platform": platform.platform(), "open_files": files,
    }
    when = dt.datetime.now(dt.UTC).isoformat()
    rows: list[dict[str, Any]] = []
    # round by round (every case once, then every case again): the repeats of two cases that a
    # verdict compares (the CPU ratio of issue 21) are run a minute apart, not several, on a
    # machine whose level moves from minute to minute
    for repeat, case in [(i, c) for i in range(1, args.repeat + 1) for c in cases]:
        print(f"bench: {case.name} ({repeat} of {args.repeat}) ...", file=sys.stderr, flush=True)
        machine["build"] = build()  # per run: the working tree may change between runs
        try:
            row = await run_case(case, target_core, services, cluster_core)
        except Exception as exc:
            row = {"name": case.name, "target": case.target, "failed": f"{type(exc).__name__}: {exc}"}
            print(f"bench: {case.name} failed: {row['failed']}", file=sys.stderr, flush=True)
        row = {**row, "repeat": repeat, "at": when, "machine": dict(machine)}
        rows.append(row)
        with out.open("ab") as f:
            f.write(orjson.dumps(row) + b"\n")
    order = {c.name: i for i, c in enumerate(cases)}
    print(table(sorted((r for r in rows if "failed" not in r), key=lambda r: (order[r["name"]], r["repeat"]))))
    for r in rows:
        if "failed" in r:
            print(f"{r['name']}: FAILED {r['failed']}")
    if args.repeat > 1:
        print(f"(each run {args.repeat} times; a verdict on one case takes its run with the median p99, a ratio of two cases the median of the ratios each from one repeat)")
    for line in verdicts([r for r in rows if "failed" not in r]):
        print(line)
    print(f"build: {', '.join(sorted({str(r['machine']['build']) for r in rows}))}; results: {out}")
    return 1 if any("failed" in r for r in rows) else 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["soak"]:  # experiments back to back, the RSS over time (bench/soak.py)
        from .soak import main as soak_main

        return soak_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m bench", description="synclab's load benchmark: the standard matrix.")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per run (default 10)")
    parser.add_argument("--idle", type=int, default=10_000, help="idle connections to hold (default 10000)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply participant counts (e.g. 0.1 for a quick look)")
    parser.add_argument("--only", help="comma-separated run names (disk,relay-1000,server-1000,relay-2000,relay-fsync-2000,"
                        "relay-fsync-frames-2000,server-2000,server-3000,server-monitor-2000,server-crash-2000,relay-fsync-busy-1000,server-busy-1000,server-direct-2000,server-direct-3000,ticks-1000,idle,server-pg-2000,cluster-2000)")
    parser.add_argument("--out", help="JSON lines file (default bench/results/<timestamp>.jsonl)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin the target and the generator to cores")
    parser.add_argument("--cluster-pin", choices=("target", "none"), default="target",
                        help="a cluster's workers: both on the target's core (default), or unpinned")
    parser.add_argument("--postgres-url", default=POSTGRES_URL,
                        help=f"PostgreSQL for the runs on it; each run makes a schema of its own there (default {POSTGRES_URL})")
    parser.add_argument("--redis-url", default=REDIS_URL,
                        help=f"Redis for the cluster runs; each run uses a key prefix of its own (default {REDIS_URL})")
    parser.add_argument("--repeat", type=int, default=1, help="run each case this many times (default 1); "
                        "the verdicts take the median run")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.scale <= 0 or args.idle < 0 or args.repeat < 1:
        parser.error("--duration and --scale must be > 0, --idle >= 0, --repeat >= 1")
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvicorn[standard] brings it
        return asyncio.run(main_async(args))
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main_async(args))


if __name__ == "__main__":
    raise SystemExit(main())
