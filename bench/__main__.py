"""``python -m bench``: the standard matrix, a table, and JSON lines.

Each run starts a fresh target process (``synclab serve`` on a new SQLite file or a new
PostgreSQL schema, or the bare relay) pinned to one core, while this process, the generator, is
pinned to another; or a cluster of ``synclab serve`` workers on PostgreSQL and Redis. See
``bench/README.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from .disk import describe
from .load import Load, hold_idle, run_load
from .proc import (
    cores,
    device_interrupts,
    pin_self,
    raise_open_files,
    read_interrupts,
    run_pinned,
    running,
    running_cluster,
)
from .services import POSTGRES_URL, REDIS_URL, Services, measuring, postgres_schema, redis_prefix

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
    load offered, everything stopped and removed again. A cluster's workers go on ``cluster_core``."""
    services = services or Services()
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


def _ms(value: dict[str, float] | None, key: str) -> str:
    return "-" if value is None else f"{value[key]:.1f}"


def _per_batch(writer: dict[str, Any] | None) -> str:
    if writer is None or writer.get("writes_per_batch") is None:
        return "-"
    return f"{writer['writes_per_batch']:.2f}"


def _slow_commits(writer: dict[str, Any] | None) -> str:
    if writer is None or "slow_commits" not in writer:
        return "-"
    bucket = writer["slowest_commit_bucket"]
    if bucket is None:
        return "0"
    return f"{writer['slow_commits']} {'>1000' if bucket == 'more' else '<=' + bucket}"


def _us(row: dict[str, Any], *kinds: str) -> str:
    """µs of CPU per delivered decision of the process kinds together, or ``-`` if none was measured."""
    per = row.get("cpu_us_per_decision") or {}
    found = [per[k] for k in kinds if k in per]
    return f"{sum(found):.0f}" if found else "-"


def table(rows: Sequence[dict[str, Any]]) -> str:
    """The runs as a fixed-width table (idle runs get a line of their own below)."""
    head = ("run", "target", "N", "G", "R", "offered/s", "delivered/s", "p50", "p90", "p99", "max", "ack p99",
            "lost", "unpers.", "srv CPU", "srv RSS", "srv us/d", "redis us/d", "pg us/d",
            "w/batch", "slow c.", "gen CPU", "lag p99", "tick p99")
    lines = [head]
    repeated = any(r.get("repeat", 1) > 1 for r in rows)
    for r in rows:
        if "latency_ms" not in r:
            continue
        lines.append((
            r["name"] + (f" #{r['repeat']}" if repeated else ""), r["target"], str(r["participants"]), str(r["group_size"]), f"{r['rate']:g}",
            f"{r['offered_per_s']:.0f}", f"{r['delivered_per_s']:.0f}",
            _ms(r["latency_ms"], "p50"), _ms(r["latency_ms"], "p90"), _ms(r["latency_ms"], "p99"),
            _ms(r["latency_ms"], "max"), _ms(r["ack_latency_ms"], "p99"),
            str(r["lost"]), "-" if r["unpersisted"] is None else str(r["unpersisted"]),
            "-" if r["target_cpu"] is None else f"{r['target_cpu'] * 100:.0f}%",
            "-" if r["target_rss_mb"] is None else f"{r['target_rss_mb']:.0f}MB",
            _us(r, "target"), _us(r, "redis"), _us(r, "postgres", "postgres-bg"),
            _per_batch(r.get("writer")), _slow_commits(r.get("writer")),
            f"{r['generator_cpu'] * 100:.0f}%", _ms(r["send_lag_ms"], "p99") + ("!" if disturbed(r) else ""),
            _ms(r["tick_lateness_ms"], "p99"),
        ))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = ["  ".join(cell.rjust(w) if i >= 2 else cell.ljust(w) for i, (cell, w) in enumerate(zip(line, widths, strict=True)))
           for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    out.append("(latencies in ms: send to receipt of group_decisions by every group member; ack: send to ack; "
               "w/batch: the writes (a decision, a tick, a connection) the server committed per transaction; "
               "slow c.: its commits over 20 ms, and the longest's bucket in ms; us/d: µs of CPU time per decision "
               "delivered to every group member, of the server's processes (a cluster's workers together), "
               "redis-server, and PostgreSQL's backends of the run plus its background processes)")
    if any(disturbed(r) for r in rows):
        out.append(f"(!: a disturbed run, the generator's own send lag over {LAG_LIMIT_MS:g} ms at p99; "
                   "left out of the verdicts while a repeat of it is not)")
    for r in rows:
        if "fdatasync_ms" in r:
            out.append(describe(r))
        if "held" in r:
            out.append(
                f"{r['name']}: {r['target']} held {r['held']} of {r['wanted']} idle connections "
                f"(failures {r['failures'] or 'none'}), RSS {r['target_rss_mb']:.0f} MB "
                f"({r['target_rss_before_mb']:.0f} MB before), {r['rss_per_connection_kb']:.1f} KB per connection, "
                f"connected in {r['connect_seconds']:.1f} s"
            )
        if r.get("errors"):
            out.append(f"{r['name']}: error frames {r['errors']}")
            for code, messages in (r.get("error_messages") or {}).items():
                for message, count in sorted(messages.items(), key=lambda m: -m[1]):
                    out.append(f"    {code} x{count}: {message}")
        out.extend(_costs(r))
    return "\n".join(out)


def _costs(r: dict[str, Any]) -> list[str]:
    """The cost lines of a run on PostgreSQL or a cluster: what the ``us/d`` columns are made of."""
    per = r.get("cpu_us_per_decision") or {}
    if "postgres" not in per:
        return []
    name = r["name"] + (f" #{r['repeat']}" if r.get("repeat", 1) > 1 else "")
    parts = [f"{r.get('workers') or 1} server process(es) {per['target']:.0f}"]
    if "redis" in per:
        parts.append(f"redis-server {per['redis']:.0f}")
    parts.append(f"PostgreSQL backends {per['postgres']:.0f} + background {per.get('postgres-bg', 0.0):.0f}")
    line = f"{name}: µs of CPU per delivered decision: " + ", ".join(parts)
    if r.get("redis_commands_per_decision") is not None:
        line += f"; Redis commands per decision {r['redis_commands_per_decision']:.1f} (every client's)"
    if r.get("groups_served") is not None:
        line += f"; groups served per worker {r['groups_served']} ({r.get('pinned', '?')})"
    return [line]


#: a load run whose generator sent later than this (ms, p99) than its own schedule was
#: disturbed: the machine stalled the generator on its own core too, so the run's latencies
#: say more about the machine than about the target (on a quiet machine the lag p99 is ~1 ms)
LAG_LIMIT_MS = 2.0


def disturbed(row: dict[str, Any]) -> bool:
    lag: dict[str, float] | None = row.get("send_lag_ms")
    return lag is not None and float(lag["p99"]) > LAG_LIMIT_MS


def median_runs(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per run name, its row; of repeated runs, the one with the median p99 (or tick p99, or RSS).

    Disturbed runs (see :data:`LAG_LIMIT_MS`) are left out while an undisturbed one exists.
    """

    def key(r: dict[str, Any]) -> float:
        for measure in ("tick_lateness_ms", "latency_ms"):
            if r.get(measure):
                return float(r[measure]["p99"])
        return float(r.get("target_rss_mb") or 0.0)

    named: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        named.setdefault(r["name"], []).append(r)
    chosen: dict[str, dict[str, Any]] = {}
    for name, runs in named.items():
        steady = [r for r in runs if not disturbed(r)] or runs
        chosen[name] = sorted(steady, key=key)[(len(steady) - 1) // 2]
    return chosen


def _by_repeat(rows: Sequence[dict[str, Any]], name: str, has: str) -> dict[int, dict[str, Any]]:
    """``name``'s runs that have ``has``, by repeat."""
    return {int(r.get("repeat") or 1): r for r in rows if r["name"] == name and r.get(has)}


def cpu_ratios(rows: Sequence[dict[str, Any]], relay: str = "relay-fsync-2000", server: str = "server-2000") -> list[float]:
    """Per repeat with both: ``server``'s CPU per decision over ``relay``'s (issue 21)."""
    def us(r: dict[str, Any]) -> float:
        return float(r["cpu_us_per_decision"].get("target") or 0.0)

    served, floor = _by_repeat(rows, server, "cpu_us_per_decision"), _by_repeat(rows, relay, "cpu_us_per_decision")
    pairs = [(served[k], floor[k]) for k in sorted(served.keys() & floor.keys())]
    return [us(s) / us(f) for s, f in pairs if us(s) and us(f)]


def p99_pairs(rows: Sequence[dict[str, Any]], relay: str, server: str = "server-2000") -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Per repeat with both: (``server``'s run, ``relay``'s run), for a ratio of p99s each from one repeat.

    Pairs with a disturbed run (see :data:`LAG_LIMIT_MS`) are left out while an undisturbed pair exists.
    """
    served, floor = _by_repeat(rows, server, "latency_ms"), _by_repeat(rows, relay, "latency_ms")
    pairs = [(served[k], floor[k]) for k in sorted(served.keys() & floor.keys())]
    return [(s, f) for s, f in pairs if not disturbed(s) and not disturbed(f)] or pairs


def p99_ratio(pairs: Sequence[tuple[dict[str, Any], dict[str, Any]]]) -> tuple[float, str]:
    """The median of the pairs' p99 ratios, and how it was had: every ratio and its two p99s."""
    ratios = [a["latency_ms"]["p99"] / max(b["latency_ms"]["p99"], 1e-9) for a, b in pairs]
    ratio = statistics.median(ratios)
    ms = ", ".join(f"{a['latency_ms']['p99']:.1f} vs {b['latency_ms']['p99']:.1f}" for a, b in pairs)
    if len(pairs) == 1:
        return ratio, f"{ratio:.2f}x ({ms} ms)"
    return ratio, f"{ratio:.2f}x (median of {', '.join(f'{r:.2f}' for r in ratios)}, each from one repeat: {ms} ms)"


def verdicts(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The targets of issue 6, each met or missed, for the rows present (the median of repeats)."""
    by = median_runs(rows)
    out: list[str] = []

    def check(what: str, ok: bool, got: str, *runs: dict[str, Any]) -> None:
        """MET or MISSED; UNSURE for a timing judged on a disturbed run (every repeat was)."""
        shaken = [r for r in runs if disturbed(r)]
        if shaken:
            lags = ", ".join(f"{r['name']} {r['send_lag_ms']['p99']:.1f} ms" for r in shaken)
            out.append(f"UNSURE {what}: {got}; the generator itself lagged ({lags} at p99, over "
                       f"{LAG_LIMIT_MS:g}): the machine stalled, run again")
            return
        out.append(f"{'MET   ' if ok else 'MISSED'} {what}: {got}")

    def server_run(rate: str, r: dict[str, Any]) -> None:
        """One server case's latency and counts: p99 <= 25 ms, p50 <= 3 ms, 0 lost, 0 unpersisted."""
        lat = r["latency_ms"]
        check(f"{rate}/s p99 <= 25 ms", lat["p99"] <= 25, f"{lat['p99']:.1f} ms", r)
        check(f"{rate}/s p50 <= 3 ms", lat["p50"] <= 3, f"{lat['p50']:.1f} ms", r)
        check(f"{rate}/s 0 lost", r["lost"] == 0, str(r["lost"]))
        check(f"{rate}/s 0 unpersisted", r["unpersisted"] == 0, str(r["unpersisted"]))

    s = by.get("server-2000")
    if s is not None and s.get("latency_ms"):
        server_run("2,000", s)
        for name, what in (("relay-2000", "p99 <= 2x the relay's"),
                           ("relay-fsync-2000", "p99 <= 2x the relay's that stores before it broadcasts (fdatasync, no SQLite)")):
            pairs = p99_pairs(rows, name)
            if pairs:
                ratio, got = p99_ratio(pairs)
                check(what, ratio <= 2, got, *[run for pair in pairs for run in pair])
    ratios = cpu_ratios(rows)
    if ratios:
        ratio = statistics.median(ratios)
        out.append(f"{'MET   ' if ratio <= 1.5 else 'MISSED'} server CPU per decision <= 1.5x relay-fsync-2000's: "
                   f"{ratio:.2f}x (median of {', '.join(f'{r:.2f}' for r in ratios)}, each from one repeat)")
    ratios = cpu_ratios(rows, "relay-fsync-frames-2000")
    if ratios:  # no target: the floor sending and receiving as the server does, for comparison
        out.append(f"INFO   server CPU per decision over relay-fsync-frames-2000's (the relay sending and receiving "
                   f"as the server does): {statistics.median(ratios):.2f}x "
                   f"(median of {', '.join(f'{r:.2f}' for r in ratios)})")
    big = by.get("server-3000")
    if big is not None and big.get("latency_ms"):
        server_run("3,000", big)
    watched = by.get("server-monitor-2000")
    if watched is not None and watched.get("latency_ms"):  # a lab's case: the experimenter's monitor open
        server_run("server-monitor-2000 (a monitor open): 2,000", watched)
        ratios = cpu_ratios(rows, "server-2000", "server-monitor-2000")
        if ratios:
            out.append(f"INFO   server-monitor-2000 CPU per decision over server-2000's: {statistics.median(ratios):.2f}x "
                       f"(median of {', '.join(f'{r:.2f}' for r in ratios)})")
    crash = by.get("server-crash-2000")
    if crash is not None and crash.get("latency_ms"):  # no target of its own: what the setting gives
        server_run("server-crash-2000 (SYNCLAB_DURABILITY=crash): 2,000", crash)
        pairs = p99_pairs(rows, "relay-2000", "server-crash-2000")
        if pairs:
            out.append(f"INFO   server-crash-2000 p99 over relay-2000's (neither syncs): {p99_ratio(pairs)[1]}")
        ratios = cpu_ratios(rows, "relay-2000", "server-crash-2000")
        if ratios:
            out.append(f"INFO   server-crash-2000 CPU per decision over relay-2000's: {statistics.median(ratios):.2f}x "
                       f"(median of {', '.join(f'{r:.2f}' for r in ratios)})")
    direct = by.get("server-direct-2000")
    if direct is not None and direct.get("latency_ms"):  # the same targets, with SYNCLAB_JOURNAL=off
        server_run("server-direct-2000 (SYNCLAB_JOURNAL=off): 2,000", direct)
        pairs = p99_pairs(rows, "relay-fsync-2000", "server-direct-2000")
        if pairs:
            ratio, got = p99_ratio(pairs)
            check("server-direct-2000 p99 <= 2x relay-fsync-2000's", ratio <= 2, got, *[run for pair in pairs for run in pair])
        ratios = cpu_ratios(rows, "relay-fsync-2000", "server-direct-2000")
        if ratios:
            ratio = statistics.median(ratios)
            out.append(f"{'MET   ' if ratio <= 1.5 else 'MISSED'} server-direct-2000 CPU per decision <= 1.5x "
                       f"relay-fsync-2000's: {ratio:.2f}x (median of {', '.join(f'{r:.2f}' for r in ratios)}, each from one repeat)")
    big_direct = by.get("server-direct-3000")
    if big_direct is not None and big_direct.get("latency_ms"):
        server_run("server-direct-3000 (SYNCLAB_JOURNAL=off): 3,000", big_direct)
    idle = by.get("idle")
    if idle is not None:
        check(f"{idle['wanted']} idle connections held", idle["held"] == idle["wanted"], str(idle["held"]))
        check("idle server RSS <= 600 MB", idle["target_rss_mb"] <= 600, f"{idle['target_rss_mb']:.0f} MB")
    ticks = by.get("ticks-1000")
    if ticks is not None and ticks.get("tick_lateness_ms"):
        p99 = ticks["tick_lateness_ms"]["p99"]
        check("subperiod ticks at 1,000/s p99 lateness <= 5 ms", p99 <= 5, f"{p99:.1f} ms over {ticks['ticks']} ticks", ticks)
    for name, what, limit in (("server-pg-2000", "one server on PostgreSQL", 25.0),
                              ("cluster-2000", "two workers, every group across both", 50.0)):
        r = by.get(name)
        if r is None or not r.get("latency_ms"):
            continue
        p99 = r["latency_ms"]["p99"]
        check(f"{name} ({what}) p99 <= {limit:g} ms", p99 <= limit, f"{p99:.1f} ms", r)
        check(f"{name} 0 lost", r["lost"] == 0, f"{r['lost']} of {r['sent']} sends")
        check(f"{name} 0 unpersisted", r["unpersisted"] == 0,
              f"{r['unpersisted']} (not stored at all: {r['not_stored']} of {r['sent']})")
    return out


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
                        "relay-fsync-frames-2000,server-2000,server-3000,server-monitor-2000,server-crash-2000,server-direct-2000,server-direct-3000,ticks-1000,idle,server-pg-2000,cluster-2000)")
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
