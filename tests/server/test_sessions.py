"""Sessions with MUSCLE's helpers: total_score, rank, percentile_rank, last_result, save_json_data."""

from __future__ import annotations

import random

import pytest
from sqlalchemy import Engine, and_, select, update

from server.experiments import parse_request, plan
from server.progress import Filter, participant_progress
from server.sessions import SessionRecord
from server.storage import (
    STANDIN,
    NewEvent,
    Write,
    blocks,
    commit_writes,
    groups,
    insert_experiment,
    memberships,
    participants,
    sessions,
    to_datetime,
)
from tests.server.harness import Harness, until_state
from tests.server.test_blocks import wait_for_status


def scored(engine: Engine, scores: list[float | None]) -> list[str]:
    """A one-block experiment whose sessions have these final scores (None: not finished)."""
    spec = plan(parse_request({"game": "public_goods", "participants": len(scores), "group_size": 2}),
                seed=random.randrange(1000))
    experiment_id = insert_experiment(engine, spec)
    with engine.begin() as conn:
        rows = conn.execute(
            sessions.select().where(sessions.c.experiment_id == experiment_id).order_by(sessions.c.participant_id)
        ).mappings().all()
        for row, score in zip(rows, scores, strict=True):
            if score is not None:
                conn.execute(
                    update(sessions).where(sessions.c.id == row["id"]).values(
                        final_score=score, started_at=to_datetime(1.0), finished_at=to_datetime(2.0)
                    )
                )
    return spec.participant_codes


def test_rank_is_dense_and_ties_share_it(engine: Engine) -> None:
    """Scores 9, 7, 7, 3: ranks 1, 2, 2, 3 (MUSCLE counts distinct higher scores)."""
    codes = scored(engine, [9.0, 7.0, 7.0, 3.0])
    ranks = [SessionRecord.load(engine, c, 0).rank() for c in codes]  # type: ignore[union-attr]
    assert ranks == [1, 2, 2, 3]


def test_percentile_rank_counts_ties_half_and_may_leave_out_the_unfinished(engine: Engine) -> None:
    """Scores 9, 7, 7 and one unfinished (0): 7 is above 1 of 4 plus half of 2 ties → 50; of 3 finished → 33.3."""
    codes = scored(engine, [9.0, 7.0, 7.0, None])
    seven = SessionRecord.load(engine, codes[1], 0)
    assert seven is not None and seven.finished
    assert seven.percentile_rank(exclude_unfinished=False) == pytest.approx(100 * (3 - 1) / 4)
    assert seven.percentile_rank(exclude_unfinished=True) == pytest.approx(100 * (2 - 1) / 3)
    nine = SessionRecord.load(engine, codes[0], 0)
    assert nine is not None and nine.percentile_rank(exclude_unfinished=True) == pytest.approx(100 * 2.5 / 3)
    unfinished = SessionRecord.load(engine, codes[3], 0)
    assert unfinished is not None and not unfinished.finished and unfinished.last_result() is None


def test_percentile_rank_among_the_finished_leaves_out_the_seats_bots_played(engine: Engine) -> None:
    """Finished sessions of 9 (a participant still playing: no status), 7, 6 (``replaced``: came
    back before the end) and of bots, 3 (a lobby's fill, ``bot``) and 2 (``dropped``: a bot played
    on), as the group's log records the bots (``standin`` events): among the finished, 7 is
    compared with the three humans only (50, it was 70 with the bots), as the participants list
    ranks it; bots' sessions are still ranked among the humans, and every session stays in ``rank``."""
    codes = scored(engine, [9.0, 7.0, 6.0, 3.0, 2.0, None])
    with engine.begin() as conn:
        for code, status in zip(codes[1:5], ("finished", "replaced", "bot", "dropped"), strict=True):
            conn.execute(update(participants).where(participants.c.code == code).values(status=status))
        experiment_id = conn.execute(select(participants.c.experiment_id).where(participants.c.code == codes[0])).scalar_one()
        seats = dict(conn.execute(
            select(participants.c.code, sessions.c.group_id).join(sessions, sessions.c.participant_id == participants.c.id)
            .where(participants.c.experiment_id == experiment_id)
        ).all())

    def standin(code: str, reason: str, playing: bool) -> NewEvent:
        return NewEvent(STANDIN, {"participant": code, "reason": reason, "playing": playing}, 1.5, seats[code])

    with engine.connect() as conn:
        commit_writes(conn, [Write(experiment_id, events=[
            standin(codes[2], "dropout", True), standin(codes[2], "dropout", False),
            standin(codes[3], "fill", True), standin(codes[4], "dropout", True),
        ])])
    records = [SessionRecord.load(engine, c, 0) for c in codes]
    assert all(r is not None for r in records)
    seven, bot = records[1], records[3]
    assert seven is not None and bot is not None
    assert seven.percentile_rank(exclude_unfinished=True) == pytest.approx(100 * 1.5 / 3)
    assert bot.percentile_rank(exclude_unfinished=True) == 0.0  # below every human
    assert seven.percentile_rank(exclude_unfinished=False) == pytest.approx(100 * 4.5 / 6)  # MUSCLE: every session
    assert [r.rank() for r in records if r is not None] == [1, 2, 3, 4, 5, 6]
    # one block: the block's percentile of a participant who finished is the experiment's
    overall = participant_progress(engine, experiment_id, Filter(exclude_unfinished=True))
    assert {r["code"]: r["percentile_rank"] for r in overall if r["code"] in codes[:3]} == {
        r.participant: pytest.approx(r.percentile_rank(exclude_unfinished=True)) for r in records[:3] if r is not None
    }


def test_save_json_data_merges_and_stores(engine: Engine) -> None:
    """Later keys overwrite, others stay; a fresh load sees the merged value."""
    code = scored(engine, [1.0, 1.0])[0]
    record = SessionRecord.load(engine, code, 0)
    assert record is not None and record.json_data == {}
    record.save_json_data({"a": 1, "b": {"x": 1}})
    record.save_json_data({"b": 2, "c": [3]})
    assert record.json_data == {"a": 1, "b": 2, "c": [3]}
    assert SessionRecord.load(engine, code, 0).json_data == {"a": 1, "b": 2, "c": [3]}  # type: ignore[union-attr]
    assert SessionRecord.load(engine, code, 5) is None
    assert SessionRecord.load(engine, "nobody", 0) is None


async def test_a_played_session_totals_its_results(server: Harness) -> None:
    """After a 3-subperiod period, total_score() equals the stored final_score and last_result is subperiod 2."""
    exp = await server.create(
        game="public_goods", participants=2, group_size=2, period_length=0.6, num_subperiods=3, bonus_points=2
    )
    a, _b = [await server.connect(p["code"]) for p in exp["participants"]]
    await until_state(a, "period_start")
    await a.send("decisions", 4, "x")
    await until_state(a, "period_end")
    await wait_for_status(server, exp["code"], "done")

    def check(engine: Engine) -> tuple[float, float, dict[str, object] | None, int]:
        record = SessionRecord.load(engine, exp["participants"][0]["code"], 0)
        assert record is not None
        return record.total_score(), record.final_score, record.last_result(), record.rank()

    total, final, last, rank = await server.runtime.database.read(check)
    assert total == pytest.approx(final) and final > 2
    assert last is not None and last["subperiod"] == 2
    assert rank == 2  # the one who contributed earns less than the one who kept everything


def test_an_experiment_is_stored_as_planned_row_for_row(engine: Engine) -> None:
    """Made in bulk (a few multi-row statements a table): every participant in order with its
    label, every block's groups with their members in order, one session per participant and
    block in its group, unstarted; the ids of each table in the plan's order."""
    spec = plan(parse_request({"game": "public_goods", "participants": 12, "group_size": 3, "blocks": 3,
                               "matching": "random"}), seed=5)
    experiment_id = insert_experiment(engine, spec)
    with engine.connect() as conn:
        people = conn.execute(
            participants.select().where(participants.c.experiment_id == experiment_id).order_by(participants.c.id)
        ).mappings().all()
        assert [(p["code"], p["label"], p["index"]) for p in people] == [
            (code, f"P{i + 1}", i) for i, code in enumerate(spec.participant_codes)
        ]
        assert len({p["completion_code"] for p in people}) == 12
        code_of = {p["id"]: p["code"] for p in people}
        for block in spec.blocks:
            made = conn.execute(
                select(groups.c.id, groups.c.index, groups.c.phase, memberships.c.participant_id, memberships.c.position)
                .join(memberships, memberships.c.group_id == groups.c.id)
                .join(blocks, blocks.c.id == groups.c.block_id)
                .where(and_(blocks.c.experiment_id == experiment_id, blocks.c.index == block.index))
                .order_by(groups.c.id, memberships.c.id)
            ).all()
            by_group: dict[int, list[str]] = {}
            for _, index, phase, pid, position in made:
                assert phase == "waiting" and position == len(by_group.get(index, []))
                by_group.setdefault(index, []).append(code_of[pid])
            assert by_group == {g: [spec.participant_codes[p] for p in members] for g, members in enumerate(block.groups)}
            planned = conn.execute(
                select(sessions.c.participant_id, sessions.c.group_id, sessions.c.started_at, sessions.c.final_score)
                .join(blocks, blocks.c.id == sessions.c.block_id)
                .where(and_(blocks.c.experiment_id == experiment_id, blocks.c.index == block.index))
            ).all()
            group_of = {pid: gid for gid, _, _, pid, _ in made}
            assert sorted(code_of[pid] for pid, *_ in planned) == sorted(spec.participant_codes)
            assert all(gid == group_of[pid] and started is None and score == 0.0 for pid, gid, started, score in planned)
