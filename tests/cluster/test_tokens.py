"""Experimenter tokens in a cluster: every worker reads the accounts from the database, so a token
made or revoked anywhere is known or refused by every worker within two seconds."""

from __future__ import annotations

import subprocess
import time

import httpx

from tests.cluster.harness import SYNCLAB, Cluster
from tests.server.harness import timeout


def _token(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SYNCLAB, "token", *args], cwd=cluster.tmp_path, env=cluster.env, capture_output=True,
                          text=True, timeout=timeout(30), check=False)


def test_a_token_revoked_once_is_refused_by_every_worker_within_two_seconds(pair: Cluster) -> None:
    """``synclab token create`` while two workers serve: both accept the token at once; after
    ``synclab token revoke`` both refuse it within two seconds (each reads the database)."""
    cluster = pair
    made = _token(cluster, "create", "ta-anna", "--role", "watch")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    headers = {"Authorization": f"Bearer {token}"}
    bases = [cluster.workers[name].base for name in ("w1", "w2")]
    for base in bases:
        assert httpx.get(f"{base}/api/experiments", headers=headers, timeout=timeout(5)).status_code == 200
    assert _token(cluster, "revoke", "ta-anna").returncode == 0
    revoked_at = time.monotonic()
    waiting = set(bases)
    while waiting:
        for base in list(waiting):
            answer = httpx.get(f"{base}/api/experiments", headers=headers, timeout=timeout(5))
            if answer.status_code == 403:
                assert "'ta-anna' was revoked" in answer.text
                waiting.discard(base)
        assert time.monotonic() - revoked_at < timeout(2.0), f"still accepted 2 s after the revoke by {sorted(waiting)}"
        time.sleep(0.05)
