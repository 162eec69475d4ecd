"""The client ids of the journal's events, added to ``client_ids`` in bulk, and a repeat found then.

A client frame's id is stored once per participant, and a repeat is answered with the first
``seq`` (the wire's promise): the table ``client_ids`` (participant, id; its key) holds them.
Every writer but one adds an event's id there in the event's transaction, and a repeated id
refuses the batch. The journal's apply (:mod:`.applying`) does not: it stores the events, and
every :data:`ADD_EVERY` seconds adds the ids of the events stored since, sorted, in one statement
(:func:`add_deferred`). Keyed by participant, the ids of one second touch one page of the table
for every participant who sent; added every second they had each commit write as many pages as
there were people sending, the larger part of what a commit wrote once a session ran for a while
(bench/README.md, "The client ids apart").

The ``meta`` row :data:`AFTER` says where that stands: the events with a larger ``id`` may lack
their ``client_ids`` row. The apply sets it, in its transaction, before it stores an event without
one (:func:`defer_client_ids`); :func:`add_deferred` adds the ids and moves it on;
:func:`catch_up` (a server's start, recovery) adds what is left and removes it. The look-ups read
the events past it as well (:func:`not_added`), so that an id is found at once, added or not.

The live group answers a repeated id before anything is written (:mod:`server.clientids`,
:mod:`server.lookups`), so the journal should never hold one. Should one slip through all the
same (a path not known today), it was acknowledged and stored; :func:`add_deferred` keeps the
first event's id, stores the later one without its id, and logs which it was: a later repeat is
answered with the first's ``seq``, and storage goes on (a batch refused at every try would halt it
for good). PostgreSQL takes no journal: there every id goes with its event.
"""

from __future__ import annotations

import logging
import sqlite3
from typing import Any

from sqlalchemy import BigInteger, ColumnElement, Engine, cast, select

from .tables import events, meta

log = logging.getLogger("synclab.journal")

#: the ``meta`` key: the events whose ``id`` is larger may lack their ``client_ids`` row
AFTER = "client_ids_after"
#: seconds between the journal's additions of its events' ids (at the apply's next commit)
ADD_EVERY = 5.0

#: SQLite: :data:`AFTER` set to the last event's ``id`` unless it is set
_DEFER = "INSERT OR IGNORE INTO meta (key, value) SELECT ?, coalesce(max(id), 0) FROM events"
_RANGE = "id > ? AND id <= ? AND client_id IS NOT NULL AND participant_id IS NOT NULL"
#: the ids of a range of events (in the key's order: the table's pages in turn); ``OR IGNORE``
#: added, the first of each kept
_ADD = (
    "INSERT{} INTO client_ids (participant_id, client_id, experiment_id, seq)"
    f" SELECT participant_id, client_id, experiment_id, seq FROM events WHERE {_RANGE}"
    " ORDER BY participant_id, client_id, seq"
)
#: the events of a range whose id ``client_ids`` holds for another event
_REPEATS = (
    "SELECT e.id, e.seq, e.participant_id, e.client_id, c.seq FROM events AS e"
    " JOIN client_ids AS c ON c.participant_id = e.participant_id AND c.client_id = e.client_id"
    " WHERE e.id > ? AND e.id <= ? AND e.client_id IS NOT NULL AND c.seq <> e.seq ORDER BY e.id"
)


def defer_client_ids(cursor: Any) -> None:
    """SQLite, in the transaction that is to store events without their ``client_ids`` rows,
    before it stores them: :data:`AFTER` set, unless it is (to the last event's ``id`` so far)."""
    cursor.execute(_DEFER, (AFTER,))


def add_deferred(cursor: Any) -> int:
    """SQLite, in the caller's transaction: the ids of the events past :data:`AFTER` added to
    ``client_ids``, and :data:`AFTER` moved on to the last event; the ids added.

    An event whose id ``client_ids`` holds for an earlier one (or that an earlier event of the
    range has) loses its id, logged (see the module's docstring)."""
    found = cursor.execute("SELECT CAST(value AS INTEGER) FROM meta WHERE key = ?", (AFTER,)).fetchall()
    if not found:
        return 0
    after = int(found[0][0])
    last = cursor.execute("SELECT max(id) FROM events").fetchall()[0][0]
    if last is None or last <= after:
        return 0
    try:  # (a statement refused is undone alone: the transaction goes on)
        added = cursor.execute(_ADD.format(""), (after, last)).rowcount
    except sqlite3.IntegrityError:  # an id stored already (by the writer with its event), or a repeat
        added = cursor.execute(_ADD.format(" OR IGNORE"), (after, last)).rowcount
        for event_id, seq, participant_id, client_id, first in cursor.execute(_REPEATS, (after, last)).fetchall():
            log.error(
                "synclab: the journal's event seq %d of participant %d repeats the client id %r stored already "
                "(seq %d); stored without its id (the journal acknowledged it before the database could tell)",
                seq, participant_id, client_id, first,
            )
            cursor.execute("UPDATE events SET client_id = NULL WHERE id = ?", (event_id,))
    cursor.execute("UPDATE meta SET value = ? WHERE key = ?", (str(last), AFTER))
    return int(added)


def catch_up(engine: Engine) -> int:
    """SQLite: every id a journal's apply left to add, added, and :data:`AFTER` removed (at a start,
    before anything else writes: the writers that add each id with its event find them all there)."""
    with engine.connect() as conn:
        raw: Any = conn.connection.dbapi_connection
        cursor = raw.cursor()
        try:
            added = add_deferred(cursor)
            cursor.execute("DELETE FROM meta WHERE key = ?", (AFTER,))
            raw.commit()
        finally:
            cursor.close()
    return added


def not_added() -> ColumnElement[bool]:
    """The events whose ids may not be in ``client_ids`` yet (none but on a journal's SQLite)."""
    return events.c.id > select(cast(meta.c.value, BigInteger)).where(meta.c.key == AFTER).scalar_subquery()
