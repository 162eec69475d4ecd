"""Stand-ins on a real server: server-side bots that play a dropout's seat or fill an empty one.

Real WebSocket clients, the real clock, SQLite and PostgreSQL; what the bots did is read back
through the API, the exports and ``synclab verify``.
"""

from __future__ import annotations

import asyncio
import csv
import io
import logging
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import select, update

from groups import PublicGoods
from server import standins
from server.sessions import SessionRecord
from server.storage import (
    Write,
    block_final_scores,
    blocks,
    commit_writes,
    experiments,
    make_engine,
    participants,
    sessions,
)
from server.verify import verify
from tests.server.harness import Harness, running_server, timeout, until_state

PAUSING = "tests.server.test_blocks:Patient"


async def get(server: Harness, path: str) -> Any:
    response = await server.http.get(path, params={"page_size": 1000})
    assert response.status_code == 200, response.text
    return response.json()


async def until_done(server: Harness, code: str, wait: float = 15.0) -> None:
    for _ in range(int(timeout(wait) / 0.1)):
        if (await get(server, f"/api/experiments/{code}"))["status"] == "done":
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"experiment {code} never finished")


async def until_event(server: Harness, code: str, check: Any, wait: float = 5.0) -> dict[str, Any]:
    """The first stored event for which ``check(event)`` holds (polled, bounded)."""
    for _ in range(int(timeout(wait) / 0.1)):
        found = [e for e in await server.events(code) if check(e)]
        if found:
            return found[0]
        await asyncio.sleep(0.1)
    raise AssertionError("no such event was stored in time")


async def statuses(server: Harness, code: str) -> dict[str, str | None]:
    rows = (await get(server, f"/api/experiments/{code}/participants"))["results"]
    return {r["code"]: r["status"] for r in rows}


async def stats(server: Harness, code: str, **params: str) -> dict[str, Any]:
    response = await server.http.get(f"/api/experiments/{code}/stats", params=params)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def counted(stats: dict[str, Any], *names: str) -> tuple[Any, ...]:
    return tuple(stats.get(name) for name in names)


@pytest.fixture
def brisk_bots(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stand-ins decide (and see their period end, to follow to the next block) every 0.1 to 0.3 s,
    not 0.5 to 1.5: the server runs in this process, and the periods need be no longer than the
    test's own steps in them."""
    monkeypatch.setattr(standins, "PACE", 0.2)


def verified(database_url: str, code: str) -> None:
    engine = make_engine(database_url)
    try:
        report = verify(engine, code)
    finally:
        engine.dispose()
    assert report.problems == [], report.problems


@pytest.mark.usefixtures("brisk_bots")
async def test_a_dropout_is_played_by_a_bot_until_they_come_back(any_server: Harness, database_url: str) -> None:
    """Two of three leave a running period: bots play for both (events bot=true), the group runs on;
    one comes back and its bot stops at once; statuses finished, replaced, dropped; verify passes."""
    server = any_server
    exp = await server.create(
        game="public_goods", participants=3, group_size=3, period_length=3, online={"dropout_after": 0.5}
    )
    code = exp["code"]
    a, b, c = (p["code"] for p in exp["participants"])
    ca, cb, cc = [await server.connect(p) for p in (a, b, c)]
    await until_state(ca, "period_start")
    await ca.send("decisions", 4, "a-1")
    assert (await ca.expect("ack"))["payload"]["id"] == "a-1"
    await cb.close()
    await cc.close()
    for who in (b, c):
        await until_event(server, code, lambda e, who=who: e["channel"] == "decisions" and e["participant"] == who)
    await ca.expect("group_decisions")  # the group goes on: a sees the bots' decisions
    back = await server.connect(b)
    assert (await back.expect("hello"))["payload"]["phase"] == "running"
    stopped = await until_event(
        server, code, lambda e: e["channel"] == "standin" and e["value"] == {"participant": b, "reason": "dropout", "playing": False}
    )
    await back.send("decisions", 7, "b-1")
    assert (await back.expect("ack"))["payload"]["id"] == "b-1"
    await until_done(server, code)

    events = await server.events(code)
    decisions = [e for e in events if e["channel"] == "decisions"]
    assert {(e["participant"], e["bot"]) for e in decisions if e["participant"] == a} == {(a, False)}
    mine_b = [e for e in decisions if e["participant"] == b]
    assert any(e["bot"] for e in mine_b) and not any(e["bot"] for e in mine_b if e["seq"] > stopped["seq"])
    assert [e["value"] for e in mine_b if e["seq"] > stopped["seq"]] == [7]
    assert all(e["bot"] for e in decisions if e["participant"] == c) and len([e for e in decisions if e["participant"] == c]) >= 2
    assert not any(e["bot"] for e in events if e["channel"] != "decisions")  # only the bots' own decisions
    started = [e["value"] for e in events if e["channel"] == "standin" and e["value"]["playing"]]
    assert sorted(v["participant"] for v in started) == sorted([b, c]) and {v["reason"] for v in started} == {"dropout"}
    assert await statuses(server, code) == {a: "finished", b: "replaced", c: "dropped"}
    counts = await stats(server, code)
    assert counted(counts, "finished", "played_by_bots", "participants") == (2, 1, 3)  # b came back
    verified(database_url, code)

    csv_events = (await server.http.get(f"/api/experiments/{code}/export.csv", params={"table": "events"})).text
    rows = list(csv.DictReader(io.StringIO(csv_events)))
    assert list(rows[0])[6:] == ["bot", "recipient"]  # bot kept its place; recipient came after
    assert {r["bot"] for r in rows if r["participant"] == c and r["channel"] == "decisions"} == {"true"}
    csv_people = (await server.http.get(f"/api/experiments/{code}/export.csv", params={"table": "participants"})).text
    assert {r["code"]: r["status"] for r in csv.DictReader(io.StringIO(csv_people))} == {
        a: "finished", b: "replaced", c: "dropped"
    }


async def test_after_a_restart_a_dropouts_clock_counts_from_their_stored_departure(database_url: str) -> None:
    """A member left 1 s before the server stopped; on the restart their bot takes over
    ``dropout_after`` (2 s) after they left, as stored, not 2 s after the restart."""
    online = {"dropout_after": 2}
    async with running_server(database_url) as server:
        exp = await server.create(game="public_goods", participants=2, group_size=2, period_length=30, online=online)
        code = exp["code"]
        a, b = (p["code"] for p in exp["participants"])
        ca, cb = [await server.connect(p) for p in (a, b)]
        await until_state(ca, "period_start")
        await cb.close()
        left = time.time()
        await asyncio.sleep(1.0)
    async with running_server(database_url) as server:
        restarted = time.time()
        await server.connect(a)
        took = await until_event(
            server, code, lambda e: e["channel"] == "standin" and e["value"]["participant"] == b, wait=10
        )
    at = datetime.fromisoformat(took["timestamp"]).timestamp()
    assert 2.0 - 0.1 <= at - left <= 2.0 + 0.7, (
        f"the bot came {at - left:.2f} s after the departure ({at - restarted:.2f} s after the restart)"
    )


@pytest.mark.usefixtures("brisk_bots")
async def test_a_filled_seat_lets_the_period_start_and_its_bot_plays_every_block(
    any_server: Harness, database_url: str
) -> None:
    """stand_in(..., "fill") on a seat nobody connected: the period starts with the two humans, the
    bot plays this block and the next one (its events bot=true); its status is bot."""
    server = any_server
    exp = await server.create(  # nothing happens in the periods but the bot's decisions
        game="public_goods", participants=3, group_size=3, blocks=2, period_length=1.5, block_pause=0.2
    )
    code = exp["code"]
    a, b, c = (p["code"] for p in exp["participants"])
    ca, _cb = [await server.connect(p) for p in (a, b)]
    assert (await ca.expect("hello"))["payload"]["phase"] == "waiting"
    while not await ca.silent(0.5):  # bounded: the frames of a waiting group, then silence
        assert (await ca.next())["channel"] != "state"
    group = {r["code"]: r["group"] for r in (await get(server, f"/api/experiments/{code}/participants"))["results"]}[c]
    await server.runtime.groups.stand_in(group, c, "fill")
    await until_state(ca, "period_start")
    await until_done(server, code)

    events = await server.events(code)
    bots = [e for e in events if e["channel"] == "decisions" and e["participant"] == c]
    assert bots and all(e["bot"] for e in bots)
    assert len({e["group"] for e in bots}) == 2  # both blocks
    assert not any(e["bot"] for e in events if e["participant"] in (a, b))
    assert await statuses(server, code) == {a: "finished", b: "finished", c: "bot"}
    verified(database_url, code)


async def test_stats_count_the_seats_bots_played_apart_from_the_participants_who_finished(
    any_server: Harness,
) -> None:
    """Online: two arrive, the lobby fills the third seat with a bot, one of the two leaves and a bot
    plays on for them. ``/stats`` counts one participant finished and two seats played by bots
    (every seat's completion is 1); excluding the unfinished takes the one who finished only, for
    the means and the percentile ranks."""
    server = any_server
    exp = await server.create(game="public_goods", participants=3, group_size=3, period_length=2,
                              online={"lobby_timeout": 1.0, "fill": "bots", "dropout_after": 0.5})
    code = exp["code"]
    seats = []
    for label in ("stays", "leaves"):
        arrived = await server.http.get(f"/join/{code}", params={"label": label}, follow_redirects=False)
        assert arrived.status_code == 303, arrived.text
        seats.append(arrived.headers["location"].removeprefix("/p/"))
    stays, leaves = [await server.connect(c) for c in seats]
    await until_state(stays, "period_start")  # after the lobby's timeout, a bot in the third seat
    await stays.send("decisions", 2, "s-1")
    assert (await stays.expect("ack"))["payload"]["id"] == "s-1"
    await leaves.close()
    await until_event(server, code, lambda e: e["channel"] == "standin" and e["value"]["participant"] == seats[1])
    await until_done(server, code)
    filled = next(p["code"] for p in exp["participants"] if p["code"] not in seats)
    assert await statuses(server, code) == {seats[0]: "finished", seats[1]: "dropped", filled: "bot"}
    rows = {r["code"]: r for r in (await get(server, f"/api/experiments/{code}/participants"))["results"]}
    assert {c: r["completion"]["ratio"] for c, r in rows.items()} == {c: 1.0 for c in rows}

    counts = await stats(server, code)
    assert counted(counts, "finished", "played_by_bots", "participants", "count") == (1, 2, 3, 3)
    only = await stats(server, code, exclude_unfinished="true")
    assert counted(only, "finished", "played_by_bots", "count") == (1, 2, 1)
    assert only["mean_score"] == pytest.approx(rows[seats[0]]["final_score"]) and only["mean_completion"] == 1.0
    ranked = await server.http.get(f"/api/experiments/{code}/participants", params={"exclude_unfinished": "true"})
    assert {r["code"]: r["percentile_rank"] for r in ranked.json()["results"]}[seats[0]] == 50.0  # alone compared
    # and alone among the block's finished sessions (MUSCLE's per-block helper compared it with the bots' too)
    def in_the_block(engine: Any) -> float:
        record = SessionRecord.load(engine, seats[0], 0)
        assert record is not None and record.finished
        return record.percentile_rank(exclude_unfinished=True)

    assert await server.runtime.database.read(in_the_block) == 50.0


@pytest.mark.usefixtures("brisk_bots")
async def test_a_dropouts_bot_follows_them_to_their_next_block(server: Harness) -> None:
    """A member leaves in block 0 for good: its bot plays block 0 and then block 1, whose group starts
    with the other member alone; every block ends; the member is dropped."""
    exp = await server.create(game="public_goods", participants=2, group_size=2, blocks=2, period_length=1.5,
                              block_pause=0.2, online={"dropout_after": 0.5})
    code = exp["code"]
    a, b = (p["code"] for p in exp["participants"])
    ca, cb = [await server.connect(p) for p in (a, b)]
    await until_state(ca, "period_start")
    await cb.close()
    await until_state(ca, "period_end", 5)
    await until_state(ca, "period_start", 5)  # block 1's group started: the bot took b's seat there too
    await until_done(server, code)
    events = await server.events(code)
    bots = [e for e in events if e["channel"] == "decisions" and e["participant"] == b]
    assert bots and all(e["bot"] for e in bots) and len({e["group"] for e in bots}) == 2
    assert await statuses(server, code) == {a: "finished", b: "dropped"}


async def test_a_game_that_pauses_on_disconnect_goes_on_with_a_bot_online(server: Harness) -> None:
    """Online, a game that pauses for a dropout resumes once the bot takes the seat after dropout_after."""
    exp = await server.create(game=PAUSING, participants=2, group_size=2, period_length=2, online={"dropout_after": 0.5})
    a, b = (p["code"] for p in exp["participants"])
    ca, cb = [await server.connect(p) for p in (a, b)]
    await until_state(ca, "period_start")
    await cb.close()
    assert (await ca.expect("period"))["payload"]["status"] == "paused"
    assert (await ca.expect("period", 3))["payload"]["status"] == "running"
    await until_state(ca, "period_end", 5)
    await until_done(server, exp["code"])
    assert await statuses(server, exp["code"]) == {a: "finished", b: "dropped"}


async def test_offline_experiments_get_no_bots(server: Harness) -> None:
    """Without online settings a member who leaves is never replaced: their seat stays empty."""
    exp = await server.create(game="public_goods", participants=2, group_size=2, period_length=1)
    a, b = (p["code"] for p in exp["participants"])
    ca, cb = [await server.connect(p) for p in (a, b)]
    await until_state(ca, "period_start")
    await cb.close()
    await until_state(ca, "period_end", 5)
    await until_done(server, exp["code"])
    events = await server.events(exp["code"])
    assert not any(e["bot"] or e["channel"] == "standin" for e in events)


async def test_statuses_follow_their_rules_in_the_writers_transaction(any_server: Harness) -> None:
    """finished and bot only on an empty status; dropped and replaced follow each other; bot and
    no_group never change; an unknown status is refused (and nothing of its batch is stored).
    finished is stored as cancelled for a participant with a session that never finished."""
    exp = await any_server.create(game="public_goods", participants=6, group_size=2)
    engine = any_server.runtime.database.engine
    with engine.connect() as conn:
        experiment_id = conn.execute(select(experiments.c.id).where(experiments.c.code == exp["code"])).scalar_one()
        everyone = conn.execute(
            select(participants.c.id).where(participants.c.experiment_id == experiment_id).order_by(participants.c.index)
        ).scalars().all()
    rows, (fifth, sixth) = everyone[:4], everyone[4:]
    first, second, third, fourth = rows
    with engine.begin() as conn:  # their only block played: everyone but the fifth
        conn.execute(
            update(sessions).where(sessions.c.participant_id != fifth, sessions.c.experiment_id == experiment_id)
            .values(started_at=datetime.now(UTC), finished_at=datetime.now(UTC))
        )

    def apply(*changes: tuple[int, str]) -> None:
        with engine.connect() as conn:
            commit_writes(conn, [Write(experiment_id, statuses=list(changes))])

    def now() -> list[str | None]:
        with engine.connect() as conn:
            return list(conn.execute(
                select(participants.c.status).where(participants.c.id.in_(rows)).order_by(participants.c.index)
            ).scalars())

    apply((first, "finished"), (second, "dropped"), (third, "bot"), (fourth, "no_group"))
    assert now() == ["finished", "dropped", "bot", "no_group"]
    apply((second, "finished"), (third, "finished"), (third, "dropped"), (fourth, "replaced"), (first, "bot"))
    assert now() == ["finished", "dropped", "bot", "no_group"]
    apply((second, "replaced"))
    apply((second, "finished"))
    assert now()[1] == "replaced"
    apply((second, "dropped"))
    assert now()[1] == "dropped"
    with pytest.raises(ValueError, match="expected a status in"):
        apply((first, "dropped"), (second, "gone"))
    assert now() == ["finished", "dropped", "bot", "no_group"]

    def of(participant_id: int) -> str | None:
        with engine.connect() as conn:
            return conn.execute(select(participants.c.status).where(participants.c.id == participant_id)).scalar()

    apply((fifth, "finished"), (sixth, "cancelled"))
    assert (of(fifth), of(sixth)) == ("cancelled", "cancelled")
    apply((fifth, "finished"), (sixth, "dropped"))
    assert (of(fifth), of(sixth)) == ("cancelled", "dropped")


@pytest.mark.usefixtures("brisk_bots")
async def test_a_dropouts_frame_sent_again_in_their_next_block_is_acknowledged_with_its_stored_seq(
    any_server: Harness,
) -> None:
    """A member's decision is stored in block 0 and their connection drops with its ack on the way
    (the page keeps the frame to send again); their bot plays on and follows them to block 1, where
    they come back and the page sends the frame again: it is acknowledged with its stored seq, and
    neither stored nor applied again. The bot's decisions in block 1 had made the member an empty
    set of ids there (those stored before were never loaded), so the frame was taken as a new one:
    on PostgreSQL the database refused it (``game_error``), on SQLite the journal acknowledged it
    with a new seq and its apply halted storage."""
    server = any_server
    exp = await server.create(game="public_goods", participants=2, group_size=2, blocks=2, period_length=2.5,
                              block_pause=0.2, online={"dropout_after": 0.3})
    code = exp["code"]
    a, b = (p["code"] for p in exp["participants"])
    ca, cb = [await server.connect(p) for p in (a, b)]
    await until_state(cb, "period_start")
    await cb.send("decisions", 9, "b-1")
    first = await cb.expect("ack")  # (as if lost: the page sends the frame again)
    await cb.close()
    await until_state(ca, "period_end", 5)
    await until_state(ca, "period_start", 5)  # block 1's group runs, b's bot in its seat
    stored = next(e for e in await server.events(code) if e["seq"] == first["payload"]["seq"])
    await until_event(server, code, lambda e: e["channel"] == "decisions" and e["participant"] == b
                      and e["group"] != stored["group"], wait=5)  # the bot's, in block 1
    back = await server.connect(b)
    assert (await back.expect("hello"))["payload"]["phase"] == "running"
    await back.send("decisions", 9, "b-1")
    again = await back.next()
    while again["channel"] not in ("ack", "error"):
        again = await back.next()
    assert again == first
    await back.send("decisions", 5, "b-2")  # storage goes on
    assert (await back.expect("ack"))["payload"]["id"] == "b-2"
    await until_done(server, code)
    events = await server.events(code)
    mine = [e for e in events if e["participant"] == b and e["channel"] == "decisions" and not e["bot"]]
    assert [(e["seq"], e["value"]) for e in mine] == [(first["payload"]["seq"], 9), (mine[-1]["seq"], 5)]


def among(score: float, compared: list[float]) -> float:
    """MUSCLE's percentile of ``score`` among ``compared``: below it, ties counted half."""
    return 100.0 * (sum(s < score for s in compared) + 0.5 * sum(s == score for s in compared)) / len(compared)


async def three_in_two_blocks(server: Harness) -> tuple[str, tuple[str, str, str], tuple[Any, Any, Any]]:
    """A group of three in two blocks of 2 s (a dropout stood in for after 0.3 s), all connected and
    the first period started: the experiment's code, the participants' codes and their clients."""
    exp = await server.create(game="public_goods", participants=3, group_size=3, blocks=2, period_length=2,
                              block_pause=0.3, online={"dropout_after": 0.3})
    a, b, c = (p["code"] for p in exp["participants"])
    ca, cb, cc = [await server.connect(p) for p in (a, b, c)]
    await until_state(ca, "period_start")
    return exp["code"], (a, b, c), (ca, cb, cc)


@pytest.mark.usefixtures("brisk_bots")
async def test_a_blocks_percentile_among_the_finished_goes_by_who_played_its_seat_not_the_status_now(
    any_server: Harness,
) -> None:
    """Two blocks. c leaves at once and a bot plays block 0 for them; c comes back in block 1 and
    plays it (``replaced``). b plays block 0, leaves in block 1 and a bot plays it to the end
    (``dropped``). Among each block's finished sessions a session is compared where its
    participant played the seat to the block's end: block 0 compares a and b (not c's bot),
    block 1 a and c (not b's bot). By the status now, b's block 0 was left out and c's bot kept."""
    server = any_server
    code, (a, b, c), (ca, cb, cc) = await three_in_two_blocks(server)
    await cc.close()
    await ca.send("decisions", 2.5, "a-1")
    await cb.send("decisions", 7.25, "b-1")
    await until_state(ca, "period_end", 6)
    await until_state(ca, "period_start", 6)  # block 1
    await cb.close()
    await until_event(server, code, lambda e: e["channel"] == "standin" and e["value"]["participant"] == b)
    back = await server.connect(c)
    assert (await back.expect("hello"))["payload"]["phase"] == "running"
    await back.send("decisions", 5.5, "c-1")
    assert (await back.expect("ack"))["payload"]["id"] == "c-1"
    await until_done(server, code)
    assert await statuses(server, code) == {a: "finished", b: "dropped", c: "replaced"}

    def percentiles(engine: Any) -> dict[tuple[str, int], tuple[float, float]]:
        found = {}
        for who in (a, b, c):
            for block in (0, 1):
                record = SessionRecord.load(engine, who, block)
                assert record is not None and record.finished
                found[who, block] = (record.final_score, record.percentile_rank(exclude_unfinished=True))
        return found

    found = await server.runtime.database.read(percentiles)
    scores = {key: score for key, (score, _) in found.items()}
    played = {0: [scores[a, 0], scores[b, 0]], 1: [scores[a, 1], scores[c, 1]]}  # by the humans themselves
    assert {key: rank for key, (_, rank) in found.items()} == {
        (who, block): pytest.approx(among(scores[who, block], played[block])) for who, block in found
    }
    assert len({scores[b, 0], scores[c, 0]}) == 2  # (so the comparisons differ)


@pytest.mark.usefixtures("brisk_bots")
async def test_a_participant_finished_only_if_no_bot_held_their_seat_at_a_blocks_end(any_server: Harness) -> None:
    """Two blocks, all three ``replaced`` but a. b leaves block 0 and is back before its end: they
    played every block themselves and finished. c leaves at once, a bot plays block 0 to its end,
    c comes back in block 1: not finished, a seat played by a bot, as the block's comparison of
    sessions has it. By the status (``replaced``) c was counted finished."""
    server = any_server
    code, (a, b, c), (ca, cb, cc) = await three_in_two_blocks(server)
    await cb.close()
    await cc.close()
    await until_event(server, code, lambda e: e["channel"] == "standin" and e["value"]["participant"] == b)
    b_back = await server.connect(b)
    assert (await b_back.expect("hello"))["payload"]["phase"] == "running"
    await until_event(server, code, lambda e: e["channel"] == "standin" and e["value"] == {
        "participant": b, "reason": "dropout", "playing": False})
    await b_back.send("decisions", 7.25, "b-1")
    assert (await b_back.expect("ack"))["payload"]["id"] == "b-1"
    await until_state(ca, "period_end", 6)
    await until_state(ca, "period_start", 6)  # block 1, c's bot followed them there
    c_back = await server.connect(c)
    assert (await c_back.expect("hello"))["payload"]["phase"] == "running"
    await c_back.send("decisions", 5.5, "c-1")
    assert (await c_back.expect("ack"))["payload"]["id"] == "c-1"
    await until_done(server, code)
    assert await statuses(server, code) == {a: "finished", b: "replaced", c: "replaced"}
    rows = {r["code"]: r for r in (await get(server, f"/api/experiments/{code}/participants"))["results"]}
    assert {who: r["completion"]["ratio"] for who, r in rows.items()} == {a: 1.0, b: 1.0, c: 1.0}

    counts = await stats(server, code)
    assert counted(counts, "finished", "played_by_bots", "participants", "count") == (2, 1, 3, 3)
    only = await stats(server, code, exclude_unfinished="true")
    assert counted(only, "finished", "played_by_bots", "count") == (2, 1, 2)
    assert only["mean_score"] == pytest.approx((rows[a]["final_score"] + rows[b]["final_score"]) / 2)
    ranked = await server.http.get(f"/api/experiments/{code}/participants", params={"exclude_unfinished": "true"})
    compared = [rows[a]["final_score"], rows[b]["final_score"]]
    assert {r["code"]: r["percentile_rank"] for r in ranked.json()["results"]} == {
        who: pytest.approx(among(rows[who]["final_score"], compared)) for who in (a, b, c)
    }

    def blocks_compared(engine: Any) -> dict[int, list[float]]:
        """Each block's finished sessions that count as their participants' own."""
        with engine.connect() as conn:
            ids = conn.execute(
                select(blocks.c.index, blocks.c.id).join(experiments, experiments.c.id == blocks.c.experiment_id)
                .where(experiments.c.code == code)
            ).all()
        return {int(index): sorted(block_final_scores(engine, block, True)) for index, block in ids}

    per_block = await server.runtime.database.read(blocks_compared)
    assert [len(per_block[0]), len(per_block[1])] == [2, 3]  # c's block 0 is its bot's, block 1 theirs


class StartFailsOnce(PublicGoods):
    """public_goods whose first start of the period raises, once every member is there (found by its import path)."""

    failed = False

    def when_all_players_ready(self) -> None:
        if not self.failed:
            self.failed = True
            raise RuntimeError("cannot start yet")


async def test_a_bot_whose_arrival_the_game_fails_on_takes_the_seat_all_the_same(
    server: Harness, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Online, one arrives and the lobby fills the other seat with a bot; the game fails on the
    period's start that arrival makes. As a human's arrival that the game fails on, it counts:
    logged once with its traceback, the ``standin`` event stored, the bot playing (once the
    experimenter starts the period), its seat counted as a bot's. It was refused (``GameFailed``)
    with the seat held for a bot in memory, no bot ever to play it nor to take it again, while the
    lobby had stored the status ``bot`` and the log no ``standin``: the seat nobody played counted
    as its participant's own (``finished``), and the lobby's other seats got no bot."""
    caplog.set_level(logging.ERROR)
    monkeypatch.setattr(standins, "PACE", 0.05)  # the server runs in this process
    exp = await server.create(game=f"{__name__}:StartFailsOnce", participants=2, group_size=2, period_length=1,
                              online={"lobby_timeout": 0.3, "fill": "bots"})
    code = exp["code"]
    arrived = await server.http.get(f"/join/{code}", params={"label": "here"}, follow_redirects=False)
    here = arrived.headers["location"].removeprefix("/p/")
    filled = next(p["code"] for p in exp["participants"] if p["code"] != here)
    client = await server.connect(here)
    group = (await client.expect("hello"))["payload"]["group"]
    stood = await until_event(server, code, lambda e: e["channel"] == "standin")
    assert stood["value"] == {"participant": filled, "reason": "fill", "playing": True}
    logged = [r for r in caplog.records if "failed" in r.getMessage()]
    assert [r.getMessage() for r in logged] == [
        f"group {group}: the game StartFailsOnce failed when a bot took the seat of {filled} (fill); "
        "the bot plays it all the same"]
    assert logged[0].exc_info is not None and str(logged[0].exc_info[1]) == "cannot start yet"
    started = await server.http.post(f"/api/experiments/{code}/start")
    assert started.status_code == 200, started.text
    await until_done(server, code)
    events = await server.events(code)
    assert [e for e in events if e["channel"] == "decisions" and e["participant"] == filled and e["bot"]]
    assert await statuses(server, code) == {here: "finished", filled: "bot"}
    assert counted(await stats(server, code), "finished", "played_by_bots") == (1, 1)
