"""Deliveries: a participant's score on its way back to oTree, stored until it lands.

A delivery is stored when a participant's run ends in an experiment whose ``online`` settings name
an ``otree_url`` (one row per participant and kind, a constraint). Whichever worker posts it first
claims it here (``next_at`` moved past a lease, in one ``UPDATE``), so in a cluster one worker at a
time posts a given delivery; a worker that dies during its attempt leaves it to be claimed again
once the lease has passed. The REST key stays in ``experiments.online``: a claim hands it to the
poster, a delivery row never holds it.

A delivery that cannot be posted is stored refused (``refused_at``, the reason in ``last_error``,
no payload) and never posted nor claimed: a participant whose score is no finite number (on
SQLite the sum of scores near 1e308 was infinity, which JSON posts as ``null``; PostgreSQL
refused the sum), or whose delivery the database refuses for its data. Its row keeps it from
the start-up sweep, so it is refused, and logged, once.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

from sqlalchemy import Engine, and_, func, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from .outcomes import score_sum, stored_score
from .tables import blocks, deliveries, experiments, participants, sessions
from .times import iso, to_datetime
from .unstorable import REFUSED_BY_DATABASE, database_said, refused_by_database

log = logging.getLogger("synclab.deliveries")
#: the only kind so far: ``POST {otree_url}/api/participant_vars/{label}``
OTREE = "otree"


@dataclass(frozen=True, slots=True)
class Claimed:
    """A delivery this worker may post now: where, what, and with which key (never stored here)."""

    id: int
    url: str
    payload: dict[str, Any]
    #: the attempt this is (1 for the first)
    attempt: int
    rest_key: str | None


def _online(conn: Connection, experiment_id: int) -> tuple[str, dict[str, Any]] | None:
    row = conn.execute(
        select(experiments.c.code, experiments.c.online).where(experiments.c.id == experiment_id)
    ).first()
    if row is None or not row[1] or not row[1].get("otree_url"):
        return None
    return str(row[0]), dict(row[1])


class Unpostable(ValueError):
    """A delivery whose payload cannot be posted: its score is no finite number (the reason)."""


def _score(conn: Connection, participant_id: int) -> float:
    """The participant's score as the API gives it (:func:`.outcomes.score_sum` of their sessions'
    ``final_score``); :class:`Unpostable` when it is no finite number."""
    scores = [
        stored_score(s)  # (nan: a session's own score past a float's range)
        for s in conn.execute(
            select(sessions.c.final_score).where(sessions.c.participant_id == participant_id).order_by(sessions.c.id)
        ).scalars()
    ]
    total = score_sum(scores)
    if math.isfinite(total):
        return total
    why = "past a float's range" if all(not math.isinf(s) for s in scores) else repr(total)
    shown = ", ".join("null" if math.isnan(s) else repr(s) for s in scores[:5]) + (", ..." if len(scores) > 5 else "")
    raise Unpostable(f"not posted: the score is not a finite number, which oTree would get as null "
                     f"(the sum of the participant's {len(scores)} final scores {shown} is {why})")


def _payload(conn: Connection, experiment_code: str, participant_id: int) -> dict[str, Any]:
    """What oTree's ``participant.vars`` get: the score, how the run ended, the completion code.
    :class:`Unpostable` when the score is no finite number (never posted: JSON's ``null``)."""
    me = conn.execute(
        select(participants.c.status, participants.c.completion_code).where(participants.c.id == participant_id)
    ).one()
    return {
        "synclab_score": _score(conn, participant_id),
        "synclab_status": me[0] or "finished",
        "synclab_completion_code": me[1],
        "synclab_experiment": experiment_code,
    }


def add_otree_deliveries(engine: Engine, experiment_id: int, participant_ids: list[int], now: float) -> int:
    """Store a delivery for each of these participants who came from oTree; returns how many are new.

    Nothing for an experiment without ``online.otree_url``, nor for a participant without a join
    label (the oTree participant code they arrived with: a pre-made link, or a bot's seat). A
    participant who has one already keeps it (the unique constraint): the call may be repeated.
    A delivery that cannot be posted (a score that is no finite number, :class:`Unpostable`) or
    that the database refuses for its data is stored refused, with the reason, and logged once;
    the others are stored as ever (before, one refusal failed them all).
    """
    with engine.begin() as conn:
        found = _online(conn, experiment_id)
        if found is None or not participant_ids:
            return 0
        code, online = found
        base = str(online["otree_url"]).rstrip("/")
        rows = conn.execute(
            select(participants.c.id, participants.c.join_label)
            .outerjoin(deliveries, and_(deliveries.c.participant_id == participants.c.id, deliveries.c.kind == OTREE))
            .where(
                participants.c.id.in_(participant_ids),
                participants.c.experiment_id == experiment_id,
                participants.c.join_label.is_not(None),
                deliveries.c.id.is_(None),
            )
        ).all()
        added = 0
        at = to_datetime(now)
        for pid, label in rows:
            row = {
                "experiment_id": experiment_id,
                "participant_id": pid,
                "kind": OTREE,
                # the label comes through the public join link: one path segment, never a way
                # to another of oTree's endpoints (``../``) or a query
                "url": f"{base}/api/participant_vars/{quote(label, safe='')}",
                "attempts": 0,
                "created_at": at,
            }
            try:
                with conn.begin_nested():
                    try:
                        payload = _payload(conn, code, pid)
                    except Unpostable as exc:
                        refused: str | None = str(exc)
                        conn.execute(insert(deliveries).values(**row, **_refused(str(exc), at)))
                    else:
                        refused = None
                        conn.execute(insert(deliveries).values(**row, payload=payload, next_at=at))
            except Exception as exc:
                if isinstance(exc, IntegrityError) and _has_delivery(conn, pid):
                    continue  # stored meanwhile by another worker: one delivery per participant
                if not refused_by_database(exc):
                    raise
                refused = REFUSED_BY_DATABASE + database_said(exc)
                try:
                    with conn.begin_nested():  # (no payload: nothing of the participant's the database took)
                        conn.execute(insert(deliveries).values(**row, **_refused(refused, at)))
                except Exception as again:
                    if not refused_by_database(again):
                        raise
                    log.error("experiment %s: the delivery of participant %s (label %r) is not stored, the others "
                              "are: %s; refused too: %s", experiment_id, pid, label, refused, database_said(again))
                    continue
            added += 1
            if refused is not None:
                log.error("experiment %s: the delivery of participant %s (label %r) is refused, never posted "
                          "(the others are stored): %s", experiment_id, pid, label, refused)
        return added


def _refused(reason: str, at: datetime | None) -> dict[str, Any]:
    """A delivery's columns once it is refused: never due, no payload, the reason."""
    return {"refused_at": at, "next_at": None, "payload": None, "last_error": reason[:500]}


def _has_delivery(conn: Connection, participant_id: int) -> bool:
    found = conn.execute(
        select(deliveries.c.id).where(deliveries.c.participant_id == participant_id, deliveries.c.kind == OTREE)
    ).first()
    return found is not None


def finished_without_delivery(engine: Engine) -> list[tuple[int, list[int]]]:
    """Per experiment with ``otree_url``: participants whose last block's session is finished but
    who have no delivery (a process that stopped between the two writes). For the start-up sweep."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(sessions.c.experiment_id, sessions.c.participant_id, experiments.c.online)
            .join(blocks, blocks.c.id == sessions.c.block_id)
            .join(experiments, experiments.c.id == sessions.c.experiment_id)
            .join(participants, participants.c.id == sessions.c.participant_id)
            .outerjoin(
                deliveries, and_(deliveries.c.participant_id == sessions.c.participant_id, deliveries.c.kind == OTREE)
            )
            .where(
                blocks.c.index == experiments.c.num_blocks - 1,
                sessions.c.finished_at.is_not(None),
                participants.c.join_label.is_not(None),
                deliveries.c.id.is_(None),
            )
        ).all()
    by_experiment: dict[int, list[int]] = {}
    for experiment_id, participant_id, online in rows:
        if not online or not online.get("otree_url"):
            continue
        by_experiment.setdefault(int(experiment_id), []).append(int(participant_id))
    return sorted(by_experiment.items())


def due_deliveries(engine: Engine, now: float, limit: int) -> list[int]:
    """Deliveries not delivered whose next attempt is due, the longest waiting first."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(deliveries.c.id)
            .where(
                deliveries.c.delivered_at.is_(None),
                deliveries.c.refused_at.is_(None),
                deliveries.c.next_at <= to_datetime(now),
            )
            .order_by(deliveries.c.next_at, deliveries.c.id)
            .limit(limit)
        )
        return [int(r[0]) for r in rows]


def next_delivery_at(engine: Engine) -> datetime | None:
    """When the next attempt of any delivery falls due (``None``: nothing is waiting)."""
    with engine.connect() as conn:
        value: datetime | None = conn.execute(
            select(func.min(deliveries.c.next_at)).where(
                deliveries.c.delivered_at.is_(None), deliveries.c.refused_at.is_(None)
            )
        ).scalar_one()
        return value


def claim_delivery(engine: Engine, delivery_id: int, now: float, lease: float) -> Claimed | None:
    """Take the delivery for one attempt, unless it is not due or another worker has it.

    One ``UPDATE`` moves ``next_at`` past the lease and counts the attempt, only where it is
    still due: of two workers, one changes the row, the other finds it changed. The payload is
    brought up to date (the status or completion code may have been set since it was stored).
    """
    with engine.begin() as conn:
        taken = conn.execute(
            update(deliveries)
            .where(
                deliveries.c.id == delivery_id,
                deliveries.c.delivered_at.is_(None),
                deliveries.c.refused_at.is_(None),
                deliveries.c.next_at <= to_datetime(now),
            )
            .values(next_at=to_datetime(now + lease), attempts=deliveries.c.attempts + 1)
        )
        if taken.rowcount != 1:
            return None
        row = conn.execute(
            select(deliveries.c.experiment_id, deliveries.c.participant_id, deliveries.c.url, deliveries.c.attempts)
            .where(deliveries.c.id == delivery_id)
        ).one()
        found = _online(conn, row[0])
        if found is None:  # the experiment's settings cannot change, but never post without them
            return None
        code, online = found
        try:
            payload = _payload(conn, code, row[1])
        except Unpostable as exc:  # (a score changed since it was stored: never posted as null)
            conn.execute(update(deliveries).where(deliveries.c.id == delivery_id).values(
                **_refused(str(exc), to_datetime(now)), attempts=deliveries.c.attempts - 1  # (none made)
            ))
            log.error("delivery %s (experiment %s, participant %s) is refused, never posted: %s",
                      delivery_id, row[0], row[1], exc)
            return None
        conn.execute(update(deliveries).where(deliveries.c.id == delivery_id).values(payload=payload))
        return Claimed(delivery_id, str(row[2]), payload, int(row[3]), online.get("otree_rest_key"))


def delivery_done(engine: Engine, delivery_id: int, now: float) -> None:
    with engine.begin() as conn:
        conn.execute(
            update(deliveries)
            .where(deliveries.c.id == delivery_id)
            .values(delivered_at=to_datetime(now), next_at=None)
        )


def delivery_failed(engine: Engine, delivery_id: int, error: str, retry_at: float) -> None:
    """An attempt failed: why (at most 500 characters), and when the next one is due."""
    with engine.begin() as conn:
        conn.execute(
            update(deliveries)
            .where(deliveries.c.id == delivery_id, deliveries.c.delivered_at.is_(None), deliveries.c.refused_at.is_(None))
            .values(last_error=error[:500], next_at=to_datetime(retry_at))
        )


def delivery_status(row: Any) -> str:
    """``delivered``, ``refused`` (never posted, ``last_error`` says why), ``failing`` (an attempt
    failed; it is retried) or ``pending``."""
    if row["refused_at"] is not None:
        return "refused"
    if row["delivered_at"] is not None:
        return "delivered"
    return "failing" if row["last_error"] is not None else "pending"


def count_deliveries(engine: Engine, experiment_id: int) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                select(func.count()).select_from(deliveries).where(deliveries.c.experiment_id == experiment_id)
            ).scalar_one()
        )


def list_deliveries(engine: Engine, experiment_id: int, offset: int, limit: int) -> list[dict[str, Any]]:
    """The experiment's deliveries in participant order, as the API gives them (never the key)."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                deliveries,
                participants.c.code.label("participant"),
                participants.c.join_label.label("label"),
            )
            .join(participants, participants.c.id == deliveries.c.participant_id)
            .where(deliveries.c.experiment_id == experiment_id)
            .order_by(participants.c.index, deliveries.c.id)
            .offset(offset)
            .limit(limit)
        ).mappings()
        return [
            {
                "participant": r["participant"],
                "label": r["label"],
                "kind": r["kind"],
                "url": r["url"],
                "status": delivery_status(r),
                "payload": r["payload"],
                "attempts": r["attempts"],
                "last_error": r["last_error"],
                "created_at": iso(r["created_at"]),
                "next_at": iso(r["next_at"]),
                "delivered_at": iso(r["delivered_at"]),
                "refused_at": iso(r["refused_at"]),
            }
            for r in rows
        ]
