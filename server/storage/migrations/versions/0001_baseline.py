"""The baseline: the schema of synclab 0.1.0 exactly, as its ``create_schema`` made it.

A database made by that release has no version table; ``synclab db upgrade`` recognises it,
checks it has every table and column below, and stamps it with this revision without running it
(no row changes). A new database runs it like any other revision.

Written out in full, not imported from the tables of today's code: a migration stays what it was.

Revision ID: 0001_baseline
Revises:
Created: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_baseline"
down_revision = None
branch_labels = None
depends_on = None

#: 64-bit ids, but SQLite only auto-increments an INTEGER PRIMARY KEY
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
STATE_ONLY = "channel = 'state'"


def _id() -> sa.Column[int]:
    return sa.Column("id", sa.Integer(), nullable=False)


def _time(name: str, nullable: bool = True) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _fk(column: str, target: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint([column], [f"{target}.id"])


def _indexes(table: str, *columns: str) -> None:
    for column in columns:
        op.create_index(f"ix_{table}_{column}", table, [column], unique=False)


def upgrade() -> None:
    op.create_table(
        "experiments",
        _id(),
        sa.Column("code", sa.String(length=64), nullable=False),
        sa.Column("game", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("config", sa.JSON(), nullable=True),
        sa.Column("num_participants", sa.Integer(), nullable=False),
        sa.Column("group_size", sa.Integer(), nullable=False),
        sa.Column("num_blocks", sa.Integer(), nullable=False),
        sa.Column("block_pause", sa.Float(), nullable=False),
        _time("created_at", nullable=False),
        _time("started_at"),
        _time("finished_at"),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("code"),
    )
    op.create_table(
        "meta",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_table(
        "blocks",
        _id(),
        sa.Column("experiment_id", sa.Integer(), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("period_length", sa.Float(), nullable=True),
        sa.Column("num_subperiods", sa.Integer(), nullable=True),
        sa.Column("rate_limit", sa.Float(), nullable=True),
        sa.Column("bonus_points", sa.Float(), nullable=False),
        sa.Column("matching", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        _fk("experiment_id", "experiments"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("experiment_id", "index"),
    )
    _indexes("blocks", "experiment_id")
    op.create_table(
        "participants",
        _id(),
        sa.Column("experiment_id", sa.Integer(), nullable=False),
        sa.Column("code", sa.String(length=64), nullable=False),
        sa.Column("label", sa.String(length=64), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        _fk("experiment_id", "experiments"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("code"),
    )
    _indexes("participants", "experiment_id")
    op.create_table(
        "connections",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("participant_id", sa.Integer(), nullable=False),
        sa.Column("experiment_id", sa.Integer(), nullable=False),
        _time("connected_at", nullable=False),
        _time("disconnected_at"),
        sa.Column("user_agent", sa.String(length=512), nullable=True),
        sa.Column("address", sa.String(length=64), nullable=True),
        sa.Column("route", sa.String(length=16), nullable=False),
        sa.Column("close_code", sa.Integer(), nullable=True),
        _fk("experiment_id", "experiments"),
        _fk("participant_id", "participants"),
        sa.PrimaryKeyConstraint("id"),
    )
    _indexes("connections", "experiment_id", "participant_id")
    op.create_table(
        "groups",
        _id(),
        sa.Column("experiment_id", sa.Integer(), nullable=False),
        sa.Column("block_id", sa.Integer(), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("phase", sa.String(length=16), nullable=False),
        _time("started_at"),
        _time("ends_at"),
        _time("ended_at"),
        sa.Column("subperiod", sa.Integer(), nullable=False),
        sa.Column("decisions", sa.JSON(), nullable=True),
        sa.Column("vars", sa.JSON(), nullable=True),
        sa.Column("clock", sa.JSON(), nullable=True),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        _fk("block_id", "blocks"),
        _fk("experiment_id", "experiments"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("block_id", "index"),
    )
    _indexes("groups", "block_id", "experiment_id")
    op.create_table(
        "events",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("experiment_id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        _time("timestamp", nullable=False),
        sa.Column("group_id", sa.Integer(), nullable=True),
        sa.Column("participant_id", sa.Integer(), nullable=True),
        sa.Column("channel", sa.String(length=64), nullable=False),
        sa.Column("value", sa.JSON(), nullable=True),
        sa.Column("client_id", sa.String(length=64), nullable=True),
        _fk("experiment_id", "experiments"),
        _fk("group_id", "groups"),
        _fk("participant_id", "participants"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("experiment_id", "seq"),
    )
    op.create_index("ix_events_client_id", "events", ["participant_id", "client_id"], unique=True)
    op.create_index(
        "ix_events_group_state",
        "events",
        ["group_id", "seq"],
        unique=False,
        sqlite_where=sa.text(STATE_ONLY),
        postgresql_where=sa.text(STATE_ONLY),
    )
    op.create_table(
        "memberships",
        _id(),
        sa.Column("group_id", sa.Integer(), nullable=False),
        sa.Column("participant_id", sa.Integer(), nullable=False),
        sa.Column("block_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        _fk("block_id", "blocks"),
        _fk("group_id", "groups"),
        _fk("participant_id", "participants"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("group_id", "position"),
        sa.UniqueConstraint("participant_id", "block_id"),
    )
    _indexes("memberships", "group_id", "participant_id")
    op.create_table(
        "sessions",
        _id(),
        sa.Column("experiment_id", sa.Integer(), nullable=False),
        sa.Column("participant_id", sa.Integer(), nullable=False),
        sa.Column("block_id", sa.Integer(), nullable=False),
        sa.Column("group_id", sa.Integer(), nullable=False),
        _time("started_at"),
        _time("finished_at"),
        sa.Column("json_data", sa.JSON(), nullable=True),
        sa.Column("final_score", sa.Float(), nullable=False),
        _fk("block_id", "blocks"),
        _fk("experiment_id", "experiments"),
        _fk("group_id", "groups"),
        _fk("participant_id", "participants"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("participant_id", "block_id"),
    )
    _indexes("sessions", "block_id", "experiment_id", "participant_id")
    op.create_table(
        "ticks",
        _id(),
        sa.Column("group_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        _time("scheduled_at", nullable=False),
        _time("actual_at", nullable=False),
        sa.Column("late", sa.Boolean(), nullable=False),
        sa.Column("snapshot", sa.JSON(), nullable=True),
        _fk("group_id", "groups"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("group_id", "kind", "index"),
    )
    _indexes("ticks", "group_id")
    op.create_table(
        "results",
        _id(),
        sa.Column("session_id", sa.Integer(), nullable=False),
        sa.Column("experiment_id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("subperiod", sa.Integer(), nullable=True),
        sa.Column("decision", sa.JSON(), nullable=True),
        sa.Column("score", sa.Float(), nullable=False),
        _fk("experiment_id", "experiments"),
        _fk("session_id", "sessions"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("session_id", "subperiod"),
    )
    _indexes("results", "experiment_id", "session_id")


def downgrade() -> None:
    for table in ("results", "ticks", "sessions", "memberships", "events", "groups", "connections",
                  "participants", "blocks", "meta", "experiments"):
        op.drop_table(table)
