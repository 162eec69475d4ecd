"""A tick names its experiment: ``ticks.experiment_id``, indexed with the tick's id.

The export's ``ticks`` table (``server.exportlogs.ticks``) is read a page at a time in the order
the ticks were stored, keyed on the last id sent. A tick knew its experiment only through its
group, so each page walked the ticks by id through a join to ``groups``, reading every other
experiment's ticks stored since the page's first: on a database of many experiments, one page of
one experiment read the ticks of all of them. The index ``ix_ticks_experiment_id_id``
(experiment, id) makes each page one range of this experiment's ticks. The upgrade fills the
column from each tick's group.

The downgrade drops the index and the column; nothing is lost (a tick's group still names it).

Revision ID: 0013_ticks_experiment
Revises: 0012_session_score_nullable
Created: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013_ticks_experiment"
down_revision = "0012_session_score_nullable"
branch_labels = None
depends_on = None

# the tables as this revision knows them (never the application's, which may change later)
_ticks = sa.table("ticks", sa.column("group_id", sa.Integer()), sa.column("experiment_id", sa.Integer()))
_groups = sa.table("groups", sa.column("id", sa.Integer()), sa.column("experiment_id", sa.Integer()))


def upgrade() -> None:
    with op.batch_alter_table("ticks") as batch:
        batch.add_column(sa.Column("experiment_id", sa.Integer(), nullable=True))
    op.get_bind().execute(
        sa.update(_ticks).values(
            experiment_id=sa.select(_groups.c.experiment_id).where(_groups.c.id == _ticks.c.group_id).scalar_subquery()
        )
    )
    with op.batch_alter_table("ticks") as batch:
        batch.alter_column("experiment_id", existing_type=sa.Integer(), nullable=False)
        batch.create_foreign_key("ticks_experiment_id_fkey", "experiments", ["experiment_id"], ["id"])
    op.create_index("ix_ticks_experiment_id_id", "ticks", ["experiment_id", "id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_ticks_experiment_id_id", table_name="ticks")
    with op.batch_alter_table("ticks") as batch:
        batch.drop_column("experiment_id")
