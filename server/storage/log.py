"""Reading the event log: events of an experiment in ``seq`` order, as the REST API lists them."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, and_, func, select

from .tables import events, participants
from .times import iso


def count_events(engine: Engine, experiment_id: int, after_seq: int) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                select(func.count())
                .select_from(events)
                .where(and_(events.c.experiment_id == experiment_id, events.c.seq > after_seq))
            ).scalar_one()
        )


def list_events(engine: Engine, experiment_id: int, after_seq: int, offset: int, limit: int) -> list[dict[str, Any]]:
    """Events of an experiment in ``seq`` order, with participant codes and group ids."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                events.c.seq,
                events.c.timestamp,
                events.c.group_id,
                participants.c.code.label("participant"),
                events.c.channel,
                events.c.value,
                events.c.bot,
            )
            .select_from(events.outerjoin(participants, participants.c.id == events.c.participant_id))
            .where(and_(events.c.experiment_id == experiment_id, events.c.seq > after_seq))
            .order_by(events.c.seq)
            .offset(offset)
            .limit(limit)
        ).mappings()
        return [
            {
                "seq": r["seq"],
                "timestamp": iso(r["timestamp"]),
                "group": r["group_id"],
                "participant": r["participant"],
                "channel": r["channel"],
                "value": r["value"],
                "bot": bool(r["bot"]),
            }
            for r in rows
        ]

