"""Participants' statuses: how each one's run ended, set in the writer's transaction.

``participants.status`` is empty while a participant plays. Their last block's period end
(whether it ran its length or the experimenter ended it) makes it ``finished`` when every one
of their blocks was played (each session started and ended: completion ``possible`` of
``possible``), else ``cancelled``: the experimenter ended the experiment, or a group of theirs,
before they had played every block (they never came, or played some blocks). ``dropped`` while
(and if, at the end) a server-side bot plays for them after they left; ``replaced`` once they
came back to a seat a bot had played; ``bot`` for a seat a bot fills from the lobby;
``no_group`` for an arrival the lobby released. ``finished``, ``cancelled`` and ``bot`` are only
set on an empty status (a run that was ``replaced`` stays so when it ends); ``dropped`` and
``replaced`` follow each other, but never change ``bot`` or ``no_group``. The live groups name
the changes (:attr:`.writes.Write.statuses`: ``finished`` for every member at the last block's
period end, the choice between it and ``cancelled`` is made here, from the sessions this
transaction has just finished); the rules are here, checked against the stored rows in the same
transaction.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import and_, case, or_, select, update
from sqlalchemy.engine import Connection

from .tables import participants, sessions

STATUSES = ("finished", "cancelled", "dropped", "replaced", "bot", "no_group")
#: set only on an empty status
ONLY_FIRST = frozenset({"finished", "cancelled", "bot"})
#: never changed once set
FINAL_STATUSES = ("bot", "no_group")
#: the statuses of a run that is over; ``dropped`` and ``replaced`` are set as they happen, while
#: a bot or the participant still plays the seat (over once every block of theirs was played)
RUN_OVER = frozenset({"finished", "cancelled", "bot", "no_group"})
#: a seat a bot played at some time (a fill's; a dropout's, whether they came back or not): no
#: other participant ever had one in their seat, whose group's log records it (:data:`STANDIN`);
#: which blocks' seats a bot held at their end is read there (``outcomes.bot_held_seats``), for
#: these participants only
STOOD_IN = frozenset({"bot", "dropped", "replaced"})
#: the channel of a bot taking (``playing`` true) or leaving a seat, ``{"participant", "reason",
#: "playing"}``, in the group's log (``server.standins``)
STANDIN = "standin"


def run_over(status: str | None, played: bool) -> bool:
    """Whether a participant's run is over: a status that says so, or every block of theirs played."""
    return played or status in RUN_OVER
#: what the end of a run makes of ``finished``: ``cancelled`` while a session of theirs never
#: finished (a period of theirs the experimenter ended before it started, or never reached)
_HOW_IT_ENDED = case(
    (
        select(sessions.c.id)
        .where(and_(sessions.c.participant_id == participants.c.id, sessions.c.finished_at.is_(None)))
        .exists(),
        "cancelled",
    ),
    else_="finished",
)


def set_statuses(conn: Connection, changes: Sequence[tuple[int, str]]) -> None:
    """Apply ``(participant id, status)`` changes in order, by the rules above (rarely many)."""
    for participant_id, status in changes:
        if status not in STATUSES:
            raise ValueError(f"expected a status in {list(STATUSES)}, got {status!r}")
        empty = participants.c.status.is_(None)
        allowed = empty if status in ONLY_FIRST else or_(empty, participants.c.status.not_in(FINAL_STATUSES))
        conn.execute(
            update(participants)
            .where(and_(participants.c.id == participant_id, allowed))
            .values(status=_HOW_IT_ENDED if status == "finished" else status)
        )
