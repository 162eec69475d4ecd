"""The cluster tests' workers (:func:`tests.cluster.harness.running_cluster`)."""

from __future__ import annotations

import pytest

from tests.cluster.harness import running_cluster

cluster = pytest.fixture(name="cluster")(running_cluster)
