"""``python -m bench soak`` tiny: a real ``synclab serve``, the project's bots, a few groups; and its verdict."""

from __future__ import annotations

import asyncio

from bench.services import Services
from bench.soak import MB, Played, Sample, Soak, fit, report, run_soak, summary
from tests.server.harness import timeout


async def test_a_tiny_soak_plays_every_group_and_samples_the_rss() -> None:
    soak = Soak(groups=4, group_size=2, per_experiment=2, period=0.3, concurrent=2, sample=0.05, grace=0.2)
    async with asyncio.timeout(timeout(60)):
        row = await run_soak(soak)
    assert row["failures"] == 0, row["failure_examples"]
    assert row["groups"] == 4 and row["experiments"] == 2
    assert [q["quarter"] for q in row["quarters"]] == [0, 1, 2, 3, 4]
    assert row["quarters"][-1]["groups"] == 4
    assert all(20 < q["rss_mb"] < 2000 for q in row["quarters"])
    assert len(row["samples"]) >= 5
    text = report(row)
    assert "Q4" in text and "4 groups in 2 experiments" in text


async def test_a_tiny_soak_on_a_cluster_plays_every_group_on_both_workers(
    postgres_url: str, redis_url: str, redis_prefix: str
) -> None:
    """Two real workers on the test's PostgreSQL schema and Redis prefix: the experiments are
    created and played on each in turn, and the RSS sampled is theirs together."""
    soak = Soak(groups=4, group_size=2, per_experiment=1, period=0.3, concurrent=2, sample=0.05, grace=0.2)
    services = Services(redis=redis_url, database_url=postgres_url, prefix=redis_prefix)
    async with asyncio.timeout(timeout(90)):
        row = await run_soak(soak, workers=2, services=services)
    assert row["failures"] == 0, row["failure_examples"]
    assert row["groups"] == 4 and row["experiments"] == 4 and row["processes"] == 2
    assert all(40 < q["rss_mb"] < 4000 for q in row["quarters"])  # two servers' RSS together


def run(rss: list[float]) -> dict[str, object]:
    """A run of samples one second apart, ten groups per sample, with these RSS figures (MB)."""
    played = Played(groups=10 * (len(rss) - 1), experiments=5 * (len(rss) - 1))
    played.samples = [Sample(float(i), 10 * i, int(mb * MB)) for i, mb in enumerate(rss)]
    return summary(Soak(), played)


def test_the_verdict_takes_a_flat_run_and_refuses_a_growing_one() -> None:
    assert fit([(0, 1), (1, 3), (2, 5)]) == 2.0
    assert fit([(1, 1)]) == 0.0
    flat = run([60, 80, 81, 80, 82, 80, 81, 80, 81])
    assert flat["flat"] is True
    growing = run([60, 80, 82, 84, 86, 88, 90, 92, 94])  # +1.7 % a sample: within 10 % at the end? no
    assert growing["flat"] is False
    creeping = run([60, 80, 80.5, 81, 81.5, 82, 82.5, 83, 83.5])  # 4 % at the end, but a steady rise of 4 %
    assert creeping["end_vs_first_quarter"] < 1.1
    assert creeping["trend_mb_per_1000_groups"] > 0
