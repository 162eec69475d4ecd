"""Online arrivals and the way back: the join link's labels, completion codes, statuses, bot events, deliveries.

Adds ``experiments.online`` (the join link's settings), the participants' ``join_label`` (one seat
per label and experiment: a unique constraint), ``joined_at``, ``completion_code`` (unique) and
``status``, the events' ``bot`` flag (false for every event before), and the ``deliveries``
table (scores on their way to oTree). No row changes: the new columns are empty (``bot`` false).

Revision ID: 0004_online
Revises: 0003_group_epoch
Created: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_online"
down_revision = "0003_group_epoch"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # plain ADD COLUMN (no table copy on SQLite): events may hold millions of rows
    op.add_column("experiments", sa.Column("online", sa.JSON(), nullable=True))
    op.add_column("events", sa.Column("bot", sa.Boolean(), nullable=False, server_default="0"))
    with op.batch_alter_table("participants") as batch:
        batch.add_column(sa.Column("join_label", sa.String(length=200), nullable=True))
        batch.add_column(sa.Column("joined_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("completion_code", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("status", sa.String(length=16), nullable=True))
        batch.create_unique_constraint("uq_participants_join_label", ["experiment_id", "join_label"])
        batch.create_index("ix_participants_completion_code", ["completion_code"], unique=True)
    op.create_table(
        "deliveries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("experiment_id", sa.Integer(), nullable=False),
        sa.Column("participant_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("url", sa.String(length=500), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.String(length=500), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("next_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["experiment_id"], ["experiments.id"]),
        sa.ForeignKeyConstraint(["participant_id"], ["participants.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("participant_id", "kind"),
    )
    op.create_index("ix_deliveries_experiment_id", "deliveries", ["experiment_id"], unique=False)
    op.create_index("ix_deliveries_participant_id", "deliveries", ["participant_id"], unique=False)


def lost_by_downgrade(conn: sa.Connection) -> list[str]:
    """What the downgrade drops of the rows held: the deliveries, and every value of the new columns."""
    experiments = sa.table("experiments", sa.column("online", sa.JSON()))
    events = sa.table("events", sa.column("bot", sa.Boolean()))
    participants = sa.table(
        "participants",
        *(sa.column(name) for name in ("join_label", "joined_at", "completion_code", "status")),
    )
    deliveries = sa.table("deliveries", sa.column("id", sa.Integer()))
    # a JSON column's None may be stored as JSON's null
    online = sa.and_(experiments.c.online.is_not(None), sa.cast(experiments.c.online, sa.Text()) != "null")
    counts = [
        (experiments, online, "the online settings of {} experiment(s) (experiments.online)"),
        (events, events.c.bot.is_(True), "the bot flag of {} event(s) a bot made (events.bot)"),
        (
            participants,
            sa.or_(*(column.is_not(None) for column in participants.c)),
            "the join label, arrival, completion code or status of {} participant(s)",
        ),
        (deliveries, sa.true(), "{} score(s) to oTree, delivered or waiting (the table deliveries)"),
    ]
    lost = []
    for table, where, words in counts:
        found = conn.execute(sa.select(sa.func.count()).select_from(table).where(where)).scalar_one()
        if found:
            lost.append(words.format(found))
    return lost


def downgrade() -> None:
    op.drop_index("ix_deliveries_participant_id", table_name="deliveries")
    op.drop_index("ix_deliveries_experiment_id", table_name="deliveries")
    op.drop_table("deliveries")
    with op.batch_alter_table("participants") as batch:
        batch.drop_index("ix_participants_completion_code")
        batch.drop_constraint("uq_participants_join_label", type_="unique")
        batch.drop_column("status")
        batch.drop_column("completion_code")
        batch.drop_column("joined_at")
        batch.drop_column("join_label")
    op.drop_column("events", "bot")
    op.drop_column("experiments", "online")
