"""The standard matrix's cases, and one run of a case: its target started, the load offered, all
removed again.

Apart from the command line (``bench/__main__.py``) so that the tests can run one case, tiny, as
the benchmark runs it, and so that what a case is stays in one place with the matrix that names them.
"""

from __future__ import annotations

import asyncio
import tempfile
from dataclasses import dataclass
from typing import Any

import orjson

from .busy import spinning
from .load import Load, hold_idle, run_load
from .proc import run_pinned, running, running_cluster
from .services import Services, measuring, postgres_schema, redis_prefix


@dataclass(frozen=True)
class Case:
    name: str
    target: str  # "server", "relay", "cluster" or "disk" (bench.disk: no target process)
    load: Load | None = None
    idle: int = 0
    #: the target's own options
    extra: tuple[str, ...] = ()
    #: the server's database: "sqlite" (a new file) or "postgres" (a new schema); a cluster's is PostgreSQL
    database: str = "sqlite"
    #: a cluster's worker processes
    workers: int = 0
    #: the target's environment besides the bench's own (``SYNCLAB_*`` of the caller never reach it)
    env: tuple[tuple[str, str], ...] = ()
    #: processes that spin on the target's core through the run: a busy machine (:mod:`bench.busy`)
    busy: int = 0


def matrix(duration: float, idle: int, scale: float = 1.0) -> list[Case]:
    """The standard matrix; ``scale`` shrinks the participant counts (for a quick look)."""

    def n(count: int) -> int:
        return max(4, int(count * scale) // 4 * 4)

    return [
        Case("disk", "disk"),
        Case("relay-1000", "relay", Load(n(200), 4, 5.0, duration)),
        Case("server-1000", "server", Load(n(200), 4, 5.0, duration)),
        Case("relay-2000", "relay", Load(n(400), 4, 5.0, duration)),
        Case("relay-fsync-2000", "relay", Load(n(400), 4, 5.0, duration), extra=("--fsync", "decisions.log")),
        Case("relay-fsync-frames-2000", "relay", Load(n(400), 4, 5.0, duration),
             extra=("--fsync", "decisions.log", "--frames")),
        Case("server-2000", "server", Load(n(400), 4, 5.0, duration)),
        Case("server-3000", "server", Load(n(600), 4, 5.0, duration)),
        Case("server-monitor-2000", "server", Load(n(400), 4, 5.0, duration, monitor=True)),
        # SYNCLAB_DURABILITY=crash: commits not synced one by one (nor waited for company)
        Case("server-crash-2000", "server", Load(n(400), 4, 5.0, duration), env=(("SYNCLAB_DURABILITY", "crash"),)),
        # a neighbour that wants the whole of the target's core, at the same priority (bench.busy)
        Case("relay-fsync-busy-1000", "relay", Load(n(200), 4, 5.0, duration), extra=("--fsync", "decisions.log"), busy=1),
        Case("server-busy-1000", "server", Load(n(200), 4, 5.0, duration), busy=1),
        # SYNCLAB_JOURNAL=off: the direct commit, each batch synced into SQLite before it is
        # acknowledged (the default before 2026-12-04's fourth session; the journal's is ``server-2000``)
        Case("server-direct-2000", "server", Load(n(400), 4, 5.0, duration), env=(("SYNCLAB_JOURNAL", "off"),)),
        Case("server-direct-3000", "server", Load(n(600), 4, 5.0, duration), env=(("SYNCLAB_JOURNAL", "off"),)),
        Case("ticks-1000", "server", Load(n(200), 4, 5.0, duration, subperiod=0.5)),
        Case("idle", "server", idle=max(2, int(idle * scale) // 2 * 2)),
        Case("server-pg-2000", "server", Load(n(400), 4, 5.0, duration), database="postgres"),
        Case("cluster-2000", "cluster", Load(n(400), 4, 5.0, duration), database="postgres", workers=2),
    ]


async def run_case(case: Case, target_core: int | None, services: Services | None = None,
                   cluster_core: int | None = None) -> dict[str, Any]:
    """One run of ``case``: its target started (and its PostgreSQL schema and Redis prefix made), the
    load offered, everything stopped and removed again. A cluster's workers go on ``cluster_core``;
    the case's spinning neighbours (``busy``) on ``target_core`` from before the start to the end."""
    with spinning(case.busy, target_core):
        return await _run(case, target_core, services or Services(), cluster_core)


async def _run(case: Case, target_core: int | None, services: Services, cluster_core: int | None) -> dict[str, Any]:
    if case.target == "disk":
        out = await asyncio.to_thread(run_pinned, "bench.disk", ["--json", "--dir", tempfile.gettempdir()], target_core)
        return {"name": case.name, "target": case.target, **orjson.loads(out)}
    if case.target == "cluster":
        assert case.load is not None, "a cluster case offers a load"
        with (
            redis_prefix(services) as prefix,
            postgres_schema(services) as database,
            running_cluster(case.workers, cluster_core, database.url, services.redis, prefix) as cluster,
            measuring(services, database, redis=True) as meters,
        ):
            row = (await run_load(cluster, case.load, meters=meters)).summary()
        return {"name": case.name, "database": "postgres", "workers": case.workers,
                "pinned": "unpinned" if cluster_core is None else f"core {cluster_core}", **row}
    if case.database == "postgres":
        with (
            postgres_schema(services) as database,
            running(case.target, target_core, list(case.extra), env={**dict(case.env), "DATABASE_URL": database.url}) as target,
            measuring(services, database, redis=False) as meters,
        ):
            if case.load is None:
                row = await hold_idle(target, case.idle)
            else:
                row = (await run_load(target, case.load, meters=meters)).summary()
        return {"name": case.name, "database": "postgres", **row}
    with running(case.target, target_core, list(case.extra), env=dict(case.env)) as target:
        if case.load is None:
            row = await hold_idle(target, case.idle)
        else:
            row = (await run_load(target, case.load)).summary()
    return {"name": case.name, **row}
