"""A result is indexed by its experiment and its event's ``seq``.

A ``result`` event is the server's, sent to the participant whose result it is; the event log
(``GET /api/experiments/{code}/events``, the ``events`` export) names that participant as the
event's ``recipient`` from its ``results`` row, looked up by ``seq`` for each page. The index
``ix_results_experiment_id_seq`` (experiment, seq) makes that one range of a page's results, not
every result of the experiment. No row changes; the downgrade drops it.

Revision ID: 0014_results_seq_index
Revises: 0013_ticks_experiment
Created: 2026-12-05
"""

from __future__ import annotations

from alembic import op

revision = "0014_results_seq_index"
down_revision = "0013_ticks_experiment"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_results_experiment_id_seq", "results", ["experiment_id", "seq"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_results_experiment_id_seq", table_name="results")
