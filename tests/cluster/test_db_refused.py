"""``synclab db`` beside a cluster: every worker process marks the database, and a schema change
is refused while any of them runs."""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

from server.storage import SERVING_LOCK, history, make_engine
from tests.cluster.harness import Cluster
from tests.server.harness import timeout
from tests.server.test_cli import run
from tests.server.test_db_command import _mark_sessions


def test_db_downgrade_is_refused_while_any_worker_of_a_cluster_runs(cluster: Cluster, tmp_path: Path) -> None:
    """Three worker processes (one ``serve --workers 2``, one alone): each holds its own mark, and
    ``db downgrade`` names their three sessions and changes nothing; with two stopped (SIGTERM) the
    last one still blocks it; once it is stopped too, the downgrade runs."""
    cluster.start("a", None, "--workers", "2")
    cluster.start("b")
    cluster.healthy("a", "b")
    url = cluster.env["DATABASE_URL"]
    engine = make_engine(url)
    before_head = history()[0][1]
    assert before_head is not None
    env = {"DATABASE_URL": url, "REDIS_URL": cluster.env["REDIS_URL"]}
    try:
        # healthy says one of a's two workers answers: the other may still be starting
        deadline = time.monotonic() + timeout(60)
        while len(marks := _mark_sessions(engine, SERVING_LOCK)) < 3:
            assert time.monotonic() < deadline, (marks, cluster.logs("a"))
            time.sleep(0.1)
        assert len(marks) == 3, marks
        refused = run(tmp_path, "db", "downgrade", before_head, "--yes", **env)
        assert refused.returncode == 2, refused.stderr
        named = re.search(r"\(its sessions ([^)]*)\)", refused.stderr)
        assert named is not None, refused.stderr
        assert sorted(int(s.split()[0]) for s in named[1].split(", ")) == marks
        cluster.signal("a", signal.SIGTERM)
        assert cluster.wait("a", wait=60) == 0, cluster.logs("a")
        refused = run(tmp_path, "db", "downgrade", before_head, "--yes", **env)
        assert refused.returncode == 2 and "a synclab server is running" in refused.stderr, refused.stderr
        cluster.stop_all()
        done = run(tmp_path, "db", "downgrade", before_head, "--yes", **env)
        assert done.returncode == 0, done.stderr
        assert run(tmp_path, "db", "upgrade", **env).returncode == 0
    finally:
        engine.dispose()
