"""Experimenter tokens as accounts: the ``tokens`` table; the generated token moves there, hashed.

Until now the token generated at the first start was kept in clear in ``meta`` (key
``admin_token``). It moves into ``tokens`` as the account ``admin`` with the role ``admin``,
stored as its SHA-256 only, and the clear copy is deleted: the same token keeps working, and
the database no longer holds it. A database without that row (the token came from
``SYNCLAB_ADMIN_TOKEN``) gets an empty table. No other row changes.

Downgrading drops the table: the clear token cannot be recovered from its digest, so an older
synclab generates a new one at its next start (or uses ``SYNCLAB_ADMIN_TOKEN``).

Revision ID: 0005_tokens
Revises: 0004_online
Created: 2026-12-01
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0005_tokens"
down_revision = "0004_online"
branch_labels = None
depends_on = None

#: the key under which synclab up to 0004_online kept its generated token in clear
CLEAR_KEY = "admin_token"


def upgrade() -> None:
    tokens = op.create_table(
        "tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("digest"),
        sa.UniqueConstraint("name"),
    )
    meta = sa.table("meta", sa.column("key", sa.String()), sa.column("value", sa.String()))
    conn = op.get_bind()
    clear = conn.execute(sa.select(meta.c.value).where(meta.c.key == CLEAR_KEY)).scalar()
    if clear:
        digest = hashlib.sha256(str(clear).encode()).hexdigest()
        conn.execute(sa.insert(tokens).values(name="admin", role="admin", digest=digest, created_at=datetime.now(UTC)))
    conn.execute(sa.delete(meta).where(meta.c.key == CLEAR_KEY))


def lost_by_downgrade(conn: sa.Connection) -> list[str]:
    """What the downgrade drops of the rows held: every token (the generated one cannot be put back in clear)."""
    tokens = sa.table("tokens", sa.column("id", sa.Integer()))
    found = conn.execute(sa.select(sa.func.count()).select_from(tokens)).scalar_one()
    return [f"{found} experimenter token(s) (the table tokens; the release before makes a new one)"] if found else []


def downgrade() -> None:
    op.drop_table("tokens")
