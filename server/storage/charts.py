"""A group's period as the charts draw it: the group's decisions after each stored change, in order.

A page opened in the middle of a period (the monitor, or a participant's page after a reload)
draws its charts from the start of the period, not from the moment it connected: it reads the
group's stored ``group_decisions`` and ``subperiod`` events since the group's last
``period_start``, up to ``upto_seq`` (what the page's own ``hello`` or snapshot covered; later
frames reach it live).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, and_, select, text

from .tables import STATE_ONLY, events, groups
from .times import ms

#: the most points one answer holds; past it the period's earliest are left out
MAX_POINTS = 5000
_CHANNELS = ("group_decisions", "subperiod")


def period_history(
    engine: Engine, group_id: int, upto_seq: int | None = None, experiment_id: int | None = None, limit: int = MAX_POINTS
) -> dict[str, Any]:
    """``{"group", "start_seq", "points": [{"seq", "ts" (ms), "decisions"}], "truncated"}`` of the
    group's current (or last) period; no points before its first ``period_start``. A
    :class:`LookupError` for an unknown group, or one not of ``experiment_id`` when given."""
    with engine.connect() as conn:
        found = conn.execute(select(groups.c.experiment_id).where(groups.c.id == group_id)).scalar()
        if found is None or (experiment_id is not None and found != experiment_id):
            raise LookupError(f"no group {group_id} in this experiment")
        experiment_id = int(found)
        # a group's state events are few (a start and an end per period): the partial index finds them
        states = conn.execute(
            select(events.c.seq, events.c.value)
            .where(and_(events.c.group_id == group_id, text(STATE_ONLY)))
            .order_by(events.c.seq.desc())
        )
        start = next((seq for seq, value in states if value == "period_start"), None)
        if start is None:
            return {"group": group_id, "start_seq": None, "points": [], "truncated": False}
        condition = and_(
            events.c.experiment_id == experiment_id,
            events.c.seq > start,
            events.c.group_id == group_id,
            events.c.channel.in_(_CHANNELS),
        )
        if upto_seq is not None:
            condition = and_(condition, events.c.seq <= upto_seq)
        rows = conn.execute(
            select(events.c.seq, events.c.timestamp, events.c.channel, events.c.value)
            .where(condition)
            .order_by(events.c.seq.desc())
            .limit(limit + 1)
        ).all()
    truncated = len(rows) > limit
    points = []
    for seq, timestamp, channel, value in reversed(rows[:limit]):
        decisions = value.get("group_decisions") if channel == "subperiod" and isinstance(value, dict) else value
        if isinstance(decisions, dict):
            points.append({"seq": int(seq), "ts": ms(timestamp), "decisions": decisions})
    return {"group": group_id, "start_seq": int(start), "points": points, "truncated": truncated}

