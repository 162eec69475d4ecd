"""A group's fencing epoch (a cluster's authority over it): read, and claimed by a new authority.

The writer checks it in every batch of a group's writes (:func:`.batch.commit_writes`)."""

from __future__ import annotations

from sqlalchemy import Engine, and_, select, update

from .tables import groups


def group_epoch(engine: Engine, group_id: int) -> int:
    """The fencing epoch the database holds for the group (0: never claimed)."""
    with engine.connect() as conn:
        found = conn.execute(select(groups.c.epoch).where(groups.c.id == group_id)).scalar()
        return int(found or 0)


def claim_group(engine: Engine, group_id: int, epoch: int) -> bool:
    """Raise the group's fencing epoch to ``epoch`` (a new authority's); False if it is not higher.

    Waits for a batch of the old authority that holds the group's row; from the commit on, the
    old authority's writes are fenced (:func:`.batch.commit_writes`).
    """
    with engine.begin() as conn:
        claimed = conn.execute(
            update(groups).where(and_(groups.c.id == group_id, groups.c.epoch < epoch)).values(epoch=epoch)
        )
        return bool(claimed.rowcount == 1)
