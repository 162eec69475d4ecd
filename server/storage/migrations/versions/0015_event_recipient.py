"""An event names the one participant the server sent it to alone: ``events.recipient_id``.

A game sends to some members only with ``send(channel, payload, to=[…])``; the event log kept
who a ``result`` went to (its ``results`` row names the participant, read by ``seq`` for each
page of the log) but nobody for a game's own private message, so the export lost whom a market's
or an information game's private message reached. The column holds the recipient of an event
sent to exactly one member (a result, or a game's ``send(…, to=[member])``); NULL for one sent to
the group, to several members, to nobody, or by a participant. The upgrade fills it for every
``result`` event from its ``results`` row, the participant the log named before (one range of
``ix_results_experiment_id_seq`` per event); a game's private messages stored before it stay NULL:
the log never held their recipient.

The column is added in place (``ALTER TABLE … ADD COLUMN``, its foreign key inline on SQLite): the
events table is the largest, and a copy of it (Alembic's batch mode on SQLite) would write it
whole. The downgrade drops it; what it loses is the recipient of a game's private messages (a
result's is read from its ``results`` row there, as before).

Revision ID: 0015_event_recipient
Revises: 0014_results_seq_index
Created: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015_event_recipient"
down_revision = "0014_results_seq_index"
branch_labels = None
depends_on = None

# the tables as this revision knows them (never the application's, which may change later)
_events = sa.table(
    "events",
    sa.column("experiment_id", sa.Integer()),
    sa.column("seq", sa.BigInteger()),
    sa.column("participant_id", sa.Integer()),
    sa.column("channel", sa.String()),
    sa.column("recipient_id", sa.Integer()),
)
_results = sa.table(
    "results", sa.column("session_id", sa.Integer()), sa.column("experiment_id", sa.Integer()), sa.column("seq", sa.BigInteger())
)
_sessions = sa.table("sessions", sa.column("id", sa.Integer()), sa.column("participant_id", sa.Integer()))
#: an event the server sent on the ``result`` channel (groups.RESULT)
_A_RESULT = sa.and_(_events.c.channel == "result", _events.c.participant_id.is_(None))


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":  # (Alembic adds a foreign key on SQLite only by a copy)
        op.execute("ALTER TABLE events ADD COLUMN recipient_id INTEGER REFERENCES participants (id)")
    else:
        op.add_column("events", sa.Column("recipient_id", sa.Integer(), nullable=True))
        op.create_foreign_key("events_recipient_id_fkey", "events", "participants", ["recipient_id"], ["id"])
    whose = (
        sa.select(_sessions.c.participant_id)
        .select_from(_results.join(_sessions, _sessions.c.id == _results.c.session_id))
        .where(_results.c.experiment_id == _events.c.experiment_id, _results.c.seq == _events.c.seq)
        .scalar_subquery()
    )
    op.get_bind().execute(sa.update(_events).where(_A_RESULT).values(recipient_id=whose))


def lost_by_downgrade(conn: sa.Connection) -> list[str]:
    """What the downgrade drops of the rows held: the recipient of each event sent to one member
    that is no result (a result's is read from its ``results`` row before this revision)."""
    named = conn.execute(
        sa.select(sa.func.count()).select_from(_events).where(_events.c.recipient_id.is_not(None), sa.not_(_A_RESULT))
    ).scalar_one()
    return [f"the recipient of {named} event(s) a game sent to one member (events.recipient_id)"] if named else []


def downgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.drop_column("recipient_id")
