"""The cluster tests' harness waits for its own workers: a port another process took is not theirs."""

from __future__ import annotations

import httpx

from tests.cluster.harness import TOKEN, Cluster, Worker
from tests.server.harness import timeout
from tests.server.test_cli import another_server, listens


def test_a_worker_whose_port_another_server_took_starts_on_another(cluster: Cluster) -> None:
    """The port the harness chose for a worker is taken before the worker binds it, by a server
    that answers ``/healthz`` (another test process's did, and the test's calls went to it and were
    refused for their token): the worker, refused that port, starts again on another, and the
    harness waits for it there."""
    with another_server() as taken:
        cluster.workers["w1"] = Worker("w1", taken, cluster.tmp_path / "w1.log")
        cluster.up("w1")
        w1 = cluster.workers["w1"]
        assert w1.port != taken and w1.served
        assert w1.process is not None and listens(w1.process.pid, w1.port)
        assert not listens(w1.process.pid, taken)
        assert f"cannot listen on 127.0.0.1:{taken}" in cluster.log_text("w1")
        answer = httpx.get(f"{w1.base}/api/experiments", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=timeout(10))
        assert answer.status_code == 200, answer.text
