"""A group's stand-in events are indexed.

Whose seat a bot held when a block's period ended (a session's ``percentile_rank`` with
``exclude_unfinished``, a participant's ``finished``) is read from the groups' ``standin`` events,
a few a group, which no index held: each look read every event of the experiment. The partial
index ``ix_events_standin`` (group, seq) ``WHERE channel = 'standin'`` holds those only, so a
decision's insert writes nothing to it. No row changes.

Revision ID: 0010_events_standin_index
Revises: 0009_delivery_url_text
Created: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010_events_standin_index"
down_revision = "0009_delivery_url_text"
branch_labels = None
depends_on = None

STANDIN_ONLY = "channel = 'standin'"


def upgrade() -> None:
    op.create_index(
        "ix_events_standin",
        "events",
        ["group_id", "seq"],
        sqlite_where=sa.text(STANDIN_ONLY),
        postgresql_where=sa.text(STANDIN_ONLY),
    )


def downgrade() -> None:
    op.drop_index("ix_events_standin", table_name="events")
