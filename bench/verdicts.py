"""The verdicts on a matrix's rows: the targets of issue 6, each met or missed, and how repeated
and disturbed runs are weighed (the median run; a ratio per repeat; a disturbed run left out).

Apart from the table (``bench/table.py``) and the command line: these are the judgements, which
the tests check on rows made by hand, and the table marks a disturbed run by the same rule.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

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
        """One server case's latency and counts: p99 <= 25 ms, p50 <= 3 ms, 0 lost, 0 refused, 0 unpersisted."""
        lat = r["latency_ms"]
        check(f"{rate}/s p99 <= 25 ms", lat["p99"] <= 25, f"{lat['p99']:.1f} ms", r)
        check(f"{rate}/s p50 <= 3 ms", lat["p50"] <= 3, f"{lat['p50']:.1f} ms", r)
        check(f"{rate}/s 0 lost", r["lost"] == 0, str(r["lost"]))
        check(f"{rate}/s 0 refused", r.get("refused", 0) == 0, str(r.get("refused", 0)))
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
        check(f"{name} 0 refused", r.get("refused", 0) == 0, f"{r.get('refused', 0)} of {r['sent']} sends")
        check(f"{name} 0 unpersisted", r["unpersisted"] == 0,
              f"{r['unpersisted']} (not stored at all: {r['not_stored']} of {r['sent']})")
    return out
