"""``SYNCLAB_HEARTBEAT_SECONDS``: the heartbeat's TTL, and every other time of the heartbeat in
proportion to it (the cluster tests' workers run at 2 s: tests/cluster/harness.py)."""

from __future__ import annotations

import pytest

from server.cluster.heartbeats import BeatTimes
from server.exceptions import SettingsError
from server.settings import Settings

CLUSTER = {"DATABASE_URL": "postgresql://127.0.0.1/x", "REDIS_URL": "redis://127.0.0.1:6379/0"}


def test_the_heartbeat_is_5_s_by_default_with_a_beat_every_second_and_a_sweep_every_two() -> None:
    """Unset: the times before it was a setting (a beat every 1 s, gone after 5, swept every 2 and
    closed after 5 more, 6 s of rechecks after a gap)."""
    settings = Settings.from_env(CLUSTER)
    assert settings.heartbeat_seconds == 5.0
    times = BeatTimes(settings.heartbeat_seconds)
    assert (times.ttl, times.every, times.sweep_every, times.gone_after, times.recheck_for) == (5, 1, 2, 5, 6)
    assert Settings().heartbeat_seconds == 5.0


def test_every_time_of_the_heartbeat_follows_the_setting_in_proportion() -> None:
    settings = Settings.from_env({**CLUSTER, "SYNCLAB_HEARTBEAT_SECONDS": "2"})
    assert settings.heartbeat_seconds == 2.0
    settings.check()
    times = BeatTimes(settings.heartbeat_seconds)
    assert (times.every, times.sweep_every, times.gone_after) == pytest.approx((0.4, 0.8, 2.0))
    assert times.recheck_for == pytest.approx(2.4)


@pytest.mark.parametrize(("given", "message"), [
    ("0.1", "SYNCLAB_HEARTBEAT_SECONDS: expected a number from 0.5 to 60, got '0.1'"),
    ("600", "SYNCLAB_HEARTBEAT_SECONDS: expected a number from 0.5 to 60, got '600'"),
    ("soon", "SYNCLAB_HEARTBEAT_SECONDS: expected a number, got 'soon'"),
])
def test_a_heartbeat_out_of_its_range_is_refused_in_one_line(given: str, message: str) -> None:
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({**CLUSTER, "SYNCLAB_HEARTBEAT_SECONDS": given})
    assert str(refused.value) == message
