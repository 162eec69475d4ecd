"""A stand-in in a cluster: the worker that serves a group whose dropout a bot plays is killed (kill -9),
and the worker that takes the group over puts the bot back from what the database holds."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

from sqlalchemy import text

from server.storage import make_engine
from tests.cluster.harness import Cluster
from tests.cluster.test_cluster import (
    check_the_log,
    owner_of_or_none,
    play,
    settle,
    split_pair,
    until,
)


def stored(cluster: Cluster, code: str) -> list[dict[str, Any]]:
    engine = make_engine(cluster.env["DATABASE_URL"])
    try:
        with engine.connect() as conn:
            rows = conn.execute(text(
                "SELECT e.seq, e.timestamp, e.channel, e.bot, p.code AS participant FROM events e"
                " JOIN experiments x ON x.id = e.experiment_id LEFT JOIN participants p ON p.id = e.participant_id"
                " WHERE x.code = :code ORDER BY e.seq"
            ), {"code": code}).mappings().all()
            return [dict(r) for r in rows]
    finally:
        engine.dispose()


def status(cluster: Cluster, code: str) -> str | None:
    engine = make_engine(cluster.env["DATABASE_URL"])
    try:
        with engine.connect() as conn:
            found: str | None = conn.execute(text("SELECT status FROM participants WHERE code = :c"), {"c": code}).scalar()
            return found
    finally:
        engine.dispose()


async def test_the_worker_that_takes_a_group_over_carries_its_stand_in_on(cluster: Cluster) -> None:
    """col drops; a bot plays for it on w1; w1 is killed; w2 takes the group and its bot plays on
    (bot decisions stored after the kill) to the end; col is dropped; the log checks out."""
    exp, row, col, _ = await split_pair(cluster, period_length=8, online={"dropout_after": 1})
    codes = [row.code, col.code]
    await until(lambda: "period_start" in row.states(), 10, "the period's start")
    await col.stop()
    player = asyncio.ensure_future(play([row], until_end=30))

    def bot_decisions() -> list[dict[str, Any]]:
        return [e for e in stored(cluster, exp["code"]) if e["channel"] == "decisions" and e["participant"] == codes[1]]

    await until(lambda: bool(bot_decisions()), 10, "the bot's first decision")
    killed_at = time.time()
    cluster.signal("w1", signal.SIGKILL)
    cluster.wait("w1")
    await player
    await settle([row])
    await row.stop()
    decided = bot_decisions()
    assert all(e["bot"] for e in decided)
    assert any(e["timestamp"].timestamp() > killed_at + 0.5 for e in decided), decided  # played on at w2
    assert "period_end" in row.states()
    assert status(cluster, codes[1]) == "dropped"
    check_the_log(cluster, exp["code"], [row])


async def test_a_member_still_connected_through_another_worker_gets_no_bot_after_a_takeover(cluster: Cluster) -> None:
    """row (on w1, which serves the group) and col (only ever through w2); w1 is killed and w2
    takes the group: col's socket never closed, so no bot may play for col, however long the
    takeover took against ``dropout_after``; col plays on and is not dropped."""
    exp, row, col, group_id = await split_pair(cluster, period_length=30, online={"dropout_after": 1})
    await until(lambda: "period_start" in col.states(), 10, "the period's start")
    cluster.signal("w1", signal.SIGKILL)
    cluster.wait("w1")
    await until(lambda: owner_of_or_none(cluster, group_id) == "w2", 15, "w2 serving the group")
    await asyncio.sleep(3)  # three times dropout_after
    frame_id = await col.decide(1)
    await until(lambda: frame_id in col.acked, 10, "col's decision after the takeover acknowledged")
    for person in (row, col):
        await person.stop()
    for_col = [e for e in stored(cluster, exp["code"]) if e["participant"] == col.code]
    assert not [e for e in for_col if e["bot"] or e["channel"] == "standin"], for_col
    assert status(cluster, col.code) != "dropped"


