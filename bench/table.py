"""The runs of a matrix as the fixed-width table ``python -m bench`` prints, with a line of its own
for each idle run, disk run, run with error frames or unreadable frames, and run on PostgreSQL or a
cluster (its costs).

Apart from the verdicts (``bench/verdicts.py``), whose rule for a disturbed run it marks with ``!``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .disk import describe
from .verdicts import LAG_LIMIT_MS, disturbed


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
            refused = f", {r['refused']} sends refused by their id (no ack latency)" if r.get("refused") else ""
            out.append(f"{r['name']}: error frames {r['errors']}{refused}")
            for code, messages in (r.get("error_messages") or {}).items():
                for message, count in sorted(messages.items(), key=lambda m: -m[1]):
                    out.append(f"    {code} x{count}: {message}")
        if r.get("unreadable_frames"):
            out.append(f"{r['name']}: {r['unreadable_frames']} frames unreadable (not a JSON text frame of the wire's "
                       "shape), counted and passed over")
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
