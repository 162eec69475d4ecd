"""The writer's session on PostgreSQL: kept between batches, and ended by the others when it stalls.

A batch holds its groups' rows locked (the fence) until its commit; a writer process stopped in
the middle of one (SIGSTOP, a frozen VM) must not hold them, and the takeover of its groups, for
as long as it stays stopped (see :func:`writer_connection` and :func:`end_stalled_writers`).
"""

from __future__ import annotations

import logging

from sqlalchemy import Engine
from sqlalchemy.engine import Connection

log = logging.getLogger("synclab.database")


def writer_connection(engine: Engine, stall_timeout: float | None = None) -> Connection:
    """The writer thread's own connection, kept between batches (see :meth:`Database._commit`).

    On PostgreSQL with ``stall_timeout``, the server ends the session once it has sat that many
    seconds inside a transaction between two statements (``idle_in_transaction_session_timeout``).
    A batch holds its groups' rows locked (the fence) until its commit: a process stopped in the
    middle of one (SIGSTOP, a VM frozen, a debugger) would hold them, and with them the takeover
    of those groups by another worker (:func:`claim_group` waits for the rows), for as long as it
    stays stopped. With the timeout, its transaction is rolled back and the rows are free after
    ``stall_timeout`` seconds; a batch of a live writer never pauses that long between statements
    (if it did, the batch fails and its writes are refused, never half stored).

    That timeout does not cover a process stopped inside a pipeline (:func:`.batch._commit_pipelined`):
    until the pipeline's end, its session is "active", waiting for the rest. So the session's
    ``application_name`` ends in :data:`WRITER_NAME`, and the cluster's workers end any such session that has waited
    for its client inside a transaction longer than ``stall_timeout`` (:func:`end_stalled_writers`).
    """
    conn = engine.connect()
    if stall_timeout is not None and engine.dialect.name == "postgresql":
        conn.exec_driver_sql(f"SET idle_in_transaction_session_timeout = {max(1, round(stall_timeout * 1000))}")
        # the name the URL gave (its first 40 characters), and what the session is to synclab
        conn.exec_driver_sql(f"SELECT set_config('application_name', {_WRITER_NAMED}, false)", {"name": WRITER_NAME})
        conn.commit()
    return conn


#: the end of a writer's session's ``application_name`` on PostgreSQL, after the one its URL
#: gave, if any (see :func:`writer_connection`)
WRITER_NAME = "synclab-writer"
#: SQL: the ``application_name`` of a writer's session on the URL of the session that asks (the
#: one the session started with, whatever it was set to since)
_WRITER_NAMED = (
    "ltrim(left((SELECT reset_val FROM pg_settings WHERE name = 'application_name'), 40) || ' ' || %(name)s)"
)


def end_stalled_writers(engine: Engine, stall_timeout: float) -> list[int]:
    """End the writers' sessions (named so: :data:`WRITER_NAME`) of this database that have been waiting for
    their client for over ``stall_timeout`` seconds in the middle of a transaction; their pids.

    What ``idle_in_transaction_session_timeout`` does for a session between two statements, for
    one stopped inside a pipeline, which PostgreSQL reports as active and waiting to read from
    its client (``ClientRead``) and times out never: its transaction is rolled back, and the rows
    it held (its groups', its experiments' counters) are free for the others. A live writer sends
    a batch's statements within milliseconds. Only the sessions of this role (or all, for a
    member of ``pg_read_all_stats`` and ``pg_signal_backend``) can be seen and ended, and only
    the writers of a URL with the same ``application_name`` as ``engine``'s (the same cluster's,
    not another lab's on the same database).
    """
    with engine.connect() as conn:
        ended = conn.exec_driver_sql(
            # materialized: the sessions are chosen before any is ended (a WHERE's order is the planner's)
            "WITH stalled AS MATERIALIZED (SELECT pid FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            f" AND application_name = {_WRITER_NAMED}"
            " AND state = 'active' AND wait_event = 'ClientRead' AND xact_start IS NOT NULL"
            " AND state_change < clock_timestamp() - make_interval(secs => %(stall)s))"
            " SELECT pid FROM stalled WHERE pg_terminate_backend(pid)",
            {"name": WRITER_NAME, "stall": float(stall_timeout)},
        ).scalars().all()
        conn.commit()
    pids = [int(pid) for pid in ended]
    if pids:
        log.warning(
            "ended the database sessions %s: writers stopped inside a batch for over %g s, holding its rows",
            ", ".join(map(str, pids)), stall_timeout,
        )
    return pids
