"""A delivery to oTree may be refused: ``deliveries.refused_at``.

A participant's score that is no finite number (the sum of scores near 1e308, from a game's
config with huge payoffs) was posted to oTree as ``null`` on SQLite (whose sum is infinity,
which JSON holds as ``null``), and on PostgreSQL (which refuses the sum) left the participant
without a delivery, so that every start of the server tried, and logged, it again. Such a
delivery is now stored refused: ``refused_at`` set, the reason in ``last_error``, no payload,
never due. A delivery still waiting whose score is no finite number is refused at its next
claim, and a participant left out gets a refused delivery at the next start.

The downgrade drops the column. A refused delivery stays never due there (no ``next_at``), and
the revision before shows it ``failing`` with its reason. The upgrade makes refused each such
delivery again (neither delivered nor due: no other is), as of its creation; in a database that
never had this revision there is none, and no row changes.

Revision ID: 0011_delivery_refused
Revises: 0010_events_standin_index
Created: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011_delivery_refused"
down_revision = "0010_events_standin_index"
branch_labels = None
depends_on = None


# the table as this revision knows it (never the application's, which may change later)
_deliveries = sa.table(
    "deliveries",
    sa.column("created_at", sa.DateTime(timezone=True)),
    sa.column("next_at", sa.DateTime(timezone=True)),
    sa.column("delivered_at", sa.DateTime(timezone=True)),
    sa.column("refused_at", sa.DateTime(timezone=True)),
)


def upgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("refused_at", sa.DateTime(timezone=True), nullable=True))
    # refused here before a downgrade: never due (a waiting delivery always has a next_at)
    op.get_bind().execute(
        sa.update(_deliveries)
        .where(_deliveries.c.delivered_at.is_(None), _deliveries.c.next_at.is_(None))
        .values(refused_at=_deliveries.c.created_at)
    )


def lost_by_downgrade(conn: sa.Connection) -> list[str]:
    """What the downgrade drops of the rows held: when each refused delivery was refused (the
    revision before shows it ``failing``, with its reason; an upgrade refuses it again, as of
    its creation)."""
    refused = conn.execute(
        sa.select(sa.func.count()).select_from(_deliveries).where(_deliveries.c.refused_at.is_not(None))
    ).scalar_one()
    return [f"the time {refused} refused score(s) to oTree were refused (shown failing)"] if refused else []


def downgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("refused_at")
