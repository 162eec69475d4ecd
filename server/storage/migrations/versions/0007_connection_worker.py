"""Each connection names the cluster's worker that holds its socket.

A worker killed with kill -9 stores nothing more: its sockets' closes never reach the
``connections`` table, and its participants showed as connected for ever. With the worker named
in each row (``NULL`` in one process, and in every row stored before this revision), the other
workers close the connections of a worker that is gone (``server.cluster.node``), found by a
partial index of the connections still open. No row changes.

Revision ID: 0007_connection_worker
Revises: 0006_client_id_partial
Created: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_connection_worker"
down_revision = "0006_client_id_partial"
branch_labels = None
depends_on = None

STILL_OPEN = "disconnected_at IS NULL"


def upgrade() -> None:
    with op.batch_alter_table("connections") as batch:
        batch.add_column(sa.Column("worker", sa.String(length=200), nullable=True))
    op.create_index(
        "ix_connections_open",
        "connections",
        ["worker"],
        unique=False,
        sqlite_where=sa.text(STILL_OPEN),
        postgresql_where=sa.text(STILL_OPEN),
    )


def lost_by_downgrade(conn: sa.Connection) -> list[str]:
    """What the downgrade drops of the rows held: the worker named in each connection a cluster held."""
    connections = sa.table("connections", sa.column("worker", sa.String()))
    named = conn.execute(
        sa.select(sa.func.count()).select_from(connections).where(connections.c.worker.is_not(None))
    ).scalar_one()
    return [f"the worker of {named} connection(s) a cluster held (connections.worker)"] if named else []


def downgrade() -> None:
    op.drop_index("ix_connections_open", table_name="connections")
    with op.batch_alter_table("connections") as batch:
        batch.drop_column("worker")
