"""A writer process stopped in the middle of a batch (SIGSTOP) does not hold its groups' takeover.

The batch's fence locks its groups' rows until the commit; a process frozen in between would
keep them locked, and :func:`claim_group` of the worker taking over would wait as long. On
PostgreSQL the writer's connection has ``idle_in_transaction_session_timeout`` (the lease time
in a server): the server ends the frozen session and the claim goes through. A real process,
a real signal, the real ``commit_writes``, on the machine's PostgreSQL.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from server.storage import claim_group, create_schema, make_engine
from server.storage import groups as groups_table
from tests.server.test_fencing import stored_values, two_groups

ROOT = Path(__file__).resolve().parents[2]
STALL = 1.0

#: commit one decision of group argv[2] (epoch 1) through the writer's connection, and stop
#: this process (SIGSTOP) right after the fence has locked the group's row
STOPPED_IN_A_BATCH = textwrap.dedent("""
    import os, signal, sys
    from server.storage import commit_writes, make_engine, prepared, writer_connection
    from tests.server.test_fencing import decision

    url, experiment_id, group_id, participant_id, stall = sys.argv[1:6]
    engine = make_engine(url)
    rows = prepared.Prepared.rows

    def stop_after_the_fence(self, cursor, row):  # the fence runs on the driver's cursor
        found = rows(self, cursor, row)
        if "FOR UPDATE" in self.sql:
            print("locked", flush=True)
            os.kill(os.getpid(), signal.SIGSTOP)
        return found

    prepared.Prepared.rows = stop_after_the_fence

    conn = writer_connection(engine, float(stall) if stall != "none" else None)
    try:
        commit_writes(conn, [decision(int(experiment_id), int(group_id), int(participant_id), 0.5, 1)])
    except Exception as exc:
        print(f"refused: {type(exc).__name__}", flush=True)
        sys.exit(3)
    print("stored", flush=True)
""")


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_a_writer_stopped_inside_a_batch_frees_its_groups_after_the_stall_timeout(postgres_url: str) -> None:
    engine = make_engine(postgres_url)
    create_schema(engine)
    try:
        experiment_id, (g1, _g2), (p1, *_rest) = two_groups(engine)
        assert claim_group(engine, g1, 1)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))}
        stopped = subprocess.Popen(
            [sys.executable, "-c", STOPPED_IN_A_BATCH, postgres_url, str(experiment_id), str(g1), str(p1), str(STALL)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        try:
            deadline = time.monotonic() + 30
            while _state(stopped.pid) != "T":
                assert stopped.poll() is None, stopped.stdout.read() if stopped.stdout else ""
                assert time.monotonic() < deadline, "the writer never stopped inside its batch"
                time.sleep(0.02)
            with engine.connect() as conn:  # the frozen batch holds the group's row
                locked = conn.execute(select(groups_table.c.id).where(groups_table.c.id == g1)
                                      .with_for_update(skip_locked=True)).all()
                assert locked == []
                conn.rollback()

            started = time.monotonic()
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                claim = pool.submit(claim_group, engine, g1, 2)
                try:
                    assert claim.result(timeout=STALL + 10), "the takeover's claim was refused"
                except concurrent.futures.TimeoutError:
                    os.kill(stopped.pid, signal.SIGCONT)  # let the claim finish before failing
                    pytest.fail("the takeover waited for the stopped writer")
            waited = time.monotonic() - started
            assert waited < STALL + 2, f"the claim waited {waited:.2f} s"

            os.kill(stopped.pid, signal.SIGCONT)
            out, _ = stopped.communicate(timeout=30)
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
        engine.dispose()
