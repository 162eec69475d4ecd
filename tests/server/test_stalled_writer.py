"""A writer process stopped in the middle of a batch (SIGSTOP) does not hold its groups' takeover.

A batch locks its groups' rows (the fence) until its commit; a process frozen in between would
keep them locked, and :func:`claim_group` of the worker taking over would wait as long. Two
places to be stopped at, each with what frees the rows:

- between two round trips (the fence on its own, when a batch cannot fence in its pipeline):
  the writer's connection has ``idle_in_transaction_session_timeout`` (the lease time in a
  server), and PostgreSQL ends the frozen session itself;
- inside the pipeline that fences, numbers and stores a batch in one round trip: PostgreSQL
  sees that session as active, waiting for the rest, and never times it out; the cluster's
  workers end it (:func:`end_stalled_writers`, which the test runs as a worker's loop does).

A real process, a real signal, the real ``commit_writes``, on the machine's PostgreSQL.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, select

from server.storage import (
    claim_group,
    create_schema,
    end_stalled_writers,
    make_engine,
    writer_connection,
)
from server.storage import groups as groups_table
from tests.server.harness import timeout
from tests.server.test_cli import HEALTHY_SECONDS
from tests.server.test_fencing import stored_values, two_groups

ROOT = Path(__file__).resolve().parents[2]
STALL = 1.0
#: the stopped writer's session timeout where PostgreSQL ends it by itself (the fence on its own):
#: the test looks at the locked row between the stop and that end, which at 1 s a loaded machine
#: could miss (the row free already, the test failed though the takeover was right)
ROUND_TRIP_STALL = 4.0

#: commit a decision of group argv[2] (epoch 1) through the writer's connection, and stop this
#: process (SIGSTOP) once the group's row is locked: argv[6] "round-trip", right after the fence
#: on its own (the batch has a stale write of the group too, so it cannot fence in its pipeline),
#: or "pipeline", inside the pipeline, after the fence was sent and before the counter's raise
STOPPED_IN_A_BATCH = textwrap.dedent("""
    import os, signal, sys
    from server.storage import commit_writes, make_engine, prepared, writer_connection
    from tests.server.test_fencing import decision

    url, experiment_id, group_id, participant_id, stall, where = sys.argv[1:7]
    engine = make_engine(url)
    rows, run = prepared.Prepared.rows, prepared.Prepared.run

    def stop():
        print("locked", flush=True)
        os.kill(os.getpid(), signal.SIGSTOP)

    def stop_after_the_fence(self, cursor, row):  # the fence's own round trip
        found = rows(self, cursor, row)
        if "FOR UPDATE" in self.sql:
            stop()
        return found

    def stop_before_the_counter(self, cursor, batch):  # in the pipeline, the fence sent before it
        if "last_seq" in self.sql and "RETURNING" in self.sql.upper():
            stop()
        return run(self, cursor, batch)

    eid, gid, pid = int(experiment_id), int(group_id), int(participant_id)
    writes = [decision(eid, gid, pid, 0.5, 1)]
    if where == "round-trip":
        writes.insert(0, decision(eid, gid, pid, 0.25, 0))
        prepared.Prepared.rows = stop_after_the_fence
    else:
        prepared.Prepared.run = stop_before_the_counter

    conn = writer_connection(engine, float(stall))
    try:
        commit_writes(conn, writes)
    except Exception as exc:
        print(f"refused: {type(exc).__name__}", flush=True)
        sys.exit(3)
    print("stored", flush=True)
""")


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _named(url: str, name: str) -> str:
    """``url`` with ``application_name``: a test's writers are told from other tests' (run beside it)."""
    return url + ("&" if "?" in url else "?") + f"application_name={name}"


def _locked(engine: Engine, group_id: int) -> bool:
    with engine.connect() as conn:
        free = conn.execute(select(groups_table.c.id).where(groups_table.c.id == group_id)
                            .with_for_update(skip_locked=True)).all()
        conn.rollback()
    return not free


@pytest.mark.parametrize("where", ["round-trip", "pipeline"])
def test_a_writer_stopped_inside_a_batch_frees_its_groups_after_the_stall_timeout(postgres_url: str, where: str) -> None:
    postgres_url = _named(postgres_url, f"lab-{secrets.token_hex(4)}")
    stall = ROUND_TRIP_STALL if where == "round-trip" else STALL
    engine = make_engine(postgres_url)
    create_schema(engine)
    reaping = threading.Event()
    done = threading.Event()

    def a_workers_loop() -> None:  # what every cluster worker runs (Node._stalled_loop)
        while not done.wait(STALL / 4):
            if reaping.is_set():
                end_stalled_writers(engine, STALL)

    reaper = threading.Thread(target=a_workers_loop, daemon=True)
    reaper.start()
    try:
        experiment_id, (g1, _g2), (p1, *_rest) = two_groups(engine)
        assert claim_group(engine, g1, 1)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))}
        stopped = subprocess.Popen(
            [sys.executable, "-c", STOPPED_IN_A_BATCH, postgres_url, str(experiment_id), str(g1), str(p1), str(stall), where],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        try:
            # its imports come first: 8 to 20 s on a loaded machine (30 s was a close bound)
            deadline = time.monotonic() + timeout(HEALTHY_SECONDS)
            while _state(stopped.pid) != "T":
                assert stopped.poll() is None, stopped.stdout.read() if stopped.stdout else ""
                assert time.monotonic() < deadline, "the writer never stopped inside its batch"
                time.sleep(0.02)
            assert _locked(engine, g1)  # the frozen batch holds the group's row
            if where == "pipeline":
                # PostgreSQL's own timeouts do not end a session stopped inside a pipeline
                time.sleep(STALL + 0.5)
                assert _locked(engine, g1), "PostgreSQL ended a session stopped inside a pipeline by itself"
                reaping.set()
            else:
                reaping.set()  # would change nothing: PostgreSQL ends this one by itself

            started = time.monotonic()
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                claim = pool.submit(claim_group, engine, g1, 2)
                try:
                    assert claim.result(timeout=stall + 10), "the takeover's claim was refused"
                except concurrent.futures.TimeoutError:
                    os.kill(stopped.pid, signal.SIGCONT)  # let the claim finish before failing
                    pytest.fail("the takeover waited for the stopped writer")
            waited = time.monotonic() - started
            assert waited < stall + 2, f"the claim waited {waited:.2f} s"

            os.kill(stopped.pid, signal.SIGCONT)
            out, _ = stopped.communicate(timeout=timeout(30))
            assert stopped.returncode == 3 and "refused" in out, out  # its session was ended: nothing stored
        finally:
            if stopped.poll() is None:
                os.kill(stopped.pid, signal.SIGCONT)
                stopped.kill()
                stopped.wait()
        assert stored_values(engine, experiment_id) == []
        with engine.connect() as conn:
            assert conn.execute(select(groups_table.c.epoch).where(groups_table.c.id == g1)).scalar() == 2
    finally:
        done.set()
        reaper.join(5)
        engine.dispose()


def test_only_writer_sessions_waiting_inside_a_batch_past_the_timeout_are_ended(postgres_url: str) -> None:
    """A writer's session keeps the name its URL gave; :func:`end_stalled_writers` ends a writer's
    session that has waited for its client inside a pipeline for over the timeout, and neither a
    writer's that waited less, nor another client's, nor another lab's writer's that waited as long."""
    lab, other = f"lab-{secrets.token_hex(4)}", f"lab-{secrets.token_hex(4)}"
    engine, other_engine = make_engine(_named(postgres_url, lab)), make_engine(_named(postgres_url, other))
    create_schema(engine)
    connections = [
        writer_connection(engine, STALL), engine.connect(), writer_connection(other_engine, STALL), writer_connection(engine, STALL)
    ]
    try:
        raws: list[Any] = [c.connection.dbapi_connection for c in connections]
        assert [r.info.parameter_status("application_name") for r in raws] == [
            f"{lab} synclab-writer", lab, f"{other} synclab-writer", f"{lab} synclab-writer"
        ]
        pipelines = [contextlib.ExitStack() for _ in raws]
        for stack, raw in zip(pipelines[:3], raws[:3], strict=True):  # inside a pipeline, waiting
            stack.enter_context(raw.pipeline())
            raw.execute("SELECT count(*) FROM groups")
        time.sleep(STALL + 0.3)
        pipelines[3].enter_context(raws[3].pipeline())  # the same, but not for long
        raws[3].execute("SELECT count(*) FROM groups")
        ended = end_stalled_writers(engine, STALL)
        assert ended == [raws[0].info.backend_pid]
        with pytest.raises(psycopg.OperationalError):
            pipelines[0].close()
        for stack, raw in zip(pipelines[1:], raws[1:], strict=True):
            stack.close()
            raw.commit()
            assert raw.execute("SELECT 1").fetchone() == (1,)
    finally:
        for c in connections:
            with contextlib.suppress(Exception):
                c.invalidate()
        engine.dispose()
        other_engine.dispose()
