"""Reading the event log: events of an experiment in ``seq`` order, as the REST API lists them.

An event's ``participant`` is the one who sent it, ``None`` for every event the server sent
(CONTRACT §2). ``recipient``, an extension of the contract's event, is the participant the server
sent the event to alone, as stored with it (``events.recipient_id``): the participant whose result
a ``result`` event is, or the one member a game's ``send(…, to=[member])`` went to; ``None`` for an
event sent to the group, to several members, to nobody, or by a participant.

A ``result`` event stored without it (a journal's record of a server before the column, applied
after ``synclab db upgrade``, whose migration filled the rows already there) is named from its
``results`` row, as the log named every result's before: the same participant.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Connection, Engine, and_, func, select

from groups import RESULT

from .tables import events, participants, results, sessions
from .times import iso

#: the participants once more, as the events' recipients
_recipients = participants.alias("recipients")


def _after(experiment_id: int, after_seq: int, channel: str | None) -> ColumnElement[bool]:
    """An experiment's events past ``after_seq`` (one range of its ``seq`` index), of ``channel`` alone if given."""
    where = and_(events.c.experiment_id == experiment_id, events.c.seq > after_seq)
    return where if channel is None else and_(where, events.c.channel == channel)


def count_events(engine: Engine, experiment_id: int, after_seq: int, channel: str | None = None) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                select(func.count()).select_from(events).where(_after(experiment_id, after_seq, channel))
            ).scalar_one()
        )


def list_events(
    engine: Engine, experiment_id: int, after_seq: int, offset: int, limit: int, channel: str | None = None
) -> list[dict[str, Any]]:
    """Events of an experiment in ``seq`` order, with participant codes and group ids; of
    ``channel`` alone if given (read along the range of ``seq``: a rare channel costs a scan of it)."""
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
                _recipients.c.code.label("recipient"),
            )
            .select_from(
                events.outerjoin(participants, participants.c.id == events.c.participant_id)
                .outerjoin(_recipients, _recipients.c.id == events.c.recipient_id)
            )
            .where(_after(experiment_id, after_seq, channel))
            .order_by(events.c.seq)
            .offset(offset)
            .limit(limit)
        ).mappings().all()
        scored = _scored(conn, experiment_id, [
            r["seq"] for r in rows if r["channel"] == RESULT and r["participant"] is None and r["recipient"] is None
        ])
        return [
            {
                "seq": r["seq"],
                "timestamp": iso(r["timestamp"]),
                "group": r["group_id"],
                "participant": r["participant"],
                "channel": r["channel"],
                "value": r["value"],
                "bot": bool(r["bot"]),
                "recipient": r["recipient"] or scored.get(r["seq"]),
            }
            for r in rows
        ]


def _scored(conn: Connection, experiment_id: int, seqs: list[int]) -> dict[int, str]:
    """Whose result each of the ``result`` events ``seqs`` (stored without their recipient)
    reported: its ``results`` row's participant code (one range of ``ix_results_experiment_id_seq``)."""
    if not seqs:
        return {}
    found = conn.execute(
        select(results.c.seq, participants.c.code)
        .select_from(
            results.join(sessions, sessions.c.id == results.c.session_id).join(
                participants, participants.c.id == sessions.c.participant_id
            )
        )
        .where(results.c.experiment_id == experiment_id, results.c.seq.between(min(seqs), max(seqs)))
    )
    wanted = set(seqs)
    return {seq: code for seq, code in found if seq in wanted}
