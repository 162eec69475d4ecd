"""Arrivals through the shared join link: seats taken by label, completion codes, the lobby's seats.

A label takes the free seat of lowest ``index`` (no ``join_label``, no ``status``, never
connected through its pre-made link), so block 1's groups (participants in index order) fill in
order of arrival. One seat per label and experiment is the unique constraint
``uq_participants_join_label``: two arrivals with one label, on any worker, end on one seat.
On PostgreSQL the free seat is picked ``FOR UPDATE SKIP LOCKED``, so simultaneous arrivals take
different seats without waiting for each other; SQLite serialises its writers.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, and_, exists, func, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from .outcomes import score_sum, stored_score
from .tables import blocks, connections, experiments, groups, memberships, participants, sessions
from .times import to_datetime, to_epoch

#: no 0/O, 1/I/L: read aloud or typed from a screen without a doubt
CODE_ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
CODE_LENGTH = 10
#: the statuses that take a seat out of the join link's reach (besides a label)
NO_GROUP = "no_group"
BOT = "bot"


def completion_code() -> str:
    """A completion code: 10 characters of an unambiguous alphabet (about 50 bits)."""
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))


@dataclass(frozen=True, slots=True)
class Arrival:
    """Where a label was seated: the participant's ``code``, and whether the seat is new."""

    code: str
    new: bool


def _by_label(conn: Connection, experiment_id: int, label: str) -> str | None:
    found = conn.execute(
        select(participants.c.code).where(
            and_(participants.c.experiment_id == experiment_id, participants.c.join_label == label)
        )
    ).scalar()
    return None if found is None else str(found)


def label_seat(engine: Engine, experiment_id: int, label: str) -> str | None:
    """The code of the seat ``label`` took, if it took one."""
    with engine.connect() as conn:
        return _by_label(conn, experiment_id, label)


def _free_seat() -> Any:
    """The condition of a seat the join link may hand out."""
    return and_(
        participants.c.join_label.is_(None),
        participants.c.status.is_(None),
        ~exists().where(connections.c.participant_id == participants.c.id),
    )


def seat_arrival(engine: Engine, experiment_id: int, label: str, now: float) -> Arrival | None:
    """The seat of ``label``: its own if it came before, else the next free one; ``None``: full.

    Safe under any number of simultaneous arrivals on any number of processes: the same label
    twice loses the unique constraint's race and is answered with the seat that won it.
    """
    for _ in range(3):
        try:
            with engine.begin() as conn:
                known = _by_label(conn, experiment_id, label)
                if known is not None:
                    return Arrival(known, False)
                pick = (
                    select(participants.c.id)
                    .where(and_(participants.c.experiment_id == experiment_id, _free_seat()))
                    .order_by(participants.c.index)
                    .limit(1)
                    .with_for_update(skip_locked=True)
                    .scalar_subquery()
                )
                code = conn.execute(
                    update(participants)
                    .where(participants.c.id == pick)
                    .values(join_label=label, joined_at=to_datetime(now))
                    .returning(participants.c.code)
                ).scalar()
                return None if code is None else Arrival(str(code), True)
        except IntegrityError:
            # the same label was seated meanwhile (elsewhere): its seat is the answer
            with engine.connect() as conn:
                known = _by_label(conn, experiment_id, label)
            if known is not None:
                return Arrival(known, False)
    raise RuntimeError(f"label {label!r} could not be seated in 3 tries")


def ensure_completion_codes(engine: Engine, experiment_id: int) -> int:
    """Give every participant of the experiment without a completion code one (older rows); returns how many."""
    with engine.begin() as conn:
        missing = conn.execute(
            select(participants.c.id).where(
                and_(participants.c.experiment_id == experiment_id, participants.c.completion_code.is_(None))
            )
        ).scalars().all()
        for pid in missing:
            conn.execute(update(participants).where(participants.c.id == pid).values(completion_code=completion_code()))
        return len(missing)


def missing_completion_codes(engine: Engine, experiment_id: int) -> bool:
    with engine.connect() as conn:
        return bool(
            conn.execute(
                select(exists().where(
                    and_(participants.c.experiment_id == experiment_id, participants.c.completion_code.is_(None))
                ))
            ).scalar()
        )


@dataclass(slots=True)
class LobbySeat:
    code: str
    join_label: str | None
    joined_at: float | None
    status: str | None


@dataclass(slots=True)
class Lobby:
    """A block-1 group of an online experiment, as its lobby timer needs it."""

    group_id: int
    online: dict[str, Any]
    seats: list[LobbySeat]

    def first_joined(self) -> float | None:
        times = [s.joined_at for s in self.seats if s.joined_at is not None and s.status is None]
        return min(times) if times else None


def lobby_of(engine: Engine, group_id: int) -> Lobby | None:
    """The group's lobby if it is a group of the first block of an online experiment, else ``None``."""
    with engine.connect() as conn:
        row = conn.execute(
            select(experiments.c.online, blocks.c.index)
            .join(groups, groups.c.experiment_id == experiments.c.id)
            .join(blocks, blocks.c.id == groups.c.block_id)
            .where(groups.c.id == group_id)
        ).first()
        if row is None or row[0] is None or row[1] != 0:
            return None
        seats = conn.execute(
            select(participants.c.code, participants.c.join_label, participants.c.joined_at, participants.c.status)
            .join(memberships, memberships.c.participant_id == participants.c.id)
            .where(memberships.c.group_id == group_id)
            .order_by(memberships.c.position)
        ).all()
    return Lobby(group_id, dict(row[0]), [LobbySeat(c, j, to_epoch(t), s) for c, j, t, s in seats])


def close_lobby(engine: Engine, group_id: int, status: str) -> list[str]:
    """Take the group's seats out of the join link's reach; returns the codes whose status was set.

    ``no_group`` (release): every member still without a status, seated or not. ``bot``: the
    seats nobody took yet. A seat taken meanwhile by an arrival stays theirs (``bot``) or is
    released with the others (``no_group``): the update only touches rows still free then.
    """
    with engine.begin() as conn:
        members = select(memberships.c.participant_id).where(memberships.c.group_id == group_id)
        condition = and_(participants.c.id.in_(members), participants.c.status.is_(None))
        if status == BOT:
            condition = and_(condition, _free_seat())
        codes = conn.execute(
            update(participants).where(condition).values(status=status).returning(participants.c.code)
        ).scalars().all()
    return sorted(str(c) for c in codes)


@dataclass(slots=True)
class Departure:
    """What the way back of one participant is computed from."""

    experiment: dict[str, Any]
    participant: dict[str, Any]
    #: the sum of the participant's sessions' final scores
    score: float
    #: every session finished (the last block's period ended)
    finished: bool


def departure(engine: Engine, code: str) -> Departure | None:
    """Participant ``code`` with its experiment and score, or ``None`` for an unknown code."""
    with engine.connect() as conn:
        person = conn.execute(select(participants).where(participants.c.code == code)).mappings().first()
        if person is None:
            return None
        exp = conn.execute(select(experiments).where(experiments.c.id == person["experiment_id"])).mappings().one()
        scores = conn.execute(
            select(sessions.c.final_score, sessions.c.finished_at).where(sessions.c.participant_id == person["id"])
        ).all()
        count = conn.execute(
            select(func.count()).select_from(sessions).where(sessions.c.participant_id == person["id"])
        ).scalar_one()
    finished = bool(count) and all(f is not None for _, f in scores)
    return Departure(dict(exp), dict(person), score_sum(stored_score(s) for s, _ in scores), finished)
