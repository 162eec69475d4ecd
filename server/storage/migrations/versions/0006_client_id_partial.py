"""Only the events a client sent are indexed by client id.

``ix_events_client_id`` (participant, client id; unique) held every event, and most events carry
no client id: a decision's broadcast, a tick, a state change. Their entries were never looked up
(a lookup by client id names one), yet each commit wrote the index page they shared. The index
becomes partial, ``WHERE client_id IS NOT NULL``: the same uniqueness (two events without a
client id never collided), the same lookups, a page less per commit. No row changes.

Revision ID: 0006_client_id_partial
Revises: 0005_tokens
Created: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_client_id_partial"
down_revision = "0005_tokens"
branch_labels = None
depends_on = None

CLIENT_SENT = "client_id IS NOT NULL"


def upgrade() -> None:
    op.drop_index("ix_events_client_id", table_name="events")
    op.create_index(
        "ix_events_client_id",
        "events",
        ["participant_id", "client_id"],
        unique=True,
        sqlite_where=sa.text(CLIENT_SENT),
        postgresql_where=sa.text(CLIENT_SENT),
    )


def downgrade() -> None:
    op.drop_index("ix_events_client_id", table_name="events")
    op.create_index("ix_events_client_id", "events", ["participant_id", "client_id"], unique=True)
