"""The monitor's snapshot of an experiment: blocks, groups with members and state, open connections."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, and_, select

from .tables import blocks, connections, experiments, groups, memberships, participants
from .times import epoch_ms, ms


def monitor_state(engine: Engine, experiment_id: int) -> dict[str, Any]:
    """Blocks, groups (with members and state) and open connections, for a monitor's snapshot.

    ``last_seq`` is read first: every event after it reaches the monitor live, and the rows
    read after it may already include some of those (applying them again is harmless).
    """
    with engine.connect() as conn:
        last_seq = conn.execute(select(experiments.c.last_seq).where(experiments.c.id == experiment_id)).scalar_one()
        block_rows = conn.execute(
            select(blocks).where(blocks.c.experiment_id == experiment_id).order_by(blocks.c.index)
        ).mappings().all()
        by_block = {b["id"]: b for b in block_rows}
        group_rows = conn.execute(
            select(groups).where(groups.c.experiment_id == experiment_id).order_by(groups.c.block_id, groups.c.index)
        ).mappings().all()
        members: dict[int, list[str]] = {}
        for gid, code in conn.execute(
            select(memberships.c.group_id, participants.c.code)
            .join(participants, participants.c.id == memberships.c.participant_id)
            .where(participants.c.experiment_id == experiment_id)
            .order_by(memberships.c.group_id, memberships.c.position)
        ):
            members.setdefault(gid, []).append(code)
        agents = dict(
            conn.execute(
                select(participants.c.code, connections.c.user_agent)
                .join(participants, participants.c.id == connections.c.participant_id)
                .where(and_(connections.c.experiment_id == experiment_id, connections.c.disconnected_at.is_(None)))
                .order_by(connections.c.connected_at)
            ).all()
        )
    return {
        "last_seq": int(last_seq),
        "blocks": [
            {
                "index": b["index"],
                "period_length": b["period_length"],
                "num_subperiods": b["num_subperiods"],
                "rate_limit": b["rate_limit"],
                "bonus_points": b["bonus_points"],
                "matching": b["matching"],
                "status": b["status"],
            }
            for b in block_rows
        ],
        "groups": [
            {
                "id": g["id"],
                "block": by_block[g["block_id"]]["index"],
                "index": g["index"],
                "phase": g["phase"],
                "members": members.get(g["id"], []),
                "started_at": ms(g["started_at"]),
                "ends_at": ms(g["ends_at"]),
                "ended_at": ms(g["ended_at"]),
                "subperiod": g["subperiod"],
                "num_subperiods": by_block[g["block_id"]]["num_subperiods"],
                "period_length": by_block[g["block_id"]]["period_length"],
                "decisions": g["decisions"] or {},
                "paused_at": epoch_ms((g["clock"] or {}).get("paused_at")),
                "paused_by": (g["clock"] or {}).get("paused_by"),
            }
            for g in group_rows
        ],
        "user_agents": agents,
    }


