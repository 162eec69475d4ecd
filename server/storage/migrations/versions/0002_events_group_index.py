"""Events are indexed by group for ``state`` events only, in databases made before 2026-11-22 too.

Builds before that date indexed every event by group (``ix_events_group_id``), which cost each
commit a page per group in the batch; later builds made the partial ``ix_events_group_state``
but left the old index in a database made before. This drops the old index where it is left
and makes the new one where it is missing; on any other database it does nothing. No row changes.

Revision ID: 0002_events_group_index
Revises: 0001_baseline
Created: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_events_group_index"
down_revision = "0001_baseline"
branch_labels = None
depends_on = None

STATE_ONLY = "channel = 'state'"


def upgrade() -> None:
    op.drop_index("ix_events_group_id", table_name="events", if_exists=True)
    op.create_index(
        "ix_events_group_state",
        "events",
        ["group_id", "seq"],
        unique=False,
        if_not_exists=True,
        sqlite_where=sa.text(STATE_ONLY),
        postgresql_where=sa.text(STATE_ONLY),
    )


def downgrade() -> None:
    pass  # the old index is not wanted back, and the partial one is the baseline's
