"""A period's end scores its group's sessions (``final_score`` = bonus + Σ its results,
:mod:`server.storage.periods`) in one statement that reads each session's results once, and
stores what the former statement, which put that sum into its CASE twice (each session's
results read and summed twice), stored: bit for bit, NULL past a float's range, never infinity.
A score too small to scale (:data:`TOO_SMALL`) counts as a zero of its sign on both databases:
PostgreSQL refused the former statement's product, and with it the period's end."""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, case, delete, event, func, insert, null, select, text, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from server.storage import NewBlock, NewExperiment, insert_experiment, new_code, to_datetime
from server.storage.periods import _SCALE, period_ended
from server.storage.tables import blocks, groups, results, sessions

AT = 1_800_000_000.0
BIGGEST = sys.float_info.max
#: the former expression, as it was: the scaled sum (two scalar subqueries) put in the CASE twice
_FORMER_SCALED = (
    select(blocks.c.bonus_points * _SCALE).where(blocks.c.id == sessions.c.block_id).scalar_subquery()
    + select(func.coalesce(func.sum(results.c.score * _SCALE), 0.0))
    .where(results.c.session_id == sessions.c.id)
    .scalar_subquery()
)
_FORMER_EARNED = case((func.abs(_FORMER_SCALED) <= BIGGEST * _SCALE, _FORMER_SCALED / _SCALE), else_=null())
#: scores at the edges: past a float's range together, exactly at it, subnormal once scaled
#: (below 2**-958), both zeros
EDGES = (
    0.0, -0.0, 1.0, -1.0, 0.1, 1.5, 1e9, -1e9, BIGGEST, -BIGGEST, BIGGEST / 2, BIGGEST / 3, 1e308, -1e308, 2.0**1023,
    2.0**-958, -(2.0**-958), 2.0**-959, 2.0**-1000, -(2.0**-1010),
)
#: scores so small that scaled they are zero (2**-1011 and below): PostgreSQL refused the former
#: statement's product (``value out of range: underflow``), where SQLite made it that zero
TOO_SMALL = (2.0**-1011, -(2.0**-1011), sys.float_info.min, 5e-324, -5e-324, 3 * 2.0**-1074)
scores = st.one_of(
    st.sampled_from(EDGES + TOO_SMALL),
    st.floats(allow_nan=False, allow_infinity=False),
    st.builds(math.copysign, st.floats(min_value=0.0, max_value=2.0**-958), st.sampled_from((1.0, -1.0))),
    st.floats(min_value=-1e6, max_value=1e6),
)


def _as_scaled(score: float) -> float:
    """A score as the former statement's product took it on SQLite (a float's): one too small to
    scale, a zero of its sign."""
    return math.copysign(0.0, score) if abs(score) <= 2.0**-1011 else score


@dataclass(slots=True)
class Group:
    experiment_id: int
    group_id: int
    block_id: int
    session_ids: list[int]


@pytest.fixture
def group(engine: Engine) -> Group:
    """A one-block experiment of one group of four, its sessions started."""
    codes = [new_code() for _ in range(4)]
    block = NewBlock(0, 60.0, None, None, 1.5, "fixed", [[0, 1, 2, 3]])
    experiment_id = insert_experiment(engine, NewExperiment(new_code(), "public_goods", {}, 4, codes, [block], AT))
    with engine.begin() as conn:
        group_id, block_id = conn.execute(
            select(groups.c.id, groups.c.block_id).where(groups.c.experiment_id == experiment_id)
        ).one()
        ids = conn.execute(select(sessions.c.id).where(sessions.c.group_id == group_id).order_by(sessions.c.id)).scalars()
        session_ids = list(ids)
        conn.execute(update(sessions).where(sessions.c.group_id == group_id).values(started_at=to_datetime(AT)))
    return Group(experiment_id, group_id, block_id, session_ids)


def _store_results(conn: Connection, group: Group, bonus: float, sets: list[list[float]]) -> None:
    """The block's bonus, and each session's results (the one at the same place in ``sets``)."""
    conn.execute(update(blocks).where(blocks.c.id == group.block_id).values(bonus_points=bonus))
    conn.execute(delete(results).where(results.c.session_id.in_(group.session_ids)))
    rows = [
        {"session_id": session_id, "experiment_id": group.experiment_id, "seq": 1 + i, "subperiod": i,
         "decision": None, "score": score}
        for session_id, scores in zip(group.session_ids, sets, strict=True)
        for i, score in enumerate(scores)
    ]
    if rows:
        conn.execute(insert(results), rows)


def _final_scores(conn: Connection, group: Group) -> list[str | None]:
    """The group's sessions' final scores, each as its exact bits (``-0.0`` is not ``0.0``)."""
    stored = conn.execute(
        select(sessions.c.final_score).where(sessions.c.group_id == group.group_id).order_by(sessions.c.id)
    ).scalars()
    return [None if value is None else float(value).hex() for value in stored]


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    bonus=scores,
    sets=st.lists(st.lists(scores, max_size=12), min_size=4, max_size=4),
    played=st.booleans(),
)
@example(bonus=0.0, sets=[[BIGGEST, BIGGEST], [BIGGEST, -BIGGEST], [BIGGEST / 2, BIGGEST / 2], []], played=True)
@example(bonus=BIGGEST, sets=[[], [1.0], [-BIGGEST], [BIGGEST]], played=False)
@example(bonus=-(2.0**-958), sets=[[2.0**-958, 2.0**-959], [2.0**-1010] * 3, [-0.0], [0.0, -0.0]], played=True)
@example(bonus=0.0, sets=[[1.0, TOO_SMALL[0]], [], [], []], played=True)
@example(bonus=TOO_SMALL[2], sets=[[], [], [], []], played=False)
@example(bonus=-(2.0**-1011), sets=[[-(2.0**-1011)], [TOO_SMALL[4]], [2.0**-1010, -(2.0**-1011)], []], played=True)
@example(bonus=1.0, sets=[list(TOO_SMALL), [1.0], [BIGGEST] * 2, []], played=True)
@example(bonus=1.5, sets=[[1e308] * 3, [-1e308] * 3, [1e308, -1e308] * 2, [0.1] * 10], played=True)
def test_a_period_s_end_stores_the_scores_the_former_statement_stored_bit_for_bit(
    engine: Engine, group: Group, bonus: float, sets: list[list[float]], played: bool
) -> None:
    """Random and edge-case bonuses and results (past a float's range, subnormal once scaled,
    too small to scale, none at all): the period's end, played or not, stores each session's
    final score as the former expression made it, bit for bit, NULL where that was NULL, and
    never infinity. The former expression is given each score too small to scale as the zero of
    its sign that SQLite's product made of it (PostgreSQL refused that product, ``value out of
    range: underflow``, and the period's end with it); on SQLite it is given the scores as they are too."""
    with engine.connect() as conn, conn.begin() as transaction:

        def former_on(bonus: float, sets: list[list[float]]) -> list[str | None] | str:
            _store_results(conn, group, bonus, sets)
            return _refused_or_stored(conn, group, lambda: conn.execute(
                update(sessions).where(sessions.c.group_id == group.group_id).values(final_score=_FORMER_EARNED)
            ))

        former = former_on(_as_scaled(bonus), [[_as_scaled(score) for score in scores] for scores in sets])
        if engine.dialect.name == "sqlite":
            assert former_on(bonus, sets) == former
        else:
            _store_results(conn, group, bonus, sets)
        # a score the period's end did not write stays this, which no case above makes
        conn.execute(update(sessions).where(sessions.c.group_id == group.group_id).values(final_score=-7.25))
        now = _refused_or_stored(conn, group, lambda: period_ended(
            conn, group.experiment_id, group.group_id, AT + 60, played=played
        ))
        assert not isinstance(former, str), former
        assert now == former, (bonus, sets)
        assert all(s is None or math.isfinite(float.fromhex(s)) for s in former)
        transaction.rollback()


def _refused_or_stored(conn: Connection, group: Group, run: Callable[[], Any]) -> list[str | None] | str:
    """The final scores ``run`` stores (:func:`_final_scores`), or the database's error that refused it."""
    try:
        with conn.begin_nested():
            run()
    except DBAPIError as exc:
        return f"{type(exc.orig).__name__}: {str(exc.orig).splitlines()[0]}"
    return _final_scores(conn, group)


def _results_read_on_postgres(conn: Connection, run: Callable[[], Any]) -> int:
    """How many rows of ``results`` ``run`` read, by PostgreSQL's counters of this transaction."""
    counted = text(
        "SELECT seq_tup_read + idx_tup_fetch FROM pg_stat_xact_user_tables WHERE relid = 'results'::regclass"
    )
    before = conn.execute(counted).scalar_one()
    run()
    return int(conn.execute(counted).scalar_one() - before)


def _reads_of_results_in_plans(conn: Connection, run: Callable[[], Any]) -> Iterator[int]:
    """For each statement ``run`` executes (SQLite), how many times its query plan reads ``results``."""
    executed: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        executed.append((statement, parameters))

    event.listen(conn, "before_cursor_execute", record)
    try:
        run()
    finally:
        event.remove(conn, "before_cursor_execute", record)
    raw = conn.connection.driver_connection
    assert raw is not None
    for statement, parameters in executed:
        plan = [row[3] for row in raw.execute(f"EXPLAIN QUERY PLAN {statement}", parameters)]
        yield sum(bool(re.match(r"(SCAN|SEARCH) results\b", step)) for step in plan)


@pytest.mark.parametrize("played", [True, False], ids=["played", "faulted"])
def test_a_period_s_end_reads_each_session_s_results_once(engine: Engine, group: Group, played: bool) -> None:
    """Four sessions of 300 results each: the period's end reads them once, as one sum of each
    session's results does (PostgreSQL: the rows its counters say were read; SQLite: the scans
    of ``results`` in the plans of the statements it runs). It read them twice: the scaled sum
    was put in the score's CASE twice, once to test its range and once as the score."""
    with engine.connect() as conn, conn.begin() as transaction:
        _store_results(conn, group, 2.0, [[0.25 * i for i in range(300)]] * 4)

        def end() -> None:
            period_ended(conn, group.experiment_id, group.group_id, AT + 60, played=played)

        if engine.dialect.name == "postgresql":
            conn.execute(text("ANALYZE results"))
            once = select(func.sum(results.c.score)).where(results.c.session_id == sessions.c.id).scalar_subquery()
            summed_once = update(sessions).where(sessions.c.group_id == group.group_id).values(final_score=once)
            reference = _results_read_on_postgres(conn, lambda: conn.execute(summed_once))
            assert reference >= 4 * 300
            assert _results_read_on_postgres(conn, end) == reference
        else:
            assert [n for n in _reads_of_results_in_plans(conn, end) if n] == [1]
        assert _final_scores(conn, group) == [(2.0 + sum(0.25 * i for i in range(300))).hex()] * 4
        transaction.rollback()
