"""Statuses stored before 6df488a and 1c98305, corrected by the rules since.

Until those commits the last block's period end stored ``finished`` for every member of the
group, even when the experimenter had ended the run before they played every block (they never
came, or played some blocks); since, such a run is ``cancelled`` (:mod:`server.storage.statuses`).
And an experiment whose last open period the experimenter ended with ``end?group=`` was stored
``done``; since, it is ``cancelled``, as ``end`` on all of it always made it. This revision
corrects what the stored rows tell:

- a participant stored ``finished`` with a session that never finished (``finished_at`` empty:
  a period of theirs that never started, which stays so) is ``cancelled``: the rule since
  6df488a, which reads the same sessions when the status is set. ``dropped``, ``replaced``,
  ``bot`` and ``no_group`` are the same under both rules and are left alone;
- an experiment stored ``done`` whose last ``period_end`` (the highest ``seq``: the one that
  closed it) came with a ``control`` event ``{"action": "end"}`` of the same group is
  ``cancelled`` (the control event is stored in the write of the period end it caused; it is
  looked for after that group's ``period_start``, when it had one). Its ``finished_at`` stays;
- a delivery to oTree not yet delivered whose payload says ``"synclab_status": "finished"`` for
  a participant now ``cancelled`` says ``cancelled`` (each attempt reads the status again too).

What the rows cannot tell, and stays as it was:

- a score already delivered to oTree, and a completion URL already followed, said ``finished``;
  the platform has that value (the delivery's payload keeps what was sent);
- when the experiment's last two period ends, one the experimenter's and one by the clock, were
  stored in the same batch of the writer (within milliseconds), the rows do not tell which one
  the writer took for the end of the experiment; the last by ``seq`` is taken.

A period ended without its game (a ``game_fault`` event with ``"ended": true``, stored with its
``period_end``) makes the experiment ``cancelled`` too when it closes it, by the experimenter's
``end`` or by itself. Such ends came after this revision (commit 774bea7), stored by that rule
from the first release that has them: this revision has none to correct and reads ``control`` only.

A database with nothing to correct (one of 0.1.0, which had no statuses, or one written since
those commits) is left as it was. Downgrading changes nothing: the statuses before were wrong,
and an older synclab reads ``cancelled`` as it is.

Revision ID: 0008_statuses_corrected
Revises: 0007_connection_worker
Created: 2026-12-05
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0008_statuses_corrected"
down_revision = "0007_connection_worker"
branch_labels = None
depends_on = None

# the tables as this revision knows them (never the application's, which may change later)
_experiments = sa.table("experiments", sa.column("id", sa.Integer()), sa.column("status", sa.String()))
_participants = sa.table("participants", sa.column("id", sa.Integer()), sa.column("status", sa.String()))
_sessions = sa.table("sessions", sa.column("participant_id", sa.Integer()), sa.column("finished_at", sa.DateTime()))
_events = sa.table(
    "events",
    sa.column("experiment_id", sa.Integer()),
    sa.column("seq", sa.BigInteger()),
    sa.column("group_id", sa.Integer()),
    sa.column("channel", sa.String()),
    sa.column("value", sa.JSON()),
)
_deliveries = sa.table(
    "deliveries",
    sa.column("id", sa.Integer()),
    sa.column("participant_id", sa.Integer()),
    sa.column("payload", sa.JSON()),
    sa.column("delivered_at", sa.DateTime()),
)
#: written out, not bound: so the partial index of ``state`` events (``ix_events_group_state``) serves
_STATE = sa.text("channel = 'state'")


def upgrade() -> None:
    conn = op.get_bind()
    _cancel_runs_never_played(conn)
    _cancel_experiments_ended_by_hand(conn)
    _deliveries_say_cancelled(conn)


def downgrade() -> None:
    """Nothing: the values before were wrong, and an older synclab reads these as they are."""


def _cancel_runs_never_played(conn: sa.Connection) -> None:
    unfinished = (
        sa.select(_sessions.c.participant_id)
        .where(_sessions.c.participant_id == _participants.c.id, _sessions.c.finished_at.is_(None))
        .exists()
    )
    conn.execute(
        sa.update(_participants).where(_participants.c.status == "finished", unfinished).values(status="cancelled")
    )


def _cancel_experiments_ended_by_hand(conn: sa.Connection) -> None:
    done = conn.execute(sa.select(_experiments.c.id).where(_experiments.c.status == "done")).scalars().all()
    for experiment_id in done:
        if _closed_by_hand(conn, int(experiment_id)):
            conn.execute(
                sa.update(_experiments)
                .where(_experiments.c.id == experiment_id, _experiments.c.status == "done")
                .values(status="cancelled")
            )


def _closed_by_hand(conn: sa.Connection, experiment_id: int) -> bool:
    """Whether the experiment's last period end came with the experimenter's ``end`` of its group."""
    last = conn.execute(
        sa.select(_events.c.group_id, _events.c.seq)
        .where(_events.c.experiment_id == experiment_id, _STATE)
        .order_by(_events.c.seq.desc())
        .limit(1)
    ).first()
    if last is None or last[0] is None:
        return False
    group_id, ended = int(last[0]), int(last[1])
    # the end of a period that ran comes after its start: only the events since are read
    started = conn.execute(
        sa.select(sa.func.max(_events.c.seq)).where(_events.c.group_id == group_id, _STATE, _events.c.seq < ended)
    ).scalar()
    controls = conn.execute(
        sa.select(_events.c.value).where(
            _events.c.experiment_id == experiment_id,
            _events.c.channel == "control",
            _events.c.group_id == group_id,
            _events.c.seq > (started or 0),
            _events.c.seq < ended,
        )
    ).scalars()
    return any(_ends(value) for value in controls)


def _ends(value: Any) -> bool:
    return isinstance(value, dict) and value.get("action") == "end"


def _deliveries_say_cancelled(conn: sa.Connection) -> None:
    waiting = conn.execute(
        sa.select(_deliveries.c.id, _deliveries.c.payload)
        .join(_participants, _participants.c.id == _deliveries.c.participant_id)
        .where(_deliveries.c.delivered_at.is_(None), _participants.c.status == "cancelled")
    ).all()
    for delivery_id, payload in waiting:
        if isinstance(payload, dict) and payload.get("synclab_status") == "finished":
            conn.execute(
                sa.update(_deliveries)
                .where(_deliveries.c.id == delivery_id)
                .values(payload={**payload, "synclab_status": "cancelled"})
            )
