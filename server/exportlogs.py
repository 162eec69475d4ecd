"""The exports' ``connections`` and ``ticks`` tables: each socket's lifetime and each timed tick.

Read page by page like the other tables (:mod:`server.export`), keyed on the last row sent. The
event log does not record them, so they are not taken back to the export's ``last_seq``: each
page reads them as they are (a socket still open has no ``disconnected_at``; a run under way
may add rows after the export started, which a later page may include).

A connection's ``address`` and ``user_agent`` are exported as stored: they are the lab's data,
as its participants' decisions are (the README's "Exporting" says so).
"""

from __future__ import annotations

from typing import Any, Protocol

from sqlalchemy import Engine, Select, and_, or_, select

from .storage import blocks, groups, iso, participants
from .storage import connections as connection_table
from .storage import ticks as tick_table

#: where a table's paging stands (as :data:`server.export.Cursor`)
Cursor = tuple[Any, ...]


class Part(Protocol):
    """What a reader needs of a :class:`server.export.Part` (not imported: that module imports this one)."""

    @property
    def experiment(self) -> dict[str, Any]: ...

    @property
    def limit(self) -> int: ...

#: the CSV columns of each table, in order (the JSON rows' keys, in the same order)
CSV_COLUMNS: dict[str, tuple[str, ...]] = {
    "connections": (
        "id",
        "participant",
        "connected_at",
        "disconnected_at",
        "close_code",
        "route",
        "worker",
        "address",
        "user_agent",
    ),
    "ticks": ("group", "block", "kind", "index", "scheduled_at", "actual_at", "late", "snapshot"),
}


def connections(engine: Engine, part: Part, cursor: Cursor) -> tuple[list[dict[str, Any]], Cursor | None]:
    """The experiment's connections in the order they opened (then by id), with participant codes."""
    experiment_id, limit, connections = part.experiment["id"], part.limit, connection_table
    query = (
        select(
            connections.c.id,
            participants.c.code.label("participant"),
            connections.c.connected_at,
            connections.c.disconnected_at,
            connections.c.close_code,
            connections.c.route,
            connections.c.worker,
            connections.c.address,
            connections.c.user_agent,
        )
        .select_from(connections.join(participants, participants.c.id == connections.c.participant_id))
        .where(connections.c.experiment_id == experiment_id)
        .order_by(connections.c.connected_at, connections.c.id)
        .limit(limit)
    )
    if cursor:
        at, after = cursor
        query = query.where(
            or_(connections.c.connected_at > at, and_(connections.c.connected_at == at, connections.c.id > after))
        )
    with engine.connect() as conn:
        found = conn.execute(query).mappings().all()
    rows = [
        {**dict(r), "connected_at": iso(r["connected_at"]), "disconnected_at": iso(r["disconnected_at"])}
        for r in found
    ]
    last = (found[-1]["connected_at"], found[-1]["id"]) if len(found) == limit else None
    return rows, last


def ticks_page(experiment_id: int, limit: int, cursor: Cursor | None) -> Select[Any]:
    """The query of one page of :func:`ticks`: the experiment's ticks after ``cursor`` (the last id sent)."""
    ticks = tick_table
    query = (
        select(
            ticks.c.id,
            ticks.c.group_id,
            blocks.c.index.label("block"),
            ticks.c.kind,
            ticks.c.index,
            ticks.c.scheduled_at,
            ticks.c.actual_at,
            ticks.c.late,
            ticks.c.snapshot,
        )
        .select_from(ticks.join(groups, groups.c.id == ticks.c.group_id).join(blocks, blocks.c.id == groups.c.block_id))
        # on the tick's own experiment, not its group's: a range of ``ix_ticks_experiment_id_id``,
        # where paging by id through ``groups`` read every experiment's ticks stored since the page's first
        .where(ticks.c.experiment_id == experiment_id)
        .order_by(ticks.c.experiment_id, ticks.c.id)
        .limit(limit)
    )
    return query.where(ticks.c.id > cursor[0]) if cursor else query


def ticks(engine: Engine, part: Part, cursor: Cursor) -> tuple[list[dict[str, Any]], Cursor | None]:
    """The experiment's ticks in the order they were stored (the order they ran), with their block's index."""
    limit = part.limit
    with engine.connect() as conn:
        found = conn.execute(ticks_page(part.experiment["id"], limit, cursor)).mappings().all()
    rows = [
        {
            "group": r["group_id"],
            "block": r["block"],
            "kind": r["kind"],
            "index": r["index"],
            "scheduled_at": iso(r["scheduled_at"]),
            "actual_at": iso(r["actual_at"]),
            "late": bool(r["late"]),
            "snapshot": r["snapshot"],
        }
        for r in found
    ]
    return rows, ((found[-1]["id"],) if len(found) == limit else None)
