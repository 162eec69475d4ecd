"""Blocks, scores and the experimenter's controls on a real server and a real clock."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any, ClassVar, NamedTuple

import pytest
from sqlalchemy import Engine, text

from groups import LATE_AFTER, PublicGoods
from server.storage import list_ticks
from tests.server.harness import Client, Harness, timeout, until_state

PD = {"AA": [3, 3], "AB": [0, 5], "BA": [5, 0], "BB": [1, 1]}




async def get(server: Harness, path: str) -> Any:
    response = await server.http.get(path, params={"page_size": 1000})
    assert response.status_code == 200, response.text
    return response.json()


async def decide(client: Client, value: Any, frame_id: str) -> int:
    """Send a decision and return its ``seq``; a refusal fails at once, naming why."""
    await client.send("decisions", value, frame_id)
    async with asyncio.timeout(timeout(5)):
        while True:
            frame = await client.next()
            if frame["channel"] == "error" and frame["payload"].get("id") == frame_id:
                raise AssertionError(f"decision {frame_id} refused: {frame['payload']}")
            if frame["channel"] == "ack":
                break
    assert frame["payload"]["id"] == frame_id
    seq: int = frame["payload"]["seq"]
    return seq


async def wait_for_status(server: Harness, code: str, status: str, wait: float = 5.0) -> None:
    """Poll the experiment until its status is ``status`` (at most ``wait`` seconds)."""
    for _ in range(int(timeout(wait) / 0.05)):
        if (await get(server, f"/api/experiments/{code}"))["status"] == status:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"experiment {code} never became {status}")


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


async def test_two_blocks_back_to_back_score_by_the_payoff_table(server: Harness) -> None:
    """Block 0: row A, col B (row 0, col 5 per unit); block 1: both A (3 each). N = 2, bonus 1.5.

    Each subperiod scores payoff / 2, so block 0 ends row 0 + 1.5, col 5 + 1.5; block 1 ends
    3 + 1.5 each. Members move on after the 0.3 s pause with a new hello, and the experiment is done.
    """
    exp = await server.create(
        participants=2, group_size=2, blocks=2, period_length=2, num_subperiods=2, bonus_points=1.5,
        block_pause=0.3, config={"payoffs": PD},
    )
    code = exp["code"]
    row, col = [await server.connect(p["code"]) for p in exp["participants"]]
    for client in (row, col):
        hello = (await client.expect("hello"))["payload"]
        assert hello["block"] == 0 and hello["num_blocks"] == 2
    await until_state(row, "period_start")
    await decide(row, 1.0, "r0")
    await decide(col, 0.0, "c0")
    end0 = await until_state(row, "period_end")
    moved = await row.expect("hello")
    assert moved["payload"]["block"] == 1
    assert moved["payload"]["server_time"] - end0["ts"] >= 300 - 5
    await until_state(row, "period_start")
    await until_state(col, "period_start")
    await decide(row, 1.0, "r1")
    await decide(col, 1.0, "c1")
    await until_state(row, "period_end")
    await until_state(col, "period_end")

    private = [f["payload"] for f in row.frames if f["channel"] == "result"]
    assert [(r["subperiod"], r["score"]) for r in private] == [(0, 0.0), (1, 0.0), (0, 1.5), (1, 1.5)]
    assert [f["payload"]["score"] for f in col.frames if f["channel"] == "result"] == [2.5, 2.5, 1.5, 1.5]

    await wait_for_status(server, code, "done")
    sessions = (await get(server, f"/api/experiments/{code}/sessions"))["results"]
    rc = {p["code"]: p["label"] for p in exp["participants"]}
    scores = {(rc[s["participant"]], s["block"]): s["final_score"] for s in sessions}
    assert scores == {("P1", 0): 1.5, ("P2", 0): 6.5, ("P1", 1): 4.5, ("P2", 1): 4.5}
    assert all(s["started_at"] and s["finished_at"] for s in sessions)
    results = (await get(server, f"/api/experiments/{code}/results"))
    assert results["count"] == 8
    for s in sessions:
        mine = [r for r in results["results"] if r["participant"] == s["participant"] and r["block"] == s["block"]]
        assert len(mine) == 2 and s["final_score"] == pytest.approx(sum(r["score"] for r in mine) + 1.5)

    for group_id in {moved["payload"]["group"], (row.frames[0]["payload"])["group"]}:
        ticks = await server.runtime.database.read(list_ticks, group_id)
        assert [(t["kind"], t["index"]) for t in ticks] == [("subperiod", 0), ("subperiod", 1), ("period_end", 0)]
        # never early, and stored late exactly when it ran over LATE_AFTER: how late a tick runs is
        # the machine's (the benchmark's ticks-1000 measures it); a loaded machine ran one 0.22 s late
        for t in ticks:
            assert t["actual_at"] >= t["scheduled_at"], t
            assert t["late"] == (t["actual_at"] - t["scheduled_at"] > LATE_AFTER), t


LENGTH = 3.0


async def test_continuous_time_scores_the_integral_of_the_decision_events(any_server: Harness) -> None:
    """One result per member: the time-weighted flow payoff, recomputed here from the stored events."""
    server = any_server
    # long enough that both decisions come well inside it on a busy machine
    exp = await server.create(participants=2, group_size=2, period_length=LENGTH, config={"payoffs": PD})
    row, col = [await server.connect(p["code"]) for p in exp["participants"]]
    await until_state(row, "period_start")
    await asyncio.sleep(0.2)
    await decide(row, 1.0, "r")
    await asyncio.sleep(0.3)
    await decide(col, 0.25, "c")
    await until_state(row, "period_end")
    await until_state(col, "period_end")

    events = await server.events(exp["code"])
    start = next(epoch(e["timestamp"]) for e in events if e["value"] == "period_start")
    end = start + LENGTH
    codes = [p["code"] for p in exp["participants"]]
    decisions = {codes[0]: 0.5, codes[1]: 0.5}
    integral = dict.fromkeys(codes, 0.0)
    at = start
    changes = [(epoch(e["timestamp"]), e["participant"], e["value"]) for e in events if e["channel"] == "decisions"]
    for t, who, value in [*changes, (end, None, None)]:
        p, q = decisions[codes[0]], decisions[codes[1]]
        flows = {
            codes[0]: 3 * p * q + 0 * p * (1 - q) + 5 * (1 - p) * q + 1 * (1 - p) * (1 - q),
            codes[1]: 3 * p * q + 5 * p * (1 - q) + 0 * (1 - p) * q + 1 * (1 - p) * (1 - q),
        }
        for c in codes:
            integral[c] += flows[c] * (t - at)
        at = t
        if who is not None:
            decisions[who] = value
    results = (await get(server, f"/api/experiments/{exp['code']}/results"))["results"]
    assert len(results) == 2
    for r in results:
        assert r["subperiod"] is None
        assert r["score"] == pytest.approx(integral[r["participant"]] / LENGTH, abs=1e-6)
    assert {r["participant"]: r["decision"] for r in results} == {codes[0]: 1.0, codes[1]: 0.25}


async def test_the_rate_limit_coalesces_broadcasts_and_ends_with_the_latest(server: Harness) -> None:
    """rate_limit 0.5 s: five quick decisions are all stored, but the partner sees one broadcast of the last."""
    exp = await server.create(participants=2, group_size=2, period_length=3, rate_limit=0.5)
    row, col = [await server.connect(p["code"]) for p in exp["participants"]]
    start = await until_state(col, "period_start")
    first = await col.expect("group_decisions")
    for i, value in enumerate((0.1, 0.2, 0.3, 0.4, 0.9)):
        await decide(row, value, f"d{i}")
    flushed = await col.expect("group_decisions")
    assert flushed["payload"][exp["participants"][0]["code"]] == 0.9
    assert flushed["ts"] - first["ts"] >= 500 - 1, "sooner than the rate limit"
    # at the rate limit's boundary, not a window later (1,000 ms); how close a timer lands is
    # tests/server/test_timing.py's (here the loop is shared with the test's clients, and another
    # test runs beside: 584 ms was seen once in CI)
    assert flushed["ts"] - start["ts"] <= 500 + 250, "the waiting broadcast came late"
    assert await col.silent(0.7)  # nothing more to say until somebody decides
    stored = [e for e in await server.events(exp["code"]) if e["channel"] == "decisions"]
    assert [e["value"] for e in stored] == [0.1, 0.2, 0.3, 0.4, 0.9]


async def test_pause_and_resume_move_the_end_by_the_pause(server: Harness) -> None:
    """Paused 0.6 s: decisions are refused meanwhile, and period_end comes 0.6 s later than planned.

    A period of 4 s: the pause must come before the period's end. In a CI run the pause found no
    running group in a 1.5 s period; on a machine that busy the end can come first (the control's
    reads wait for the journal's apply, and the test's loop is shared)."""
    length = 4.0
    exp = await server.create(participants=2, group_size=2, period_length=length)
    code = exp["code"]
    row, _col = [await server.connect(p["code"]) for p in exp["participants"]]
    start = await until_state(row, "period_start")
    assert await server.runtime.groups.control(code, "pause") != []
    paused = await row.expect("period")
    assert paused["payload"]["status"] == "paused"
    await row.send("decisions", 1.0, "refused")
    refused = await row.expect("error")
    assert refused["payload"]["code"] == "not_running" and refused["payload"]["id"] == "refused"
    assert (await get(server, f"/api/experiments/{code}"))["status"] == "running"
    await asyncio.sleep(0.6)
    assert await server.runtime.groups.control(code, "resume") != []
    resumed_frame = await row.expect("period")
    resumed = resumed_frame["payload"]
    pause = (resumed["ends_at"] - start["ts"] - length * 1000) / 1000
    # the end moved by exactly the pause the server saw (its frames' ts), which lasted the 0.6 s slept
    assert pause * 1000 == pytest.approx(resumed_frame["ts"] - paused["ts"], abs=2)
    assert pause >= 0.6 - 0.002
    end = await until_state(row, "period_end")
    # at the moved end, never before it; how close a timer lands is tests/server/test_timing.py's
    # (here the loop is shared with the test's clients, and another test runs beside)
    assert 0 <= end["ts"] - resumed["ends_at"] <= 250
    hello = (await (await server.connect(exp["participants"][1]["code"])).expect("hello"))["payload"]
    assert hello["period"]["ends_at"] == resumed["ends_at"]


async def test_ending_an_experiment_cancels_it_and_nobody_moves_on(server: Harness) -> None:
    """end: period_end now, the experiment `cancelled`, sessions of the played block finished, no block 1."""
    exp = await server.create(participants=2, group_size=2, blocks=2, period_length=30, block_pause=0.1)
    code = exp["code"]
    row, _col = [await server.connect(p["code"]) for p in exp["participants"]]
    await until_state(row, "period_start")
    ended = await server.runtime.groups.control(code, "end")
    assert len(ended) == 2  # the running group and the waiting group of block 1
    await until_state(row, "period_end")
    assert await row.next() == {"channel": "experiment", "payload": {"status": "cancelled"}}  # not stored: no seq
    later = []
    while not await row.silent(0.4) and len(later) < 5:
        later.append((await row.next())["channel"])
    assert set(later) <= {"experiment"}  # no hello for block 1: after the pause, only the notice again
    detail = await get(server, f"/api/experiments/{code}")
    assert detail["status"] == "cancelled" and detail["finished_at"]
    sessions = (await get(server, f"/api/experiments/{code}/sessions"))["results"]
    assert [(s["block"], bool(s["finished_at"])) for s in sessions] == [(0, True), (0, True), (1, False), (1, False)]
    with pytest.raises(ValueError):
        await server.runtime.groups.control(code, "explode")
    with pytest.raises(LookupError):
        await server.runtime.groups.control("nope", "end")


async def test_hello_names_the_blocks_timing_before_its_period_starts(server: Harness) -> None:
    """A member waiting for the group learns ``num_subperiods`` and ``period_length`` from ``hello``
    (``hello.period`` is null until the start): its page needs them at ``period_start``."""
    exp = await server.create(participants=2, group_size=2, period_length=8, num_subperiods=4)
    row = await server.connect(exp["participants"][0]["code"])
    hello = (await row.expect("hello"))["payload"]
    assert hello["phase"] == "waiting" and hello["period"] is None
    assert (hello["num_subperiods"], hello["period_length"]) == (4, 8)
    continuous = await server.create(participants=2, group_size=2, period_length=8)
    other = await server.connect(continuous["participants"][0]["code"])
    hello = (await other.expect("hello"))["payload"]
    assert (hello["num_subperiods"], hello["period_length"]) == (None, 8)


async def test_ending_mid_experiment_tells_every_member_at_once_that_it_is_over(server: Harness) -> None:
    """``end`` in block 1 of 2: the members of a running group, of a waiting group and of a group
    between its blocks each get ``experiment {"status": "cancelled"}`` after their ``period_end``
    (or at once, when their period had ended), long before the pause would have moved them on."""
    exp = await server.create(participants=6, group_size=2, blocks=2, period_length=30, block_pause=30)
    code, codes = exp["code"], [p["code"] for p in exp["participants"]]
    playing = [await server.connect(c) for c in codes[:2]]
    waiting = await server.connect(codes[2])
    between = [await server.connect(c) for c in codes[4:]]
    await until_state(playing[0], "period_start")
    await until_state(between[0], "period_start")
    hello = next(f["payload"] for f in between[0].frames if f["channel"] == "hello")
    assert await server.runtime.groups.control(code, "end", hello["group"]) == [hello["group"]]
    await until_state(between[0], "period_end")  # the third group is in the pause after block 1
    await server.runtime.groups.control(code, "end")
    for client in (*playing, waiting):
        await until_state(client, "period_end", wait=2)
        assert await client.expect("experiment", wait=2) == {"channel": "experiment", "payload": {"status": "cancelled"}}
    for client in between:
        assert (await client.expect("experiment", wait=2))["payload"] == {"status": "cancelled"}
    for client in (*playing, waiting, *between):
        assert "hello" not in [f["channel"] for f in client.frames[1:]]


async def test_start_forces_a_group_whose_member_is_missing(server: Harness) -> None:
    """One of two members connects; start begins the period; the latecomer joins it running."""
    exp = await server.create(participants=2, group_size=2, period_length=5)
    row = await server.connect(exp["participants"][0]["code"])
    assert (await row.expect("hello"))["payload"]["phase"] == "waiting"
    assert len(await server.runtime.groups.control(exp["code"], "start")) == 1
    await until_state(row, "period_start")
    assert await server.runtime.groups.control(exp["code"], "start") == []  # nothing waits any more
    late = await server.connect(exp["participants"][1]["code"])
    assert (await late.expect("hello"))["payload"]["phase"] == "running"


async def test_start_in_the_pause_between_blocks_waits_for_the_members_to_move_in(server: Harness) -> None:
    """``start`` during the pause after block 1 starts nothing: the members are still in block 1's
    group; block 2's period starts when they have moved in, after the pause, not before."""
    exp = await server.create(participants=2, group_size=2, blocks=2, period_length=0.5, block_pause=1.5)
    clients = [await server.connect(p["code"]) for p in exp["participants"]]
    end = await until_state(clients[0], "period_end")
    assert await server.runtime.groups.control(exp["code"], "start") == []
    start = await until_state(clients[0], "period_start", wait=5)
    assert start["ts"] >= end["ts"] + 1500, f"block 2 started {start['ts'] - end['ts']} ms after block 1 ended"
    hello = [f["payload"] for f in clients[0].frames if f["channel"] == "hello"][-1]
    assert hello["block"] == 1


async def test_random_matching_regroups_everyone_each_block_until_done(server: Harness) -> None:
    """4 participants in pairs, 3 blocks: every block's hellos form a partition, and all 12 sessions finish."""
    exp = await server.create(
        game="public_goods", participants=4, group_size=2, blocks=3, period_length=0.4, matching="random",
        block_pause=0,
    )
    clients = [await server.connect(p["code"]) for p in exp["participants"]]
    for client in clients:
        for _ in range(3):
            await until_state(client, "period_end")
    for block in range(3):
        hellos = [next(f["payload"] for f in c.frames if f["channel"] == "hello" and f["payload"]["block"] == block)
                  for c in clients]
        groups = {h["group"]: tuple(h["members"]) for h in hellos}
        assert sorted(p for members in groups.values() for p in members) == sorted(p["code"] for p in exp["participants"])
        assert all(h["participant"] in groups[h["group"]] for h in hellos)
    await wait_for_status(server, exp["code"], "done")
    sessions = (await get(server, f"/api/experiments/{exp['code']}/sessions"))
    assert sessions["count"] == 12 and all(s["finished_at"] for s in sessions["results"])


def block_groups(engine: Engine, code: str) -> dict[int, dict[int, set[str]]]:
    """Experiment ``code``'s groups by block (each by id, with its members' codes)."""
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT b.\"index\", m.group_id, p.code FROM memberships m JOIN blocks b ON b.id = m.block_id"
            " JOIN participants p ON p.id = m.participant_id JOIN experiments x ON x.id = b.experiment_id"
            " WHERE x.code = :code"
        ), {"code": code}).all()
    found: dict[int, dict[int, set[str]]] = {}
    for block, group, member in rows:
        found.setdefault(int(block), {}).setdefault(int(group), set()).add(str(member))
    return found


class Crossing(NamedTuple):
    """Two blocks of two pairs, block 1 not repeating block 0's: block 0's pairs, the block-1 group
    made of one member of each (``next_id``), and those two, ``x`` from the first pair, ``y`` from
    the second."""

    first: set[str]
    second: set[str]
    next_id: int
    x: str
    y: str


def crossing(groups: dict[int, dict[int, set[str]]]) -> Crossing | None:
    """:class:`Crossing` of :func:`block_groups`' two blocks; ``None`` when block 1 repeats block 0's pairs."""
    if sorted(map(sorted, groups[0].values())) == sorted(map(sorted, groups[1].values())):
        return None
    first, second = (members for _, members in sorted(groups[0].items()))
    next_id, pair = next((g, members) for g, members in groups[1].items() if members & first and members & second)
    (x,), (y,) = pair & first, pair & second
    return Crossing(first, second, next_id, x, y)


async def test_a_frame_sent_again_in_the_next_block_loaded_before_the_member_came_is_acknowledged(
    any_server: Harness,
) -> None:
    """One process, random matching: x's block ends first and x's next group is loaded while y,
    x's partner there, still plays block 0 in another group and has ``y-1`` stored; y moves on and
    sends ``y-1`` again with a new frame behind it (a page after a reconnect): the repeat gets its
    stored seq, the new one an ack, nothing applied twice. (A group loaded here reads a member's
    ids at their seat, not at its load: the window of the cluster's test_repeats is not here.)"""
    server, database = any_server, any_server.runtime.database
    for _ in range(20):  # until block 1 does not repeat block 0's pairs (a third of the shuffles do)
        exp = await server.create(game="bimatrix", participants=4, group_size=2, blocks=2, period_length=1.5,
                                  block_pause=0.2, matching="random")
        groups = await database.read(block_groups, exp["code"])
        crossed = crossing(groups)
        if crossed is not None:
            break
    else:
        raise AssertionError("20 shuffles repeated block 0's pairs")
    first, second, next_id, x, y = crossed
    clients = {code: await server.connect(code) for code in first}
    await until_state(clients[x], "period_end")
    assert (await clients[x].expect("hello"))["payload"]["group"] == next_id  # loaded, y not in it yet
    clients.update({code: await server.connect(code) for code in second})
    await until_state(clients[y], "period_start")
    ack = await decide(clients[y], 0.25, "y-1")
    await until_state(clients[y], "period_end")
    hello = await clients[y].expect("hello")
    assert hello["payload"]["group"] == next_id
    await until_state(clients[y], "period_start")
    await clients[y].send("decisions", 0.25, "y-1")
    await clients[y].send("decisions", 0.75, "y-2")
    answers: dict[str, dict[str, Any]] = {}
    async with asyncio.timeout(timeout(5)):
        while len(answers) < 2:
            frame = await clients[y].next()
            if frame["channel"] in ("ack", "error") and frame["payload"].get("id") in ("y-1", "y-2"):
                answers[frame["payload"]["id"]] = frame
    assert answers["y-1"]["channel"] == "ack" and answers["y-1"]["payload"]["seq"] == ack
    assert answers["y-2"]["channel"] == "ack", answers["y-2"]
    await until_state(clients[y], "period_end")
    decided = [e["value"] for e in await server.events(exp["code"])
               if e["group"] == next_id and e["participant"] == y and e["channel"] == "decisions"]
    assert decided == [0.75]  # y-1 was not applied to the next block's game


class Patient(PublicGoods):
    """public_goods that waits for anyone who drops out (found by its import path)."""

    pause_when_disconnected: ClassVar[bool] = True


async def test_a_game_that_pauses_on_disconnect_waits_for_the_member(server: Harness) -> None:
    """A member leaves: the partner sees `period` paused; the member is back 0.5 s later: resumed, end moved."""
    exp = await server.create(game="tests.server.test_blocks:Patient", participants=2, group_size=2, period_length=2)
    a, b = [await server.connect(p["code"]) for p in exp["participants"]]
    start = await until_state(a, "period_start")
    await b.close()
    paused_frame = await a.expect("period")
    paused = paused_frame["payload"]
    assert paused == {**paused, "status": "paused", "paused_by": "disconnect"}
    await asyncio.sleep(0.5)
    back = await server.connect(exp["participants"][1]["code"])
    assert (await back.expect("hello"))["payload"]["phase"] == "paused"  # the state before it came back
    resumed_frame = await a.expect("period")
    resumed = resumed_frame["payload"]
    assert resumed["status"] == "running"
    # the end moved by exactly the pause the server saw, which lasted at least the 0.5 s slept;
    # how much longer depends on how fast the reconnect is, so only its frames' ts pin it
    shift = resumed["ends_at"] - start["ts"] - 2000
    assert shift == pytest.approx(resumed_frame["ts"] - paused_frame["ts"], abs=2)
    assert shift >= 500 - 2
    end = await until_state(back, "period_end")
    assert 0 <= end["ts"] - resumed["ends_at"] <= 250  # at the moved end (precision: test_timing.py)


async def test_the_action_endpoints_drive_the_same_controls(server: Harness) -> None:
    """POST …/pause and …/resume over HTTP; bad token, unknown experiment, action or group are refused."""
    exp = await server.create(participants=2, group_size=2, period_length=30)
    code = exp["code"]
    row, _col = [await server.connect(p["code"]) for p in exp["participants"]]
    await until_state(row, "period_start")
    paused = await server.http.post(f"/api/experiments/{code}/pause")
    assert paused.status_code == 200, paused.text
    assert paused.json()["action"] == "pause" and len(paused.json()["groups"]) == 1
    assert (await row.expect("period"))["payload"]["status"] == "paused"
    again = await server.http.post(f"/api/experiments/{code}/pause")
    assert again.json()["groups"] == []  # nothing running to pause
    group = paused.json()["groups"][0]
    resumed = await server.http.post(f"/api/experiments/{code}/resume", params={"group": group})
    assert resumed.json()["groups"] == [group]
    assert (await row.expect("period"))["payload"]["status"] == "running"
    assert (await server.http.post(f"/api/experiments/{code}/jump")).status_code == 404
    assert (await server.http.post("/api/experiments/nope/pause")).status_code == 404
    assert (await server.http.post(f"/api/experiments/{code}/pause", params={"group": 999999})).status_code == 404
    assert (await server.http.post(f"/api/experiments/{code}/pause", params={"group": "x"})).status_code == 400
    bare = await server.http.post(f"/api/experiments/{code}/pause", headers={"Authorization": ""})
    assert bare.status_code == 401
    wrong = await server.http.post(f"/api/experiments/{code}/pause", headers={"Authorization": "Bearer wrong"})
    assert wrong.status_code == 403
    ended = await server.http.post(f"/api/experiments/{code}/end")
    assert ended.json()["status"] == "cancelled"
    assert (await until_state(row, "period_end"))["payload"] == "period_end"


class Fragile(PublicGoods):
    """public_goods whose payoff fails once somebody contributes 7 (found by its import path)."""

    def payoff(self, participant: str, decisions: Any) -> float:
        if 7 in decisions.values():
            raise ZeroDivisionError("seven")
        return super().payoff(participant, decisions)

    def payoffs(self, decisions: Any) -> dict[str, float]:
        return {p: self.payoff(p, decisions) for p in self.members}


async def test_ending_an_experiment_whose_game_fails_in_one_group_ends_every_group(
    server: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """The experimenter's end meets a game that raises in one group: that group is ended without
    its game (logged), the others as usual; the answer lists every group. It was a 500 that ended
    none after the failing group, then the failing group was left running."""
    exp = await server.create(game="tests.server.test_blocks:Fragile", participants=4, group_size=2, period_length=60)
    clients = [await server.connect(p["code"]) for p in exp["participants"]]
    hellos = [(await c.expect("hello"))["payload"] for c in clients]
    for client in clients:
        await until_state(client, "period_start")
    await decide(clients[0], 7, "seven")
    ended = await server.http.post(f"/api/experiments/{exp['code']}/end")
    assert ended.status_code == 200, ended.text
    assert ended.json()["groups"] == sorted({h["group"] for h in hellos})
    for client in clients:
        await until_state(client, "period_end")
    assert "the game Fragile failed on the experimenter's end (payoff: ZeroDivisionError: seven)" in caplog.text
