"""``python -m bench soak``: experiments played back to back by bots, the server's RSS over time.

A fresh ``synclab serve`` (a new SQLite file, as the other runs; ``--postgres`` for a schema of
its own on PostgreSQL) plays small experiments one after the other, ``--concurrent`` at a time,
each played to its end by the project's own bots (:func:`server.bots.run_bots`, real WebSockets),
until ``--groups`` groups have played or ``--seconds`` have passed. The server's ``VmRSS`` is
sampled every ``--sample`` seconds. The report gives the RSS at each quarter of the run with the
groups played by then, and the trend after the warm-up (the first quarter): a least-squares
line through the later samples, as MB per 1,000 groups. The target (issue 20): the RSS at the
end within 10 % of the first quarter's, and no growth trend (the line's rise over the rest of
the run under 5 % of the first quarter's RSS).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from server.bots import run_bots

from .proc import Target, cores, pin_self, rss_bytes, running, running_cluster
from .services import POSTGRES_URL, REDIS_URL, Services, postgres_schema, redis_prefix

MB = 1024 * 1024
#: the target: RSS at the end within this share of the first quarter's
WITHIN = 0.10
#: and the fitted line's rise after the warm-up under this share of it
TREND = 0.05


@dataclass(frozen=True)
class Soak:
    """What a soak run plays."""

    groups: int = 2000
    seconds: float | None = None
    group_size: int = 2
    #: groups per experiment
    per_experiment: int = 2
    period: float = 1.0
    #: decisions per second per bot
    rate: float = 4.0
    concurrent: int = 8
    sample: float = 0.5
    #: the server's ``SYNCLAB_GROUP_GRACE`` (``None``: its default)
    grace: float | None = None


@dataclass
class Sample:
    at: float
    groups: int
    rss: int


@dataclass
class Played:
    """The run so far: groups played, samples, failures."""

    groups: int = 0
    experiments: int = 0
    failures: list[str] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)


def fit(points: Sequence[tuple[float, float]]) -> float:
    """The slope of the least-squares line through ``points`` (0 for fewer than two distinct x)."""
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in points) / sxx


def at_fraction(samples: Sequence[Sample], fraction: float) -> Sample:
    """The first sample at or after ``fraction`` of the run's time."""
    start, end = samples[0].at, samples[-1].at
    when = start + (end - start) * fraction
    return next(s for s in samples if s.at >= when - 1e-9)


def summary(soak: Soak, played: Played) -> dict[str, Any]:
    """The run's figures: RSS at each quarter, the trend after the warm-up, the verdict."""
    samples = played.samples
    quarters = [at_fraction(samples, q / 4) for q in range(5)]
    first = quarters[1].rss
    later = [s for s in samples if s.at >= quarters[1].at]
    slope = fit([(s.groups, s.rss) for s in later])  # bytes per group
    span = later[-1].groups - later[0].groups if later else 0
    rise = slope * span
    end_ratio = quarters[4].rss / first if first else 0.0
    return {
        "name": "soak",
        "groups": played.groups,
        "experiments": played.experiments,
        "failures": len(played.failures),
        "failure_examples": played.failures[:5],
        "seconds": round(samples[-1].at - samples[0].at, 1),
        "settings": {"group_size": soak.group_size, "per_experiment": soak.per_experiment, "period": soak.period,
                     "rate": soak.rate, "concurrent": soak.concurrent, "grace": soak.grace},
        "quarters": [{"quarter": q, "seconds": round(s.at - samples[0].at, 1), "groups": s.groups,
                      "rss_mb": round(s.rss / MB, 1)} for q, s in enumerate(quarters)],
        "peak_rss_mb": round(max(s.rss for s in samples) / MB, 1),
        "trend_mb_per_1000_groups": round(slope * 1000 / MB, 3),
        "trend_rise_mb": round(rise / MB, 2),
        "end_vs_first_quarter": round(end_ratio, 3),
        "flat": abs(end_ratio - 1) <= WITHIN and rise <= TREND * first,
        "samples": [(round(s.at - samples[0].at, 2), s.groups, s.rss) for s in samples],
    }


def report(row: dict[str, Any]) -> str:
    """The run for people: a line per quarter, the trend and the verdict."""
    lines = [f"soak: {row['groups']} groups in {row['experiments']} experiments over {row['seconds']:g} s, "
             f"{row['failures']} failed experiments"]
    for q in row["quarters"]:
        lines.append(f"  Q{q['quarter']}  {q['seconds']:7.1f} s  {q['groups']:6d} groups  RSS {q['rss_mb']:6.1f} MB")
    first = row["quarters"][1]["rss_mb"]
    lines.append(f"  trend after the first quarter: {row['trend_mb_per_1000_groups']:+.2f} MB per 1,000 groups "
                 f"({row['trend_rise_mb']:+.1f} MB over the rest of the run); end/Q1 {row['end_vs_first_quarter']:.3f}; "
                 f"peak {row['peak_rss_mb']:.1f} MB")
    verdict = "MET   " if row["flat"] else "MISSED"
    lines.append(f"{verdict} RSS at the end within {WITHIN:.0%} of Q1 ({first:.1f} MB) and a rise under "
                 f"{TREND:.0%} of it after the warm-up")
    for failure in row["failure_examples"]:
        lines.append(f"  failed: {failure}")
    return "\n".join(lines)


async def _experiment(http: httpx.AsyncClient, target: Target, soak: Soak, played: Played) -> None:
    body = {"game": "bimatrix", "participants": soak.group_size * soak.per_experiment, "group_size": soak.group_size,
            "period_length": soak.period}
    response = await http.post(f"{target.base}/api/experiments", json=body)
    if response.status_code != 201:
        played.failures.append(f"create: HTTP {response.status_code} {response.text[:200]}")
        return
    code = response.json()["code"]
    result = await run_bots(target.base, code, target.token, rate=soak.rate, time_limit=soak.period + 30)
    if not result.ok or result.status != "done":
        played.failures.append(f"{code}: {result.summary()}")
        return
    played.experiments += 1
    played.groups += soak.per_experiment


def _rss(pids: Sequence[int]) -> int:
    """The processes' RSS together (a cluster's workers)."""
    return sum(rss_bytes(pid) for pid in pids)


async def _sampler(pids: Sequence[int], every: float, played: Played, clock: Any) -> None:
    while True:
        with contextlib.suppress(OSError, LookupError):
            played.samples.append(Sample(clock(), played.groups, _rss(pids)))
        await asyncio.sleep(every)


async def soak_targets(targets: Sequence[Target], soak: Soak) -> dict[str, Any]:
    """Play ``soak`` against running servers (a cluster's workers, of one token): each experiment
    is created on, and played through, the next one in turn; the RSS is theirs together."""
    played = Played()
    clock = time.monotonic
    started = clock()
    pids = [target.pid for target in targets]
    sampler = asyncio.create_task(_sampler(pids, soak.sample, played, clock))
    in_flight: set[asyncio.Task[None]] = set()
    turn = itertools.count()

    def more() -> bool:
        if soak.seconds is not None and clock() - started >= soak.seconds:
            return False
        return played.groups + len(in_flight) * soak.per_experiment < soak.groups

    headers = {"Authorization": f"Bearer {targets[0].token}"}
    try:
        async with httpx.AsyncClient(headers=headers, timeout=30) as http:
            while True:
                while more() and len(in_flight) < soak.concurrent:
                    target = targets[next(turn) % len(targets)]
                    in_flight.add(asyncio.create_task(_experiment(http, target, soak, played)))
                if not in_flight:
                    break
                done, _ = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    in_flight.discard(task)
                    if not task.cancelled() and task.exception() is not None:
                        played.failures.append(f"{type(task.exception()).__name__}: {task.exception()}")
                if len(played.failures) > max(10, played.experiments):
                    break  # mostly failing: stop and say so
    finally:
        for task in in_flight:
            task.cancel()
        await asyncio.gather(*in_flight, return_exceptions=True)
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
    played.samples.append(Sample(clock(), played.groups, _rss(pids)))
    row = summary(soak, played)
    row["processes"] = len(targets)
    return row


@contextlib.contextmanager
def _servers(
    soak: Soak, core: int | None, postgres: str | None, workers: int = 0, services: Services | None = None
) -> Iterator[list[Target]]:
    """One server (``workers`` 0), or a cluster of ``workers`` on ``services``' PostgreSQL and
    Redis (a schema and a key prefix of the run's own, unless ``services`` names them)."""
    env = {} if soak.grace is None else {"SYNCLAB_GROUP_GRACE": f"{soak.grace:g}"}
    if workers:
        services = services or Services(postgres=postgres or POSTGRES_URL)
        with postgres_schema(services) as database, redis_prefix(services) as prefix, \
                running_cluster(workers, core, database.url, services.redis, prefix, env=env) as cluster:
            yield list(cluster.workers)
        return
    if postgres is None:
        with running("server", core, env=env) as target:
            yield [target]
        return
    with postgres_schema(Services(postgres=postgres)) as database, \
            running("server", core, env={**env, "DATABASE_URL": database.url}) as target:
        yield [target]


async def run_soak(
    soak: Soak, core: int | None = None, postgres: str | None = None, workers: int = 0, services: Services | None = None
) -> dict[str, Any]:
    """A fresh server (or cluster of ``workers``), ``soak`` played against it, stopped again."""
    with _servers(soak, core, postgres, workers, services) as targets:
        return await soak_targets(targets, soak)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench soak",
                                     description="experiments back to back with bots; the server's RSS over time")
    parser.add_argument("--groups", type=int, default=Soak.groups, help="groups to play (default 2000)")
    parser.add_argument("--seconds", type=float, help="stop after this many seconds (even before --groups)")
    parser.add_argument("--group-size", type=int, default=Soak.group_size, help="members per group (default 2)")
    parser.add_argument("--per-experiment", type=int, default=Soak.per_experiment, help="groups per experiment (default 2)")
    parser.add_argument("--period", type=float, default=Soak.period, help="period length in seconds (default 1)")
    parser.add_argument("--rate", type=float, default=Soak.rate, help="decisions per second per bot (default 4)")
    parser.add_argument("--concurrent", type=int, default=Soak.concurrent, help="experiments at once (default 8)")
    parser.add_argument("--sample", type=float, default=Soak.sample, help="seconds between RSS samples (default 0.5)")
    parser.add_argument("--grace", type=float, help="the server's SYNCLAB_GROUP_GRACE (default: the server's, 2 s)")
    parser.add_argument("--postgres", nargs="?", const=POSTGRES_URL, metavar="URL",
                        help=f"run the server on PostgreSQL, in a schema of its own (default URL {POSTGRES_URL})")
    parser.add_argument("--cluster", type=int, default=0, metavar="N",
                        help="a cluster of N workers on PostgreSQL (--postgres, or its default) and Redis; experiments "
                             "taken by the workers in turn, the RSS of all of them together")
    parser.add_argument("--redis", default=REDIS_URL, help=f"Redis for --cluster (a key prefix of the run's own; default {REDIS_URL})")
    parser.add_argument("--no-pin", action="store_true", help="do not pin the server and this process to cores")
    parser.add_argument("--out", help="also write the run (every sample) as one JSON line to this file")
    args = parser.parse_args(argv)
    if args.groups < 1 or args.group_size < 1 or args.per_experiment < 1 or args.concurrent < 1 \
            or args.period <= 0 or args.rate <= 0 or args.sample <= 0 or (args.seconds is not None and args.seconds <= 0) \
            or args.cluster < 0 or args.cluster == 1:
        parser.error("counts must be >= 1 and times > 0; --cluster takes 2 workers or more")
    soak = Soak(args.groups, args.seconds, args.group_size, args.per_experiment, args.period, args.rate,
                args.concurrent, args.sample, args.grace)
    target_core, generator_core = (None, None) if args.no_pin else cores()
    pin_self(generator_core)
    services = Services(postgres=args.postgres or POSTGRES_URL, redis=args.redis)
    row = asyncio.run(run_soak(soak, target_core, args.postgres, args.cluster, services))
    print(report(row))
    if args.out:
        with open(args.out, "ab") as f:
            f.write(orjson.dumps(row) + b"\n")
    return 0 if row["failures"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
