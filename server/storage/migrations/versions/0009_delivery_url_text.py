"""A delivery's URL is text of any length.

The URL ends with the participant's join label, percent-encoded: a label of 200 characters (the
join link's most) may take 2,400, past the column's 500. On PostgreSQL such a delivery's insert
was refused, and with it the deliveries of its whole group (or experiment, at the start-up
sweep): no score of theirs reached oTree. No row changes.

The downgrade puts the 500 back. A delivery already made keeps only what the column holds (its
URL is never posted to again), and so does one refused (``0011_delivery_refused``: never due,
no ``next_at``); one still waiting with a longer URL stops the downgrade, which changes nothing
then: an older synclab could not post it.

Revision ID: 0009_delivery_url_text
Revises: 0008_statuses_corrected
Created: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_delivery_url_text"
down_revision = "0008_statuses_corrected"
branch_labels = None
depends_on = None

BEFORE = 500

# the table as this revision knows it (never the application's, which may change later)
_deliveries = sa.table(
    "deliveries",
    sa.column("id", sa.Integer()),
    sa.column("url", sa.Text()),
    sa.column("delivered_at", sa.DateTime()),
    sa.column("next_at", sa.DateTime()),
)
#: a delivery an older synclab would still post: not delivered, and due at some time (one refused,
#: ``0011_delivery_refused``, never is: it has no ``next_at``, before that revision's downgrade and after)
_WAITING = sa.and_(_deliveries.c.delivered_at.is_(None), _deliveries.c.next_at.is_not(None))


def upgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.alter_column("url", existing_type=sa.String(length=BEFORE), type_=sa.Text(), existing_nullable=False)


def lost_by_downgrade(conn: sa.Connection) -> list[str]:
    """What the downgrade cuts of the rows held: a delivered or refused URL past the 500 (one
    waiting stops it instead)."""
    cut = conn.execute(
        sa.select(sa.func.count())
        .select_from(_deliveries)
        .where(sa.func.length(_deliveries.c.url) > BEFORE, sa.not_(_WAITING))
    ).scalar_one()
    return [f"the URL of {cut} delivered or refused score(s) to oTree, cut to {BEFORE} characters"] if cut else []


def downgrade() -> None:
    conn = op.get_bind()
    longer = sa.func.length(_deliveries.c.url) > BEFORE
    waiting = conn.execute(
        sa.select(sa.func.count()).select_from(_deliveries).where(longer, _WAITING)
    ).scalar_one()
    if waiting:
        raise RuntimeError(
            f"{waiting} delivery(ies) to oTree still waiting have a URL longer than {BEFORE} characters, "
            "which the revision before cannot hold; deliver or delete them first"
        )
    conn.execute(
        sa.update(_deliveries).where(longer).values(url=sa.func.substr(_deliveries.c.url, 1, BEFORE))
    )
    with op.batch_alter_table("deliveries") as batch:
        batch.alter_column("url", existing_type=sa.Text(), type_=sa.String(length=BEFORE), existing_nullable=False)
