"""Participants' statuses: how each one's run ended, set in the writer's transaction.

``participants.status`` is empty while a participant plays; ``finished`` once their last block's
period ends with a human at the seat; ``dropped`` while (and if, at the end) a server-side bot
plays for them after they left; ``replaced`` once they came back to a seat a bot had played;
``bot`` for a seat a bot fills from the lobby; ``no_group`` for an arrival the lobby released.
``finished`` and ``bot`` are only set on an empty status (a run that was ``replaced`` stays so
when it finishes); ``dropped`` and ``replaced`` follow each other, but never change ``bot`` or
``no_group``. The live groups name the changes (:attr:`.writes.Write.statuses`); the rules
are here, checked against the stored status in the same transaction.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import and_, or_, update
from sqlalchemy.engine import Connection

from .tables import participants

STATUSES = ("finished", "dropped", "replaced", "bot", "no_group")
#: set only on an empty status
ONLY_FIRST = frozenset({"finished", "bot"})
#: never changed once set
FINAL_STATUSES = ("bot", "no_group")


def set_statuses(conn: Connection, changes: Sequence[tuple[int, str]]) -> None:
    """Apply ``(participant id, status)`` changes in order, by the rules above (rarely many)."""
    for participant_id, status in changes:
        if status not in STATUSES:
            raise ValueError(f"expected a status in {list(STATUSES)}, got {status!r}")
        empty = participants.c.status.is_(None)
        allowed = empty if status in ONLY_FIRST else or_(empty, participants.c.status.not_in(FINAL_STATUSES))
        conn.execute(
            update(participants).where(and_(participants.c.id == participant_id, allowed)).values(status=status)
        )
