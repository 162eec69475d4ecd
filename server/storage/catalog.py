"""Experiment rows: creating an experiment with its blocks, participants, groups and sessions,
listing experiments, and the groups an experimenter's action touches."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, and_, func, insert, select, update

from groups import Phase

from .arrivals import completion_code
from .tables import blocks, experiments, groups, memberships, participants, sessions
from .times import to_datetime, to_epoch


@dataclass(slots=True)
class NewBlock:
    index: int
    period_length: float | None
    num_subperiods: int | None
    rate_limit: float | None
    bonus_points: float
    matching: str
    #: participant indexes per group, in member order
    groups: list[list[int]]


@dataclass(slots=True)
class NewExperiment:
    code: str
    game: str
    config: dict[str, Any]
    group_size: int
    participant_codes: list[str]
    blocks: list[NewBlock]
    created_at: float
    block_pause: float = 5.0
    #: ``experiments.online`` (see ``server.online``); ``None``: pre-made links only
    online: dict[str, Any] | None = None


def insert_experiment(engine: Engine, spec: NewExperiment) -> int:
    """Store an experiment with its blocks, participants and groups; returns its id."""
    with engine.begin() as conn:
        experiment_id = conn.execute(
            insert(experiments)
            .values(
                code=spec.code,
                game=spec.game,
                status="pending",
                config=spec.config,
                num_participants=len(spec.participant_codes),
                group_size=spec.group_size,
                num_blocks=len(spec.blocks),
                block_pause=spec.block_pause,
                online=spec.online,
                created_at=to_datetime(spec.created_at),
                last_seq=0,
            )
            .returning(experiments.c.id)
        ).scalar_one()
        # in bulk, each table in a few multi-row statements (SQLAlchemy's "insertmanyvalues",
        # RETURNING in the rows' order): it runs on the writer thread, between the decisions of
        # the experiments under way, which wait for it (10,000 participants of 10 blocks made
        # row by row took 9 s)
        participant_ids = [
            row.id
            for row in conn.execute(
                insert(participants).returning(participants.c.id, sort_by_parameter_order=True),
                [
                    {"experiment_id": experiment_id, "code": code, "label": f"P{i + 1}", "index": i,
                     "completion_code": completion_code()}
                    for i, code in enumerate(spec.participant_codes)
                ],
            )
        ] if spec.participant_codes else []
        member_rows: list[dict[str, Any]] = []
        session_rows: list[dict[str, Any]] = []
        for block in spec.blocks:
            block_id = conn.execute(
                insert(blocks)
                .values(
                    experiment_id=experiment_id,
                    index=block.index,
                    period_length=block.period_length,
                    num_subperiods=block.num_subperiods,
                    rate_limit=block.rate_limit,
                    bonus_points=block.bonus_points,
                    matching=block.matching,
                    status="pending",
                )
                .returning(blocks.c.id)
            ).scalar_one()
            group_ids = [
                row.id
                for row in conn.execute(
                    insert(groups).returning(groups.c.id, sort_by_parameter_order=True),
                    [
                        {"experiment_id": experiment_id, "block_id": block_id, "index": g, "phase": "waiting",
                         "subperiod": 0, "last_seq": 0}
                        for g in range(len(block.groups))
                    ],
                )
            ] if block.groups else []  # (an empty list would be one row of defaults)
            for group_id, members in zip(group_ids, block.groups, strict=True):
                for pos, p in enumerate(members):
                    pid = participant_ids[p]
                    member_rows.append({"group_id": group_id, "participant_id": pid, "block_id": block_id, "position": pos})
                    # every session is planned with its group: unstarted until the period starts
                    session_rows.append({"experiment_id": experiment_id, "participant_id": pid, "block_id": block_id,
                                         "group_id": group_id, "json_data": {}, "final_score": 0.0})
        if member_rows:
            conn.execute(insert(memberships), member_rows)
            conn.execute(insert(sessions), session_rows)
        return int(experiment_id)


def experiment_row(engine: Engine, code: str) -> dict[str, Any] | None:
    with engine.connect() as conn:
        row = conn.execute(select(experiments).where(experiments.c.code == code)).mappings().first()
        return None if row is None else dict(row)


def participant_game(engine: Engine, code: str) -> str | None:
    """The game of participant ``code``'s experiment, or ``None`` for an unknown code."""
    with engine.connect() as conn:
        game = conn.execute(
            select(experiments.c.game)
            .join(participants, participants.c.experiment_id == experiments.c.id)
            .where(participants.c.code == code)
        ).scalar_one_or_none()
        return None if game is None else str(game)


def count_experiments(engine: Engine, status: str | None) -> int:
    query = select(func.count()).select_from(experiments)
    if status is not None:
        query = query.where(experiments.c.status == status)
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def list_experiments(engine: Engine, status: str | None, offset: int, limit: int) -> list[dict[str, Any]]:
    """Experiments, the newest first, each with its timing as its first block stored it (``TIMING``,
    as :func:`experiment_timing`)."""
    first = and_(blocks.c.experiment_id == experiments.c.id, blocks.c.index == 0)
    query = (
        select(experiments, *(blocks.c[name] for name in TIMING))
        .select_from(experiments.outerjoin(blocks, first))
        .order_by(experiments.c.id.desc())
        .offset(offset)
        .limit(limit)
    )
    if status is not None:
        query = query.where(experiments.c.status == status)
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]


def experiment_participants(engine: Engine, experiment_id: int) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(participants.c.code, participants.c.label, participants.c.index)
            .where(participants.c.experiment_id == experiment_id)
            .order_by(participants.c.index)
        ).mappings()
        return [dict(r) for r in rows]


#: what ``POST /api/experiments`` took for every block, as stored (each block holds its own copy)
TIMING = ("period_length", "num_subperiods", "rate_limit", "bonus_points", "matching")


def experiment_timing(engine: Engine, experiment_id: int) -> dict[str, Any]:
    """The experiment's timing as its first block stored it: every block of one is created with the same."""
    with engine.connect() as conn:
        row = conn.execute(
            select(*(blocks.c[name] for name in TIMING))
            .where(blocks.c.experiment_id == experiment_id)
            .order_by(blocks.c.index)
            .limit(1)
        ).mappings().first()
    return {name: None if row is None else row[name] for name in TIMING}


def live_group_ids(engine: Engine) -> list[int]:
    """Groups whose period runs or is paused, in experiments still going: resumed at start-up."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(groups.c.id)
            .join(experiments, experiments.c.id == groups.c.experiment_id)
            .where(and_(groups.c.phase.in_(("running", "paused")), experiments.c.status.in_(("pending", "running"))))
            .order_by(groups.c.id)
        )
        return [int(r[0]) for r in rows]


@dataclass(slots=True)
class GroupPlace:
    """A group of an experiment, for choosing which ones an experimenter's action touches."""

    group_id: int
    block_index: int
    phase: Phase
    ended_at: float | None
    members: list[int]


def experiment_groups(engine: Engine, experiment_id: int) -> list[GroupPlace]:
    """Every group of an experiment in block order, with its members' participant ids."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(groups.c.id, blocks.c.index, groups.c.phase, groups.c.ended_at, memberships.c.participant_id)
            .join(blocks, blocks.c.id == groups.c.block_id)
            .join(memberships, memberships.c.group_id == groups.c.id)
            .where(groups.c.experiment_id == experiment_id)
            .order_by(blocks.c.index, groups.c.index, memberships.c.position)
        ).all()
    places: dict[int, GroupPlace] = {}
    for gid, block_index, phase, ended_at, pid in rows:
        place = places.get(gid)
        if place is None:
            place = places[gid] = GroupPlace(gid, block_index, Phase(phase), to_epoch(ended_at), [])
        place.members.append(pid)
    return list(places.values())


def set_experiment_status(engine: Engine, experiment_id: int, status: str, at: float | None = None) -> None:
    with engine.begin() as conn:
        values: dict[str, Any] = {"status": status}
        if at is not None:
            values["finished_at"] = to_datetime(at)
        conn.execute(update(experiments).where(experiments.c.id == experiment_id).values(**values))



def new_code(nbytes: int = 18) -> str:
    """An unguessable URL-safe code (``nbytes`` * 8 bits of randomness; 144 by default).

    Never starting with ``-``: a command line would read such a code as an option
    (``synclab verify -x…``); dropping those costs a 64th of the codes, not a bit of entropy
    worth having.
    """
    for _ in range(1000):
        code = secrets.token_urlsafe(nbytes)
        if not code.startswith("-"):
            return code
    raise RuntimeError("no code without a leading '-' in 1000 draws")  # (63/64)^-1000: never


