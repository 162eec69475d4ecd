"""``SYNCLAB_SHED_AFTER`` and ``SYNCLAB_SHED_EVERY``: how long a busy worker waits before it hands a
group over, and then between two hand-overs (the cluster tests' workers run at 2 and 0.5 s:
tests/cluster/harness.py; the hand-over itself: tests/cluster/test_busy.py)."""

from __future__ import annotations

import pytest

from server.cluster.node import Node
from server.cluster.placement import SHED_AFTER, SHED_EVERY
from server.exceptions import SettingsError
from server.settings import Settings

CLUSTER = {"DATABASE_URL": "postgresql://127.0.0.1/x", "REDIS_URL": "redis://127.0.0.1:6379/0"}


def test_a_busy_worker_hands_a_group_over_after_5_s_and_then_one_every_2_s_by_default() -> None:
    """Unset: the times before they were settings."""
    settings = Settings.from_env(CLUSTER)
    assert (settings.shed_after, settings.shed_every) == (SHED_AFTER, SHED_EVERY) == (5.0, 2.0)
    assert (Settings().shed_after, Settings().shed_every) == (5.0, 2.0)


def test_the_worker_hands_groups_over_at_the_times_set() -> None:
    """A worker's node takes both from the settings (nothing connects before it starts)."""
    settings = Settings.from_env({**CLUSTER, "SYNCLAB_SHED_AFTER": "1.5", "SYNCLAB_SHED_EVERY": "0.25"})
    settings.check()
    node = Node(settings, None, worker="w")  # type: ignore[arg-type]  # no database needed before start
    assert (node.shed_after, node.shed_every) == (1.5, 0.25)


@pytest.mark.parametrize(("name", "given", "message"), [
    ("SYNCLAB_SHED_AFTER", "0.1", "SYNCLAB_SHED_AFTER: expected a number from 0.5 to 3600, got '0.1'"),
    ("SYNCLAB_SHED_AFTER", "1e5", "SYNCLAB_SHED_AFTER: expected a number from 0.5 to 3600, got '1e5'"),
    ("SYNCLAB_SHED_AFTER", "soon", "SYNCLAB_SHED_AFTER: expected a number, got 'soon'"),
    ("SYNCLAB_SHED_EVERY", "0", "SYNCLAB_SHED_EVERY: expected a number from 0.1 to 600, got '0'"),
    ("SYNCLAB_SHED_EVERY", "nan", "SYNCLAB_SHED_EVERY: expected a number from 0.1 to 600, got 'nan'"),
    ("SYNCLAB_SHED_EVERY", "-2", "SYNCLAB_SHED_EVERY: expected a number from 0.1 to 600, got '-2'"),
])
def test_a_shed_time_out_of_its_range_is_refused_in_one_line(name: str, given: str, message: str) -> None:
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({**CLUSTER, name: given})
    assert str(refused.value) == message
