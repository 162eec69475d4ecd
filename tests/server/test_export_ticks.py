"""The ``ticks`` export of one experiment among many: its rows only, page by page, each page a
range of ``ix_ticks_experiment_id_id`` (the plan asked of SQLite and of PostgreSQL), and
``0013_ticks_experiment`` filling a database of the revision before."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, insert, select, text

from server.experiments import parse_request, plan
from server.export import chunks
from server.export import plan as export_plan
from server.exportlogs import ticks_page
from server.storage import (
    differences,
    experiment_row,
    groups,
    head,
    insert_experiment,
    make_engine,
    prepare_schema,
    schema_state,
    ticks,
    upgrade_schema,
)
from server.storage.schema import MIGRATIONS

EXPERIMENTS = 100
ROUNDS = 100  # ticks per group: interleaved by id with every other experiment's
PAGE = 50


def many_experiments(engine: Engine, with_experiment: bool = True) -> list[tuple[str, list[int]]]:
    """``EXPERIMENTS`` experiments of two groups, whose ticks were stored in turns (as a lab of
    many runs at once does): each experiment's code and group ids."""
    made = []
    for _ in range(EXPERIMENTS):
        spec = plan(parse_request({"game": "bimatrix", "participants": 4, "group_size": 2}))
        experiment_id = insert_experiment(engine, spec)
        with engine.connect() as conn:
            ids = list(conn.execute(select(groups.c.id).where(groups.c.experiment_id == experiment_id)
                                    .order_by(groups.c.id)).scalars())
        made.append((spec.code, experiment_id, ids))
    start = datetime(2026, 12, 5, tzinfo=UTC)
    rows = [
        {
            **({"experiment_id": experiment_id} if with_experiment else {}),
            "group_id": group_id, "kind": "subperiod", "index": i,
            "scheduled_at": start + timedelta(seconds=i), "actual_at": start + timedelta(seconds=i, microseconds=7),
            "late": i % 5 == 0, "snapshot": {"i": i, "g": group_id},
        }
        for i in range(ROUNDS)
        for _, experiment_id, ids in made
        for group_id in ids
    ]
    with engine.begin() as conn:
        if with_experiment:
            conn.execute(insert(ticks), rows)
        else:  # the table of the revision before: no experiment_id
            conn.execute(text(
                "INSERT INTO ticks (group_id, kind, \"index\", scheduled_at, actual_at, late, snapshot) "
                "VALUES (:group_id, :kind, :index, :scheduled_at, :actual_at, :late, :snapshot)"
            ), [{**r, "snapshot": orjson.dumps(r["snapshot"]).decode()} for r in rows])
    return [(code, ids) for code, _, ids in made]


def exported(engine: Engine, code: str) -> list[dict[str, Any]]:
    experiment = experiment_row(engine, code)
    assert experiment is not None
    rows: list[dict[str, Any]] = orjson.loads(b"".join(chunks(engine, export_plan(experiment, "ticks", "json", limit=PAGE))))
    return rows


def the_plan(engine: Engine, experiment_id: int, after: int) -> str:
    """The database's plan of a page of the ticks export after tick ``after``, as text."""
    query = ticks_page(experiment_id, PAGE, (after,))
    sql = str(query.compile(engine, compile_kwargs={"literal_binds": True}))
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            return "\n".join(str(r[-1]) for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}"))
        conn.exec_driver_sql("ANALYZE")
        return "\n".join(str(r[0]) for r in conn.exec_driver_sql(f"EXPLAIN {sql}"))


def test_the_ticks_export_of_one_experiment_among_many_is_its_own_ticks_each_page_a_range_of_the_index(
    database_url: str,
) -> None:
    """Of a hundred experiments whose ticks were stored in turns, one's export is exactly its groups'
    ticks in the order stored, over pages of 50; and each page's plan is a search of
    ``ix_ticks_experiment_id_id`` on the experiment and the last id, not a walk of every tick by id."""
    engine = make_engine(database_url)
    try:
        prepare_schema(engine)
        made = many_experiments(engine)
        code, ids = made[EXPERIMENTS // 2]
        rows = exported(engine, code)
        assert len(rows) == 2 * ROUNDS
        assert [(r["group"], r["index"]) for r in rows] == [(g, i) for i in range(ROUNDS) for g in ids]
        assert rows[5]["late"] is (rows[5]["index"] % 5 == 0) and rows[5]["snapshot"] == {"i": 2, "g": ids[1]}
        assert rows[0]["scheduled_at"] == "2026-12-05T00:00:00.000000Z"
        assert rows[0]["actual_at"] == "2026-12-05T00:00:00.000007Z"

        experiment = experiment_row(engine, code)
        assert experiment is not None
        with engine.connect() as conn:
            middle = conn.execute(select(ticks.c.id).where(ticks.c.group_id == ids[0], ticks.c.index == ROUNDS // 2)).scalar_one()
        found = the_plan(engine, experiment["id"], middle)
        if engine.dialect.name == "sqlite":
            assert "SEARCH ticks USING INDEX ix_ticks_experiment_id_id (experiment_id=? AND id>?)" in found, found
        else:
            assert "Index Scan using ix_ticks_experiment_id_id on ticks" in found, found
            assert f"Index Cond: ((experiment_id = {experiment['id']}) AND (id > {middle}))" in found, found
        assert "SCAN ticks" not in found and "Seq Scan on ticks" not in found, found
    finally:
        engine.dispose()


def test_0013_names_each_ticks_experiment_from_its_group_and_its_downgrade_drops_the_column(
    database_url: str,
) -> None:
    """A database at 0012 with the ticks of many experiments upgrades: each tick's ``experiment_id``
    is its group's, the index is there, the schema is the application's, and the export is right;
    down at 0012 again the column and index are gone and every tick is still there."""
    engine = make_engine(database_url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    try:
        prepare_schema(engine)
        with engine.begin() as conn:
            config.attributes["connection"] = conn
            command.downgrade(config, "0012_session_score_nullable")
        assert schema_state(engine).revision == "0012_session_score_nullable"
        made = many_experiments(engine, with_experiment=False)
        upgrade_schema(engine)
        assert schema_state(engine).revision == head() and differences(engine) == []
        with engine.connect() as conn:
            pairs = conn.execute(
                select(ticks.c.experiment_id, groups.c.experiment_id).join(groups, groups.c.id == ticks.c.group_id)
            ).all()
        assert len(pairs) == EXPERIMENTS * 2 * ROUNDS and all(a == b for a, b in pairs)
        code, ids = made[3]
        assert [(r["group"], r["index"]) for r in exported(engine, code)] == [(g, i) for i in range(ROUNDS) for g in ids]
        with engine.begin() as conn:
            config.attributes["connection"] = conn
            command.downgrade(config, "0012_session_score_nullable")
        with engine.connect() as conn:
            columns = [c[1] if engine.dialect.name == "sqlite" else c[0] for c in conn.exec_driver_sql(
                "PRAGMA table_info(ticks)" if engine.dialect.name == "sqlite"
                else "SELECT column_name FROM information_schema.columns WHERE table_name = 'ticks' "
                     "AND table_schema = current_schema()"
            )]
            assert "experiment_id" not in columns and "group_id" in columns
            assert conn.exec_driver_sql("SELECT count(*) FROM ticks").scalar_one() == EXPERIMENTS * 2 * ROUNDS
    finally:
        engine.dispose()
