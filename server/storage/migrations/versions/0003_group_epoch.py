"""Groups carry the fencing epoch of their authority, for the cluster (0 for every group before).

A new authority raises it before loading the group; every write of the group checks it in its
own transaction, so one that lost its lease can store nothing (``server.cluster.leases``).

Revision ID: 0003_group_epoch
Revises: 0002_events_group_index
Created: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_group_epoch"
down_revision = "0002_events_group_index"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("groups") as batch:
        batch.add_column(sa.Column("epoch", sa.BigInteger(), nullable=False, server_default="0"))


def lost_by_downgrade(conn: sa.Connection) -> list[str]:
    """What the downgrade drops of the rows held: the epochs a cluster raised (0 is every group's before)."""
    groups = sa.table("groups", sa.column("epoch", sa.BigInteger()))
    raised = conn.execute(sa.select(sa.func.count()).select_from(groups).where(groups.c.epoch != 0)).scalar_one()
    return [f"the fencing epoch of {raised} group(s) a cluster ran (groups.epoch)"] if raised else []


def downgrade() -> None:
    with op.batch_alter_table("groups") as batch:
        batch.drop_column("epoch")
