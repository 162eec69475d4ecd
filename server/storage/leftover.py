"""The connections a process that died (kill -9, a power cut) left open.

A socket's close is stored with the writes of its member's departure; a process that died
stores nothing more, so its connections stay open in the table for ever: the participant shows
as connected in the progress and the monitor's snapshot, and the export has a connection that
never ended. One server on its own database is the only writer of that table, so every
connection still open when it starts is such a leftover: it is closed at the start, with the
WebSocket code for a connection lost without a close frame (1006) and the time of the start —
the moment it was known to be gone, not the moment it went, which nobody stored.

In a cluster each row names the worker that holds the socket (``worker``): the other workers
close the rows of a worker whose heartbeat has stopped (:mod:`server.cluster.heartbeats`), in the
same way. A row without a worker was stored by one process (or before workers were named): in a
cluster no live worker holds it. A worker that was only unheard of (Redis away, the process
paused) still holds its sockets when it is heard again: it asks which of them were closed so
(:func:`closed_among`) and has them reconnect, which stores their close and a new connection.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine, select, update

from .tables import connections
from .times import to_datetime

#: a connection lost without a close frame (RFC 6455, 7.1.5)
LOST = 1006


def close_connections_left_open(engine: Engine, at: float) -> int:
    """Close every connection still open, at ``at`` (epoch seconds) with code 1006; how many."""
    return _close_open(engine, at)


def workers_with_open_connections(engine: Engine) -> set[str | None]:
    """The workers named by the connections still open (``None``: rows without one)."""
    with engine.connect() as conn:
        found = conn.execute(select(connections.c.worker).where(connections.c.disconnected_at.is_(None)).distinct())
        return {row[0] for row in found}


def close_connections_of(engine: Engine, worker: str | None, at: float) -> int:
    """Close the connections ``worker`` left open (``None``: those without a worker), at ``at``
    with code 1006; how many."""
    return _close_open(engine, at, connections.c.worker.is_(None) if worker is None else connections.c.worker == worker)


#: ids per statement in :func:`closed_among` (a worker may hold thousands of sockets)
IDS_PER_LOOK = 500


def closed_among(engine: Engine, worker: str, ids: Sequence[str]) -> set[str]:
    """Which of the connections ``ids`` of ``worker`` the table has closed."""
    found: set[str] = set()
    with engine.connect() as conn:
        for start in range(0, len(ids), IDS_PER_LOOK):
            rows = conn.execute(
                select(connections.c.id).where(
                    connections.c.worker == worker,
                    connections.c.disconnected_at.is_not(None),
                    connections.c.id.in_(ids[start : start + IDS_PER_LOOK]),
                )
            )
            found.update(row[0] for row in rows)
    return found


def _close_open(engine: Engine, at: float, *where: Any) -> int:
    with engine.begin() as conn:
        closed = conn.execute(
            update(connections)
            .where(connections.c.disconnected_at.is_(None), *where)
            .values(disconnected_at=to_datetime(at), close_code=LOST)
        )
        return int(closed.rowcount or 0)
