"""A client's frame ids are kept once each by a table of their own, ``client_ids``, not by an index of events.

``ix_events_client_id`` (participant, client id; unique, partial) kept each id once. Keyed by
participant, it had every commit write one of its pages for each participant who sent since the
last: once a session ran for a while that was the larger part of what a commit wrote (465-511
of some 840 pages a second at 2,000 decisions a second, bench/README.md). The table
``client_ids`` (participant, client id; its key, without a row id on SQLite) with the event's
experiment and ``seq`` holds them now: every writer adds an event's id with the event, but the
journal's apply on SQLite, which adds them in bulk every few seconds (``server.storage.frameids``,
the ``meta`` row ``client_ids_after`` saying where it stands). ``events.client_id`` stays as it was.

The upgrade fills the table from the events and drops the index. The downgrade first adds the
ids a journal's apply left to add, storing a later repeat of one without its id (as the apply
would have), then drops the table and makes the index again: nothing is lost.

Revision ID: 0016_client_ids
Revises: 0015_event_recipient
Created: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016_client_ids"
down_revision = "0015_event_recipient"
branch_labels = None
depends_on = None

#: the ``meta`` key of the journal's apply (``server.storage.frameids.AFTER``)
AFTER = "client_ids_after"
#: the events that carry a client's id (the index's condition)
CLIENT_SENT = "client_id IS NOT NULL"
_IDS_OF_EVENTS = (
    "SELECT participant_id, client_id, experiment_id, seq FROM events"
    " WHERE client_id IS NOT NULL AND participant_id IS NOT NULL"
)


def upgrade() -> None:
    op.create_table(
        "client_ids",
        sa.Column("participant_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("client_id", sa.String(length=64), nullable=False),
        sa.Column("experiment_id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["participant_id"], ["participants.id"]),
        sa.ForeignKeyConstraint(["experiment_id"], ["experiments.id"]),
        sa.PrimaryKeyConstraint("participant_id", "client_id"),
        sqlite_with_rowid=False,
    )
    # in the key's order: the table's pages written in turn (the index kept each id once)
    op.execute(
        "INSERT INTO client_ids (participant_id, client_id, experiment_id, seq) "
        f"{_IDS_OF_EVENTS} ORDER BY participant_id, client_id"
    )
    op.drop_index("ix_events_client_id", table_name="events")


def downgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name == "sqlite":
        after = conn.execute(sa.text("SELECT CAST(value AS INTEGER) FROM meta WHERE key = :k"), {"k": AFTER}).scalar()
        if after is not None:  # the ids the journal's apply left to add; a later repeat loses its id
            op.execute(sa.text(
                "INSERT OR IGNORE INTO client_ids (participant_id, client_id, experiment_id, seq) "
                f"{_IDS_OF_EVENTS} AND id > :after ORDER BY participant_id, client_id, seq"
            ).bindparams(after=after))
            op.execute(sa.text(
                "UPDATE events SET client_id = NULL WHERE id > :after AND client_id IS NOT NULL AND EXISTS ("
                "SELECT 1 FROM client_ids AS c WHERE c.participant_id = events.participant_id"
                " AND c.client_id = events.client_id AND c.seq <> events.seq)"
            ).bindparams(after=after))
            op.execute(sa.text("DELETE FROM meta WHERE key = :k").bindparams(k=AFTER))
    op.drop_table("client_ids")
    op.create_index(
        "ix_events_client_id",
        "events",
        ["participant_id", "client_id"],
        unique=True,
        sqlite_where=sa.text(CLIENT_SENT),
        postgresql_where=sa.text(CLIENT_SENT),
    )
