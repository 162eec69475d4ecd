"""A session's final score may be NULL: no finite number.

A session's ``final_score`` is its block's bonus plus the sum of its results, summed by the
database at its period's end. Past a float's range (a game's payoffs near 1e308), PostgreSQL
refused the sum, and with it the write of the period's end, tried again and again; SQLite stored
infinity, which the API and the exports gave as ``null`` without notice. Such a score is now
NULL (summed without overflowing on the way, then left out when past a float's range), as a
participant's is ``null`` in the API. The upgrade makes NULL each one stored as infinity (or, on
PostgreSQL, NaN).

The downgrade makes the column NOT NULL again: a NULL score becomes 0.0 there (its sign is not
known), which it names as lost.

Revision ID: 0012_session_score_nullable
Revises: 0011_delivery_refused
Created: 2026-12-05
"""

from __future__ import annotations

import sys

import sqlalchemy as sa
from alembic import op

revision = "0012_session_score_nullable"
down_revision = "0011_delivery_refused"
branch_labels = None
depends_on = None

# the table as this revision knows it (never the application's, which may change later)
_sessions = sa.table("sessions", sa.column("final_score", sa.Float()))
#: past a float's range: infinity, and on PostgreSQL NaN too (greater than any number there)
_NOT_FINITE = sa.or_(_sessions.c.final_score > sys.float_info.max, _sessions.c.final_score < -sys.float_info.max)


def upgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.alter_column("final_score", existing_type=sa.Float(), nullable=True)
    op.get_bind().execute(sa.update(_sessions).where(_NOT_FINITE).values(final_score=None))


def lost_by_downgrade(conn: sa.Connection) -> list[str]:
    """What the downgrade changes of the rows held: a final score past a float's range (NULL) becomes 0.0."""
    lost = conn.execute(
        sa.select(sa.func.count()).select_from(_sessions).where(_sessions.c.final_score.is_(None))
    ).scalar_one()
    return [f"the final score of {lost} session(s) past a float's range (no finite number), made 0.0"] if lost else []


def downgrade() -> None:
    op.get_bind().execute(sa.update(_sessions).where(_sessions.c.final_score.is_(None)).values(final_score=0.0))
    with op.batch_alter_table("sessions") as batch:
        batch.alter_column("final_score", existing_type=sa.Float(), nullable=False)
