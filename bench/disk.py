"""What one durable commit waits for on this disk: ``python -m bench.disk``.

The server broadcasts a decision only after the transaction that stores it is committed with
an ``fdatasync`` of SQLite's write-ahead log (``synchronous=FULL``). This times that call alone,
the way the log is written: ``--size`` bytes (a transaction's pages; about eight 4 KiB pages at
2,000 decisions/s) written over the start of a preallocated file, then ``fdatasync``, ``--count``
times with a short pause between. No server, no SQLite: the least any server that stores
before it broadcasts adds to the bare relay's latency on this machine.

``python -m bench`` runs it first (case ``disk``), pinned to the server's core, on the
filesystem of the server's database (``tempfile``'s directory).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import orjson

from .measures import percentiles

#: the file is this large and written from its start again when full, as the log starts over
SPAN = 4 << 20


def measure(directory: str, size: int = 32 << 10, count: int = 2000, pause: float = 0.0005) -> dict[str, Any]:
    """``count`` writes of ``size`` bytes each followed by ``fdatasync``; the syncs' times."""
    if not 0 < size <= SPAN:
        raise ValueError(f"size: expected 1 to {SPAN} bytes, got {size}")
    if count < 1:
        raise ValueError(f"count: expected 1 or more, got {count}")
    fd, path = tempfile.mkstemp(prefix="synclab-disk-", dir=directory)
    try:
        os.write(fd, os.urandom(SPAN))
        os.fsync(fd)
        page = os.urandom(size)
        syncs: list[float] = []
        offset = 0
        for _ in range(count):
            os.pwrite(fd, page, offset)
            offset = 0 if offset + 2 * size > SPAN else offset + size
            started = time.perf_counter()
            os.fdatasync(fd)
            syncs.append(time.perf_counter() - started)
            time.sleep(pause)
    finally:
        os.close(fd)
        os.unlink(path)
    return {"directory": directory, "size": size, "count": count, "cores": sorted(os.sched_getaffinity(0)),
            "fdatasync_ms": percentiles(syncs)}


def describe(row: dict[str, Any]) -> str:
    s, cores = row["fdatasync_ms"], row["cores"]
    where = f"core {cores[0]}, " if len(cores) == 1 else ""
    return (f"disk: fdatasync after a {row['size'] / 1024:g} KiB write ({row['count']} times, {where}in "
            f"{row['directory']}): p50 {s['p50']:.2f}  p90 {s['p90']:.2f}  p99 {s['p99']:.2f}  max {s['max']:.2f} ms")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.disk", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="a directory on the disk to time (default: the temp dir)")
    parser.add_argument("--size", type=int, default=32 << 10, help="bytes written before each sync (default 32 KiB)")
    parser.add_argument("--count", type=int, default=2000, help="syncs to time (default 2,000)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = parser.parse_args(argv)
    try:
        row = measure(args.dir, args.size, args.count)
    except (ValueError, OSError) as exc:
        print(f"bench.disk: {exc}", file=sys.stderr)
        return 2
    print(orjson.dumps(row).decode() if args.json else describe(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
