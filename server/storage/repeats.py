"""A journal's write whose client id the database already holds: stored without the id, not halting.

With the journal (:mod:`.journaled`) a batch is acknowledged once appended, and applied to SQLite
later. A member's frame id is kept once per participant by a unique index
(``ix_events_client_id``), and the live group answers a repeated id before anything is written
(:mod:`server.clientids`, :mod:`server.lookups`), so a write the journal holds should never repeat
one. Should one slip through all the same (a path not known today), the apply would be refused
for it at every try, and storage halted for good: every group's decisions refused from then on,
the journal unable to start over. What was acknowledged is the member's frame, numbered and
answered; the database cannot hold its id twice. So the apply stores that event without its
client id, under the ``seq`` it was answered with, logs which it was, and goes on; the first
frame keeps the id, and a later repeat of it is answered with the first's ``seq``.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import sqlite3
from collections.abc import Callable, Sequence

from sqlalchemy import and_, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from .batch import apply_numbered
from .tables import events
from .writes import NewEvent, Write

log = logging.getLogger("synclab.journal")

#: what SQLite names in the refusal of a repeated client id (the index's columns)
_REPEATED_ID = "events.participant_id, events.client_id"


def apply_journaled(conn: Connection, writes: Sequence[Write], marker: tuple[str, str], *,
                    held: Callable[[], Sequence[Write]] = tuple, commit: bool = True) -> None:
    """:func:`.batch.apply_numbered`, storing an event whose client id is stored already without it.

    ``held``: the writes applied before in the transaction still open on ``conn`` (``commit``
    false leaves it open: :mod:`.applying`), asked for only when needed: the refusal of a
    repeated id rolls them back with it, so they go again with ``writes``.
    """
    try:
        apply_numbered(conn, writes, marker, commit=commit)
    except (sqlite3.IntegrityError, IntegrityError) as exc:
        if _REPEATED_ID not in str(exc):
            raise
        if conn.in_transaction():
            conn.rollback()
        apply_numbered(conn, _without_stored_ids(conn, [*held(), *writes]), marker, commit=commit)


def _without_stored_ids(conn: Connection, writes: Sequence[Write]) -> list[Write]:
    """``writes`` with each event's client id left out where the database, or an event before it
    in ``writes``, holds it for the same participant (copies: the caller's writes are untouched)."""
    seen: set[tuple[int, str]] = set()
    out: list[Write] = []
    for write in writes:
        changed = False
        new_events: list[NewEvent] = []
        for ev, seq in zip(write.events, write.seqs, strict=True):
            if ev.participant_id is None or ev.client_id is None:
                new_events.append(ev)
                continue
            stored = conn.execute(
                select(events.c.seq).where(
                    and_(events.c.participant_id == ev.participant_id, events.c.client_id == ev.client_id)
                )
            ).scalar()
            key = (ev.participant_id, ev.client_id)
            if stored is not None or key in seen:
                log.error(
                    "synclab: the journal's event seq %d of participant %d repeats the client id %r stored "
                    "already (seq %s); stored without its id (the journal acknowledged it before the database "
                    "could tell)", seq, ev.participant_id, ev.client_id, stored if stored is not None else "in this batch",
                )
                new_events.append(dataclasses.replace(ev, client_id=None))
                changed = True
            else:
                seen.add(key)
                new_events.append(ev)
        if changed:
            write = copy.copy(write)
            write.events = new_events
        out.append(write)
    if conn.in_transaction():
        conn.rollback()  # the look-ups' read: the apply begins its own transaction
    return out

