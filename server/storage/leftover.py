"""The connections a process that died (kill -9, a power cut) left open.

A socket's close is stored with the writes of its member's departure; a process that died
stores nothing more, so its connections stay open in the table for ever: the participant shows
as connected in the progress and the monitor's snapshot, and the export has a connection that
never ended. One server on its own database is the only writer of that table, so every
connection still open when it starts is such a leftover: it is closed at the start, with the
WebSocket code for a connection lost without a close frame (1006) and the time of the start —
the moment it was known to be gone, not the moment it went, which nobody stored. (A cluster's
worker cannot tell the connections of a dead worker from those of the live ones, so it leaves
them; see the README.)
"""

from __future__ import annotations

from sqlalchemy import Engine, update

from .tables import connections
from .times import to_datetime

#: a connection lost without a close frame (RFC 6455, 7.1.5)
LOST = 1006


def close_connections_left_open(engine: Engine, at: float) -> int:
    """Close every connection still open, at ``at`` (epoch seconds) with code 1006; how many."""
    with engine.begin() as conn:
        closed = conn.execute(
            update(connections)
            .where(connections.c.disconnected_at.is_(None))
            .values(disconnected_at=to_datetime(at), close_code=LOST)
        )
        return int(closed.rowcount or 0)
