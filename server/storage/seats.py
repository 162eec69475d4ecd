"""Seats: who a connecting participant is, the group they are in now, and everything a live group
is built from (its experiment, block, members and stored state)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, and_, func, select, text, union_all
from sqlalchemy.engine import Connection

from groups import GroupState, Phase, current_block

from .frameids import not_added
from .tables import (
    STATE_ONLY,
    blocks,
    connections,
    events,
    experiments,
    groups,
    memberships,
    participants,
    sessions,
)
from .tables import client_ids as stored_ids
from .times import to_epoch


@dataclass(slots=True)
class GroupSpec:
    """Everything a live group is built from: its experiment, block, members and stored state."""

    group_id: int
    group_index: int
    experiment_id: int
    experiment_code: str
    experiment_status: str
    game: str
    config: dict[str, Any]
    block_id: int
    block_index: int
    num_blocks: int
    block_pause: float
    period_length: float | None
    num_subperiods: int | None
    rate_limit: float | None
    bonus_points: float
    #: member codes in order, their participant ids, and their sessions in this block
    members: list[str]
    member_ids: dict[str, int]
    session_ids: dict[str, int]
    #: the ``groups`` row
    group: dict[str, Any]
    #: the group's last ``state`` event: ``{"seq", "ts", "value"}``
    last_state: dict[str, Any] | None
    #: the experiment's ``online`` settings (``server.online``), ``None`` without
    online: dict[str, Any] | None = None
    #: each member's ``participants.status`` (``None``: still playing, see ``storage.statuses``)
    statuses: dict[str, str | None] = field(default_factory=dict)
    #: since when (epoch seconds) each member without an open connection has been away: its
    #: last connection's close (absent: never connected, or a connection left open by a crash)
    away_since: dict[str, float] = field(default_factory=dict)

    @property
    def last_block(self) -> bool:
        return self.block_index >= self.num_blocks - 1

    def state(self) -> GroupState:
        """The group's state as its ``groups`` row holds it, for the core."""
        row = self.group
        state = GroupState(
            phase=Phase(row["phase"]),
            decisions=dict(row["decisions"] or {}),
            started_at=to_epoch(row["started_at"]),
            ends_at=to_epoch(row["ends_at"]),
            ended_at=to_epoch(row["ended_at"]),
            subperiod=int(row["subperiod"] or 0),
            vars=dict(row["vars"] or {}),
        )
        state.set_clock(row.get("clock"))
        return state


@dataclass(slots=True)
class Seat:
    """Who a connecting participant is, and the group it is in now."""

    participant_id: int
    participant_code: str
    experiment_id: int
    group_id: int
    #: the experiment's game (its name or import path)
    game: str = ""
    #: every group of the participant, in block order (the otree-redwood route may name any)
    groups: tuple[int, ...] = ()


def load_group(engine: Engine, group_id: int) -> GroupSpec | None:
    with engine.connect() as conn:
        return _group_spec(conn, group_id)


def _group_spec(conn: Connection, group_id: int) -> GroupSpec | None:
    row = conn.execute(
        select(
            groups,
            blocks.c.index.label("block_index"),
            blocks.c.period_length,
            blocks.c.num_subperiods,
            blocks.c.rate_limit,
            blocks.c.bonus_points,
        )
        .join(blocks, blocks.c.id == groups.c.block_id)
        .where(groups.c.id == group_id)
    ).mappings().first()
    if row is None:
        return None
    exp = conn.execute(select(experiments).where(experiments.c.id == row["experiment_id"])).mappings().one()
    members = conn.execute(
        select(participants.c.code, participants.c.id, sessions.c.id, participants.c.status)
        .join(memberships, memberships.c.participant_id == participants.c.id)
        .join(
            sessions,
            and_(sessions.c.participant_id == participants.c.id, sessions.c.block_id == memberships.c.block_id),
        )
        .where(memberships.c.group_id == group_id)
        .order_by(memberships.c.position)
    ).all()
    state = conn.execute(last_state_query(group_id)).first()
    codes = {m[1]: m[0] for m in members}
    # only the stand-ins' dropout clocks need it (experiments with ``online.dropout_after``)
    left = [] if (exp["online"] or {}).get("dropout_after") is None else conn.execute(
        select(
            connections.c.participant_id,
            func.max(connections.c.disconnected_at),
            func.count(connections.c.id) - func.count(connections.c.disconnected_at),
        )
        .where(connections.c.participant_id.in_(list(codes)))
        .group_by(connections.c.participant_id)
    ).all()
    return GroupSpec(
        group_id=group_id,
        group_index=row["index"],
        experiment_id=exp["id"],
        experiment_code=exp["code"],
        experiment_status=exp["status"],
        game=exp["game"],
        config=exp["config"] or {},
        block_id=row["block_id"],
        block_index=row["block_index"],
        num_blocks=exp["num_blocks"],
        block_pause=float(exp["block_pause"] or 0.0),
        period_length=row["period_length"],
        num_subperiods=row["num_subperiods"],
        rate_limit=row["rate_limit"],
        bonus_points=float(row["bonus_points"] or 0.0),
        members=[m[0] for m in members],
        member_ids={m[0]: m[1] for m in members},
        session_ids={m[0]: m[2] for m in members},
        group=dict(row),
        last_state=None if state is None else {"seq": state[0], "ts": to_epoch(state[1]), "value": state[2]},
        online=exp["online"],
        statuses={m[0]: m[3] for m in members},
        away_since={
            codes[pid]: at for pid, last, still_open in left if not still_open and (at := to_epoch(last)) is not None
        },
    )


def last_state_query(group_id: int) -> Any:
    """The group's last ``state`` event: ``seq, timestamp, value``.

    Its condition on the channel is the partial index's own text (``tables.STATE_ONLY``), not
    a bound parameter, so the database can use ``ix_events_group_state``.
    """
    return (
        select(events.c.seq, events.c.timestamp, events.c.value)
        .where(and_(events.c.group_id == group_id, text(STATE_ONLY)))
        .order_by(events.c.seq.desc())
        .limit(1)
    )


def load_seat(engine: Engine, code: str, now: float) -> Seat | None:
    """The participant ``code``'s group at ``now`` (see :func:`groups.current_block`)."""
    with engine.connect() as conn:
        me = conn.execute(
            select(participants.c.id, participants.c.experiment_id, experiments.c.block_pause, experiments.c.game)
            .join(experiments, experiments.c.id == participants.c.experiment_id)
            .where(participants.c.code == code)
        ).first()
        if me is None:
            return None
        participant_id, experiment_id, block_pause, game = me
        rows = conn.execute(
            select(groups.c.id, groups.c.phase, groups.c.ended_at)
            .join(memberships, memberships.c.group_id == groups.c.id)
            .join(blocks, blocks.c.id == groups.c.block_id)
            .where(memberships.c.participant_id == participant_id)
            .order_by(blocks.c.index)
        ).all()
        index = current_block([(Phase(r[1]), to_epoch(r[2])) for r in rows], now, float(block_pause or 0.0))
        return Seat(participant_id, code, experiment_id, rows[index][0], str(game), tuple(r[0] for r in rows))


def client_ids(engine: Engine, participant_id: int) -> list[tuple[str, int]]:
    """Every client frame id this participant sent that is stored, with its ``seq``, oldest first."""
    with engine.connect() as conn:
        rows = conn.execute(_ids_of(participant_id))
        first: dict[str, int] = {}
        for cid, seq in rows:
            if cid not in first or seq < first[cid]:  # (a repeat the journal's apply has not dropped yet)
                first[cid] = int(seq)
    return sorted(first.items(), key=lambda row: row[1])


def client_seq(engine: Engine, participant_id: int, client_id: str) -> int | None:
    """The ``seq`` of this participant's stored frame with ``client_id``; ``None``: none is stored."""
    with engine.connect() as conn:
        found = [int(seq) for _, seq in conn.execute(_ids_of(participant_id, client_id))]
    return min(found) if found else None


def _ids_of(participant_id: int, client_id: str | None = None) -> Any:
    """A participant's ids (or one of them) and their ``seq``: ``client_ids``'s rows, and the
    events' that the journal's apply has not added there yet (:mod:`.frameids`)."""
    added = select(stored_ids.c.client_id, stored_ids.c.seq).where(stored_ids.c.participant_id == participant_id)
    pending = select(events.c.client_id, events.c.seq).where(
        not_added(), events.c.participant_id == participant_id, events.c.client_id.is_not(None)
    )
    if client_id is not None:
        added = added.where(stored_ids.c.client_id == client_id)
        pending = pending.where(events.c.client_id == client_id)
    return union_all(added, pending)

