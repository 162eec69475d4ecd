"""Participants' progress, stats and the experiments list (CONTRACT §4), on a real server and clock."""

from __future__ import annotations

import csv
import io
import random
import sys
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from groups import PublicGoods
from server.progress import _rank
from server.storage import make_engine, participants, sessions
from server.verify import verify
from tests.server.harness import Harness, running_server, timeout, until_state
from tests.server.test_blocks import decide, wait_for_status


async def get(server: Harness, path: str) -> Any:
    """GET ``path`` (its query kept) as the experimenter; asserts 200."""
    response = await server.http.get(path)
    assert response.status_code == 200, response.text
    return response.json()


async def play_one_block_of_two(server: Harness, **extra: Any) -> tuple[dict[str, Any], list[str]]:
    """4 participants in 2 bimatrix groups, block 0 played to its end, block 1 waiting (long pause).

    Group 1: row plays A (1), col plays B (0): row scores 0, col 5. Group 2 keeps the initial
    0.5 each: 2.25 each. Each of the 2 subperiods scores payoff / 2.
    """
    exp = await server.create(
        participants=4, group_size=2, blocks=2, period_length=2, num_subperiods=2, block_pause=600, **extra
    )
    codes = [p["code"] for p in exp["participants"]]
    clients = [await server.connect(c) for c in codes]
    for client in clients:
        await until_state(client, "period_start")
    hello = clients[0].frames[0]
    first_group = hello["payload"]["members"]
    row, col = (clients[codes.index(first_group[0])], clients[codes.index(first_group[1])])
    await decide(row, 1, "a")
    await decide(col, 0, "b")
    for client in clients:
        await until_state(client, "period_end", wait=6)
    ordered = [*first_group, *[c for c in codes if c not in first_group]]
    return exp, ordered


async def test_progress_ranks_and_stats_after_one_of_two_blocks(any_server: Harness) -> None:
    exp, (row, col, p3, p4) = await play_one_block_of_two(any_server)
    code = exp["code"]
    body = await get(any_server, f"/api/experiments/{code}/participants")
    assert body["count"] == 4 and body["num_pages"] == 1 and body["current_page"] == 1
    by_code = {r["code"]: r for r in body["results"]}
    assert [r["code"] for r in body["results"]] == [p["code"] for p in exp["participants"]]
    expected = {row: (0.0, 3, 12.5), col: (5.0, 1, 87.5), p3: (2.25, 2, 50.0), p4: (2.25, 2, 50.0)}
    for who, (score, rank, percentile) in expected.items():
        r = by_code[who]
        assert r["final_score"] == pytest.approx(score)
        assert r["rank"] == rank
        assert r["percentile_rank"] == pytest.approx(percentile)
        assert r["completion"] == {"earned": 1, "possible": 2, "ratio": 0.5}
        assert r["connected"] is True and r["connected_since"]
    sessions = await get(any_server, f"/api/experiments/{code}/sessions")
    # the group now is the waiting block-1 group, the one the sessions of block 1 name
    block1 = {s["participant"]: s["group"] for s in sessions["results"] if s["block"] == 1}
    assert {c: r["group"] for c, r in by_code.items()} == block1

    stats = await get(any_server, f"/api/experiments/{code}/stats")
    assert stats["mean_completion"] == pytest.approx(0.5)
    assert stats["mean_score"] == pytest.approx((0 + 5 + 2.25 + 2.25) / 4)
    assert stats["participants"] == 4 and stats["finished"] == 0 and stats["connected"] == 4
    assert stats["status"] == "running"
    nobody = await get(any_server, f"/api/experiments/{code}/stats?exclude_unfinished=true")
    assert nobody["count"] == 0 and nobody["mean_score"] is None and nobody["mean_completion"] is None

    group_one = by_code[row]["group"]
    hers = await get(any_server, f"/api/experiments/{code}/stats?group={group_one}")
    assert hers["participants"] == 2 and hers["mean_score"] == pytest.approx(2.5)
    listed = await get(any_server, f"/api/experiments/{code}/participants?group={group_one}")
    assert {r["code"] for r in listed["results"]} == {row, col}
    # ranks stay over the whole experiment when the list is filtered
    assert {r["code"]: r["rank"] for r in listed["results"]} == {row: 3, col: 1}

    detail = await get(any_server, f"/api/experiments/{code}/participants/{col}")
    assert detail["final_score"] == pytest.approx(5.0) and detail["rank"] == 1
    assert [s["block"] for s in detail["sessions"]] == [0, 1]
    done, waiting = detail["sessions"]
    assert done["finished_at"] and waiting["finished_at"] is None
    assert [r["subperiod"] for r in done["results"]] == [0, 1]
    assert sum(r["score"] for r in done["results"]) == pytest.approx(5.0)
    assert waiting["results"] == []


async def test_exclude_unfinished_compares_only_finished_participants(server: Harness) -> None:
    """One group ended by the experimenter mid-period finishes; the other never starts."""
    exp = await server.create(participants=4, group_size=2, period_length=30)
    code = exp["code"]
    codes = [p["code"] for p in exp["participants"]]
    first = await server.connect(codes[0])
    hello = (await first.expect("hello"))["payload"]
    partner = next(c for c in hello["members"] if c != codes[0])
    await server.connect(partner)
    await until_state(first, "period_start")
    ended = await server.http.post(f"/api/experiments/{code}/end", params={"group": hello["group"]})
    assert ended.json()["groups"] == [hello["group"]]
    await until_state(first, "period_end")
    others = [c for c in codes if c not in hello["members"]]

    everyone = await get(server, f"/api/experiments/{code}/participants?exclude_unfinished=true")
    rows = {r["code"]: r for r in everyone["results"]}
    for c in hello["members"]:
        assert rows[c]["completion"]["ratio"] == 1.0
        # both finished score the same short stretch: tied among the two compared, 50th percentile
        assert rows[c]["percentile_rank"] == pytest.approx(50.0)
    for c in others:
        assert rows[c]["completion"] == {"earned": 0, "possible": 1, "ratio": 0.0}
        assert rows[c]["connected"] is False and rows[c]["connected_since"] is None
    stats = await get(server, f"/api/experiments/{code}/stats?exclude_unfinished=true")
    assert stats["count"] == 2 and stats["finished"] == 2 and stats["participants"] == 4
    assert stats["mean_completion"] == 1.0
    assert stats["mean_score"] == pytest.approx(rows[hello["members"][0]]["final_score"])
    all_stats = await get(server, f"/api/experiments/{code}/stats")
    assert all_stats["mean_completion"] == pytest.approx(0.5)


async def everywhere(server: Harness, code: str) -> dict[str, tuple[str | None, int]]:
    """Each participant's ``(status, blocks earned)``, the same in the API, the JSON and CSV exports
    and the whole document (asserted), and the stats' ``finished`` count as the statuses say it."""
    api = {r["code"]: (r["status"], r["completion"]["earned"])
           for r in (await get(server, f"/api/experiments/{code}/participants?page_size=1000"))["results"]}
    table = await get(server, f"/api/experiments/{code}/export.json?table=participants")
    assert {r["code"]: (r["status"], r["completion"]["earned"]) for r in table} == api
    document = await get(server, f"/api/experiments/{code}/export.json")
    assert {r["code"]: (r["status"], r["completion"]["earned"]) for r in document["participants"]} == api
    response = await server.http.get(f"/api/experiments/{code}/export.csv", params={"table": "participants"})
    assert response.status_code == 200, response.text
    assert {r["code"]: r["status"] or None for r in csv.DictReader(io.StringIO(response.text))} == {
        c: status for c, (status, _) in api.items()
    }
    stats = await get(server, f"/api/experiments/{code}/stats")
    assert stats["finished"] == sum(status == "finished" for status, _ in api.values())
    return api


async def test_ending_an_experiment_tells_how_each_run_ended_alike_in_the_api_exports_and_stats(
    any_server: Harness,
) -> None:
    """Two blocks; end: a pair that never came and a pair that played 1 of 2 blocks are cancelled,
    a pair in its last block's period is finished (every block played); all sources agree."""
    server = any_server
    exp = await server.create(participants=6, group_size=2, blocks=2, period_length=30, block_pause=0.2)
    code = exp["code"]
    codes = [p["code"] for p in exp["participants"]]
    clients = {c: await server.connect(c) for c in codes[:4]}
    groups = {c: (await client.expect("hello"))["payload"] for c, client in clients.items()}
    first = groups[codes[0]]
    played = first["members"]  # block 0 ended by the experimenter, block 1 running when it all ends
    some = groups[next(c for c in codes[:4] if c not in played)]["members"]  # block 0 only
    absent = [c for c in codes if c not in played and c not in some]  # never connected
    assert len(absent) == 2 and all(c not in clients for c in absent)
    for c in (*played, *some):
        await until_state(clients[c], "period_start")
    await clients[some[1]].close()  # gone before block 1: its group there never starts
    for members in (first["members"], some):
        ended = await server.http.post(
            f"/api/experiments/{code}/end", params={"group": groups[members[0]]["group"]}
        )
        assert ended.status_code == 200, ended.text
    for c in played:
        await until_state(clients[c], "period_start", wait=5)  # block 1
    assert (await get(server, f"/api/experiments/{code}"))["status"] == "running"
    assert await everywhere(server, code) == {c: (None, 0 if c in absent else 1) for c in codes}

    ended = await server.http.post(f"/api/experiments/{code}/end")
    assert ended.status_code == 200 and ended.json()["status"] == "cancelled", ended.text
    await until_state(clients[played[0]], "period_end")
    expected = {c: ("finished", 2) for c in played}
    expected |= {c: ("cancelled", 1) for c in some}
    expected |= {c: ("cancelled", 0) for c in absent}
    assert await everywhere(server, code) == expected
    stats = await get(server, f"/api/experiments/{code}/stats")
    assert stats["finished"] == 2 and stats["participants"] == 6


async def test_ending_a_pending_experiment_cancels_every_run(any_server: Harness) -> None:
    """end on a 2-block experiment nobody came to: every participant cancelled, 0 of 2, none finished."""
    exp = await any_server.create(participants=4, group_size=2, blocks=2, period_length=30)
    code = exp["code"]
    ended = await any_server.http.post(f"/api/experiments/{code}/end")
    assert ended.status_code == 200 and ended.json()["status"] == "cancelled", ended.text
    assert await everywhere(any_server, code) == {p["code"]: ("cancelled", 0) for p in exp["participants"]}


async def test_ending_every_group_by_hand_cancels_the_experiment(any_server: Harness) -> None:
    """end?group= for each group of a pending experiment: cancelled like end on all of it, not done."""
    server = any_server
    exp = await server.create(participants=4, group_size=2, blocks=2, period_length=30)
    code = exp["code"]
    document = await get(server, f"/api/experiments/{code}/export.json")
    for group in sorted(g["id"] for g in document["groups"]):
        ended = await server.http.post(f"/api/experiments/{code}/end", params={"group": group})
        assert ended.status_code == 200 and ended.json()["groups"] == [group], ended.text
    await wait_for_status(server, code, "cancelled")
    detail = await get(server, f"/api/experiments/{code}")
    assert detail["finished_at"]
    assert await everywhere(server, code) == {p["code"]: ("cancelled", 0) for p in exp["participants"]}


async def test_what_ends_the_experiment_decides_done_or_cancelled(server: Harness) -> None:
    """One group plays to its end, the other is ended by hand: cancelled when the hand's end comes
    last, done when the last period ran its length; the statuses say who finished either way."""
    for by_hand_last in (True, False):
        exp = await server.create(participants=4, group_size=2, period_length=1.5)
        code = exp["code"]
        codes = [p["code"] for p in exp["participants"]]
        a = await server.connect(codes[0])
        hello = (await a.expect("hello"))["payload"]
        b = await server.connect(next(c for c in hello["members"] if c != codes[0]))
        other = next(c for c in codes if c not in hello["members"])
        document = await get(server, f"/api/experiments/{code}/export.json")
        their = next(g["id"] for g in document["groups"] if other in g["members"])
        await until_state(a, "period_start")
        if by_hand_last:
            await until_state(a, "period_end", wait=5)
            assert (await get(server, f"/api/experiments/{code}"))["status"] == "running"
        ended = await server.http.post(f"/api/experiments/{code}/end", params={"group": their})
        assert ended.status_code == 200 and ended.json()["groups"] == [their], ended.text
        if not by_hand_last:
            assert (await get(server, f"/api/experiments/{code}"))["status"] == "running"
            await until_state(a, "period_end", wait=5)
        await wait_for_status(server, code, "cancelled" if by_hand_last else "done")
        expected = {c: ("finished" if c in hello["members"] else "cancelled", int(c in hello["members"])) for c in codes}
        assert await everywhere(server, code) == expected
        await a.close()
        await b.close()


# --------------------------------------------------------------------------- who may read what


async def test_a_participant_reads_its_own_progress_with_its_code_and_nothing_else(server: Harness) -> None:
    exp = await server.create(participants=4, group_size=2)
    other = await server.create(participants=2, group_size=2)
    code = exp["code"]
    me, someone = exp["participants"][0]["code"], exp["participants"][1]["code"]
    stranger = other["participants"][0]["code"]
    async with httpx.AsyncClient(base_url=server.base, timeout=timeout(5)) as anonymous:
        mine = await anonymous.get(f"/api/experiments/{code}/participants", params={"participant": me})
        assert mine.status_code == 200, mine.text
        assert [r["code"] for r in mine.json()["results"]] == [me] and mine.json()["count"] == 1
        detail = await anonymous.get(f"/api/experiments/{code}/participants/{me}", params={"participant": me})
        assert detail.status_code == 200 and detail.json()["code"] == me and detail.json()["sessions"]
        refused = [
            (f"/api/experiments/{code}/participants/{someone}", {"participant": me}, 403),
            (f"/api/experiments/{code}/participants", {"participant": stranger}, 403),
            (f"/api/experiments/{code}/participants", {"participant": "x" * 24}, 403),
            (f"/api/experiments/{code}/participants/{stranger}", {"participant": stranger}, 403),
            (f"/api/experiments/{code}/participants", {}, 401),
            (f"/api/experiments/{code}/participants/{me}", {}, 401),
            (f"/api/experiments/{code}/stats", {"participant": me}, 401),
            (f"/api/experiments/{code}/events", {"participant": me}, 401),
            ("/api/experiments", {}, 401),
            # the credential is checked before the experiment is looked up
            ("/api/experiments/nope/participants", {}, 401),
            ("/api/experiments/nope/participants", {"participant": me}, 404),
        ]
        for path, params, status in refused:
            response = await anonymous.get(path, params=params)
            assert response.status_code == status, (path, params, response.text)
            assert response.json()["error"]
        for path in (f"/api/experiments/{code}/participants", f"/api/experiments/{code}/stats", "/api/experiments"):
            wrong = await anonymous.get(path, headers={"Authorization": "Bearer wrong"})
            assert wrong.status_code == 403, path
            # a participant's code with a wrong token does not get in either
            with_code = await anonymous.get(path, params={"participant": me}, headers={"Authorization": "Bearer no"})
            assert with_code.status_code == 403, path


async def test_the_experimenter_filters_by_participant_and_gets_404_for_the_unknown(server: Harness) -> None:
    exp = await server.create(participants=4, group_size=2)
    code = exp["code"]
    them = exp["participants"][2]["code"]
    one = await get(server, f"/api/experiments/{code}/participants?participant={them}")
    assert [r["code"] for r in one["results"]] == [them]
    for path in (
        f"/api/experiments/{code}/participants?participant=unknown",
        f"/api/experiments/{code}/participants/unknown",
        "/api/experiments/nope/participants",
        "/api/experiments/nope/participants/x",
        "/api/experiments/nope/stats",
        f"/api/experiments/{code}/stats?group=999999",
        f"/api/experiments/{code}/participants?group=999999",
    ):
        response = await server.http.get(path)
        assert response.status_code == 404, (path, response.text)
        assert response.json()["error"]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("exclude_unfinished=maybe", "exclude_unfinished"),
        ("group=x", "group"),
        ("group=0", "group"),
        ("group=-3", "group"),
        ("page=0", "page"),
        ("page_size=1001", "page_size"),
        ("page_size=x", "page_size"),
    ],
)
async def test_bad_query_values_are_400_naming_the_field(server: Harness, query: str, field: str) -> None:
    exp = await server.create(participants=2, group_size=2)
    for endpoint in ("participants", "stats"):
        if endpoint == "stats" and field.startswith("page"):
            continue
        response = await server.http.get(f"/api/experiments/{exp['code']}/{endpoint}?{query}")
        assert response.status_code == 400, (endpoint, query, response.text)
        assert response.json()["field"] == field


async def test_participant_pages_walk_every_participant_once(server: Harness) -> None:
    exp = await server.create(participants=6, group_size=2)
    seen: list[str] = []
    url: str | None = f"/api/experiments/{exp['code']}/participants?page_size=4"
    pages = 0
    while url is not None and pages < 10:
        body = (await server.http.get(url)).json()
        assert body["count"] == 6 and body["num_pages"] == 2
        seen.extend(r["code"] for r in body["results"])
        url = body["next"]
        pages += 1
    assert seen == [p["code"] for p in exp["participants"]]
    past = await server.http.get(f"/api/experiments/{exp['code']}/participants?page=3&page_size=4")
    assert past.status_code == 404


# --------------------------------------------------------------------------- the experiments list


async def test_experiments_are_listed_newest_first_with_pages_and_a_status_filter(server: Harness) -> None:
    made = [(await server.create())["code"] for _ in range(3)]
    body = await get(server, "/api/experiments?page_size=2")
    assert body["count"] == 3 and body["num_pages"] == 2 and body["previous"] is None
    assert [r["code"] for r in body["results"]] == made[::-1][:2]
    assert "participants" not in body["results"][0] and body["results"][0]["status"] == "pending"
    rest = (await server.http.get(body["next"])).json()
    assert [r["code"] for r in rest["results"]] == made[:1] and rest["next"] is None

    await server.http.post(f"/api/experiments/{made[0]}/end")
    await wait_for_status(server, made[0], "cancelled")
    cancelled = await get(server, "/api/experiments?status=cancelled")
    assert [r["code"] for r in cancelled["results"]] == [made[0]]
    none = await get(server, "/api/experiments?status=done")
    assert none["count"] == 0 and none["results"] == [] and none["num_pages"] == 1
    bad = await server.http.get("/api/experiments?status=finished")
    assert bad.status_code == 400 and bad.json()["field"] == "status"
    assert (await server.http.get("/api/experiments?page=3&page_size=2")).status_code == 404


async def test_each_experimenter_action_is_stored_as_a_control_event(server: Harness) -> None:
    exp = await server.create(participants=2, group_size=2, period_length=30)
    code = exp["code"]
    row, _col = [await server.connect(p["code"]) for p in exp["participants"]]
    await until_state(row, "period_start")
    hello = row.frames[0]["payload"]
    for action, params in (("pause", {}), ("resume", {"group": hello["group"]}), ("end", {})):
        response = await server.http.post(f"/api/experiments/{code}/{action}", params=params)
        assert response.status_code == 200, response.text
    await until_state(row, "period_end")
    events = await server.events(code)
    controls = [e for e in events if e["channel"] == "control"]
    assert [c["value"] for c in controls] == [
        {"action": "pause", "scope": "experiment", "by": "SYNCLAB_ADMIN_TOKEN"},
        {"action": "resume", "scope": "group", "by": "SYNCLAB_ADMIN_TOKEN"},
        {"action": "end", "scope": "experiment", "by": "SYNCLAB_ADMIN_TOKEN"},
    ]
    assert all(c["group"] == hello["group"] and c["participant"] is None for c in controls)
    # each is stored right before what it caused, in the same write
    for c in controls:
        after = next(e for e in events if e["seq"] == c["seq"] + 1)
        assert after["channel"] in ("period", "state", "result") and after["timestamp"] == c["timestamp"]
    # never sent to the participants
    assert not [f for f in row.frames if f["channel"] == "control"]


async def test_a_repeated_query_value_is_400_naming_it(server: Harness) -> None:
    exp = await server.create(participants=2, group_size=2)
    code = exp["code"]
    for path, params in (
        (f"/api/experiments/{code}/participants", [("page", "1"), ("page", "2")]),
        (f"/api/experiments/{code}/stats", [("exclude_unfinished", "true"), ("exclude_unfinished", "false")]),
        ("/api/experiments", [("status", "done"), ("status", "")]),
        (f"/api/experiments/{code}/export.csv", [("table", "events"), ("table", "results")]),
    ):
        response = await server.http.get(path, params=params)
        assert response.status_code == 400, (path, response.text)
        assert response.json()["field"] == params[0][0]


async def test_participants_times_blocks_is_bounded_at_creation(server: Harness) -> None:
    response = await server.http.post(
        "/api/experiments", json={"game": "public_goods", "participants": 1000, "group_size": 4, "blocks": 101}
    )
    assert response.status_code == 400 and response.json()["field"] == "blocks"
    assert "1000 x 101" in response.json()["error"]


@pytest.mark.parametrize("exclude_unfinished", [False, True])
def test_ranks_and_percentiles_are_their_definitions_with_many_ties(exclude_unfinished: bool) -> None:
    """Dense rank over everyone; percentile rank over the compared (excluding the unfinished: those
    who played every block themselves, none whose seat a bot held at its end): the share scoring
    below, ties counted half. Checked against the definitions, computed the slow way, on 3,000 rows
    that tie often (what a lab's integer payoffs give)."""
    rng = random.Random(7)
    rows = [
        {"code": f"p{i}", "final_score": float(rng.randint(0, 40)) + rng.choice((0.0, 0.0, 0.5)),
         "completion": {"ratio": rng.choice((0.5, 1.0, 1.0))}}
        for i in range(3000)
    ]
    bot_held = {r["code"] for r in rows if rng.random() < 0.3}
    _rank(rows, bot_held, exclude_unfinished)
    scores = sorted({r["final_score"] for r in rows}, reverse=True)
    compared = [
        r["final_score"] for r in rows
        if not exclude_unfinished or (r["completion"]["ratio"] >= 1.0 and r["code"] not in bot_held)
    ]
    for r in rows:
        score = r["final_score"]
        assert r["rank"] == scores.index(score) + 1
        below, equal = sum(s < score for s in compared), sum(s == score for s in compared)
        assert r["percentile_rank"] == pytest.approx(100.0 * (below + 0.5 * equal) / len(compared))


async def test_a_score_past_a_floats_range_is_null_in_every_answer_and_breaks_none(any_server: Harness) -> None:
    """Scores near 1e308 (a game's config with huge payoffs): one participant earned 1e308 in each
    of two blocks, another -1e308. Their sums are past a float's range: ``math.fsum`` raised
    ``OverflowError``, and the participants' list, the stats and the participant's way back
    (``/p/{code}/done``) answered 500 for the whole experiment. Now each answers: such
    a ``final_score`` is ``null`` (never a number; ``inf`` became JSON's ``null`` silently), ranked
    where its sign puts it (first, last); the mean is ``null`` with ``scores_not_finite`` saying
    why; the way back leaves ``{score}`` empty."""
    exp = await any_server.create(
        participants=4, group_size=2, blocks=2, online={"completion_url": "https://lab.example/back?score={score}"}
    )
    code, people = exp["code"], [p["code"] for p in exp["participants"]]
    engine = make_engine(any_server.runtime.settings.database_url)
    try:
        with engine.begin() as conn:
            ids = {c: i for c, i in conn.execute(select(participants.c.code, participants.c.id))}
            conn.execute(update(sessions).where(sessions.c.participant_id.in_(ids.values()))
                         .values(finished_at=datetime.now(UTC), final_score=1.0))
            conn.execute(update(sessions).where(sessions.c.participant_id == ids[people[0]]).values(final_score=1e308))
            conn.execute(update(sessions).where(sessions.c.participant_id == ids[people[1]]).values(final_score=-1e308))
    finally:
        engine.dispose()
    body = await get(any_server, f"/api/experiments/{code}/participants")
    by_code = {r["code"]: r for r in body["results"]}
    assert [by_code[c]["final_score"] for c in people] == [None, None, 2.0, 2.0]
    assert [by_code[c]["rank"] for c in people] == [1, 3, 2, 2]
    assert [by_code[c]["percentile_rank"] for c in people] == [87.5, 12.5, 50.0, 50.0]
    stats = await get(any_server, f"/api/experiments/{code}/stats")
    assert stats["mean_score"] is None and stats["scores_not_finite"] == 2 and stats["count"] == 4
    # (the exports read the participants as of the log's last seq, which these scores set by hand
    # are not in: their rows go through the same participant_progress)
    for table in ("participants", "sessions"):
        exported = await any_server.http.get(f"/api/experiments/{code}/export.csv", params={"table": table})
        assert exported.status_code == 200, exported.text
    done = await any_server.http.get(f"/p/{people[0]}/done", follow_redirects=False)
    assert done.status_code == 303, done.text
    assert done.headers["location"] == "https://lab.example/back?score="


class Huge(PublicGoods):
    """public_goods whose payoff is the largest float: three subperiods' results (each a third of
    it) sum past a float's range (found by its import path)."""

    def payoff(self, participant: str, decisions: Any) -> float:
        return sys.float_info.max


async def test_a_session_whose_results_sum_past_a_floats_range_ends_with_its_score_null(database_url: str) -> None:
    """A block's three results of a third of the largest float each: its period's end summed them
    in SQL into ``final_score``. PostgreSQL refused the sum (``value out of range: overflow``), so
    the period's end was refused and tried again and again, the group never ending; SQLite stored
    infinity, which the sessions' list and exports gave as ``null`` without notice. Now the end
    is stored, the score NULL (never infinity), and every answer says so: the sessions' and the
    participants' ``final_score`` null, the stats' ``scores_not_finite``, the way back's
    ``{score}`` empty, and ``verify`` agrees with a note."""
    async with running_server(database_url) as server:
        exp = await server.create(game=f"{__name__}:Huge", participants=2, group_size=2, period_length=0.6,
                                  num_subperiods=3, online={"completion_url": "https://lab.example/back?score={score}"})
        code, people = exp["code"], [p["code"] for p in exp["participants"]]
        for person in people:
            await server.connect(person)
        await wait_for_status(server, code, "done")
        listed = (await get(server, f"/api/experiments/{code}/sessions"))["results"]
        assert [(r["final_score"], r["finished_at"] is not None) for r in listed] == [(None, True), (None, True)]
        scored = (await get(server, f"/api/experiments/{code}/participants"))["results"]
        assert [(r["final_score"], r["rank"], r["status"]) for r in scored] == [(None, 1, "finished")] * 2
        stats = await get(server, f"/api/experiments/{code}/stats")
        assert stats["mean_score"] is None and stats["scores_not_finite"] == 2 and stats["finished"] == 2
        exported = await server.http.get(f"/api/experiments/{code}/export.csv", params={"table": "sessions"})
        assert [r["final_score"] for r in csv.DictReader(io.StringIO(exported.text))] == ["", ""]
        document = await get(server, f"/api/experiments/{code}/export.json")
        assert [r["final_score"] for r in document["sessions"]] == [None, None]
        done = await server.http.get(f"/p/{people[0]}/done", follow_redirects=False)
        assert done.status_code == 303 and done.headers["location"] == "https://lab.example/back?score="
    engine = make_engine(database_url)  # the server has stopped: everything it acknowledged is applied
    try:
        with engine.connect() as conn:
            assert list(conn.execute(select(sessions.c.final_score)).scalars()) == [None, None]  # never inf
        report = verify(engine, code)
    finally:
        engine.dispose()
    assert report.ok and report.sessions == 2 and report.results == 6, report.summary()
    assert sum("final_score null: bonus + the stored results is past a float's range" in n for n in report.notes) == 2


class HugeFlow(PublicGoods):
    """public_goods whose flow payoff is the largest float, in continuous time (found by its import path)."""

    def payoffs(self, decisions: Any) -> dict[str, float]:  # as the base class asks each member's
        return {p: self.payoff(p, decisions) for p in self.members}

    def payoff(self, participant: str, decisions: Any) -> float:
        return sys.float_info.max


async def test_a_continuous_period_whose_flow_integral_is_past_a_floats_range_scores_its_finite_average(
    database_url: str,
) -> None:
    """A flow payoff of the largest float a second for 1.5 s: its integral is past a float's range,
    its time average (the score) is not. The result and the session's score are that average,
    stored and given as a number, and ``verify`` recomputes the same. The result was ``inf``
    (its event's score ``null``, the results' CSV ``inf``), the session's score ``null``."""
    async with running_server(database_url) as server:
        exp = await server.create(game=f"{__name__}:HugeFlow", participants=2, group_size=2, period_length=1.5)
        code = exp["code"]
        for person in exp["participants"]:
            await server.connect(person["code"])
        await wait_for_status(server, code, "done")
        results = (await get(server, f"/api/experiments/{code}/results"))["results"]
        assert [r["score"] for r in results] == [sys.float_info.max] * 2, results
        listed = (await get(server, f"/api/experiments/{code}/sessions"))["results"]
        assert [r["final_score"] for r in listed] == [sys.float_info.max] * 2
        stats = await get(server, f"/api/experiments/{code}/stats")
        assert stats["scores_not_finite"] == 0
        events = [e["value"]["score"] for e in await server.events(code) if e["channel"] == "result"]
        assert events == [sys.float_info.max] * 2
    engine = make_engine(database_url)
    try:
        report = verify(engine, code)
    finally:
        engine.dispose()
    assert report.ok and report.results == 2, report.summary()
