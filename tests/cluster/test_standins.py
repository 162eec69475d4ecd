"""A stand-in in a cluster: the worker that serves a group whose dropout a bot plays is killed (kill -9),
and the worker that takes the group over puts the bot back from what the database holds."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

from sqlalchemy import text

from server.storage import make_engine
from tests.cluster.harness import Cluster, Participant
from tests.cluster.test_cluster import check_the_log, create, owner_of, play, settle, until


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
    for name in ("w1", "w2"):
        cluster.start(name)
    cluster.healthy("w1", "w2")
    exp = await create(cluster, "w1", game="bimatrix", participants=2, group_size=2, period_length=8,
                       online={"dropout_after": 1})
    codes = [p["code"] for p in exp["participants"]]
    row = Participant(codes[0], [cluster.workers["w1"].ws, cluster.workers["w2"].ws])
    col = Participant(codes[1], [cluster.workers["w2"].ws])
    row.start()
    await row.connected.wait()
    col.start()
    await until(lambda: "period_start" in row.states(), 10, "the period's start")
    group_id = int(next(f for f in row.frames if f["channel"] == "hello")["payload"]["group"])
    assert owner_of(cluster, group_id) == "w1"
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
