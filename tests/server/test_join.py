"""The shared join link (issue 19): seats by label, the full and unknown pages, completion codes,
the lobby's count and timeout, the way back; and 200 arrivals at once, on one process and on two
cluster workers sharing PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import orjson
import pytest
from sqlalchemy import create_engine, select, update
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedError

from server.storage import normalise_url, participants
from tests.cluster.harness import Cluster
from tests.server.harness import Client, Harness, running_server, timeout

BACK = "https://lab.example/back?l={label}&c={code}&cc={completion_code}&s={status}&score={score}"


def online(**fields: Any) -> dict[str, Any]:
    return {"completion_url": BACK, **fields}


async def arrive(http: httpx.AsyncClient, experiment: str, label: str, param: str = "label") -> httpx.Response:
    return await http.get(f"/join/{experiment}", params={param: label}, follow_redirects=False)


def seat_of(response: httpx.Response) -> str:
    assert response.status_code == 303, response.text
    location = response.headers["location"]
    assert location.startswith("/p/"), location
    return location.removeprefix("/p/")


async def rows(http: httpx.AsyncClient, code: str) -> dict[str, dict[str, Any]]:
    response = await http.get(f"/api/experiments/{code}/participants", params={"page_size": 1000})
    assert response.status_code == 200, response.text
    return {r["code"]: r for r in response.json()["results"]}


async def frame_on(client: Client, channel: str, wait: float = 5.0) -> dict[str, Any]:
    return await client.expect(channel, wait)


async def until_present(client: Client, present: int, needed: int) -> None:
    """The lobby frames (one per arrival stored, its own included) until ``present`` are here."""
    for _ in range(needed + 1):
        payload = (await frame_on(client, "lobby"))["payload"]
        assert payload["needed"] == needed and payload["present"] <= present, payload
        if payload["present"] == present:
            return
    raise AssertionError(f"the lobby never counted {present}")


@pytest.fixture
async def served(database_url: str) -> AsyncIterator[Harness]:
    async with running_server(database_url) as harness:
        yield harness


async def test_join_seats_each_label_once_in_participant_order(served: Harness) -> None:
    """New labels take seats in participant order; a label again keeps its seat; past full: 409."""
    exp = await served.create(participants=4, group_size=2, online=online())
    codes = [p["code"] for p in exp["participants"]]
    assert exp["join_url"].endswith(f"/join/{exp['code']}")
    seats = [seat_of(await arrive(served.http, exp["code"], label)) for label in ("ann", "bob", "cy")]
    assert seats == codes[:3]
    assert seat_of(await arrive(served.http, exp["code"], "bob")) == codes[1]  # a reload
    assert seat_of(await arrive(served.http, exp["code"], "dee")) == codes[3]
    full = await arrive(served.http, exp["code"], "eve")
    assert full.status_code == 409 and "full" in full.text and full.headers["content-type"].startswith("text/html")
    assert seat_of(await arrive(served.http, exp["code"], "ann")) == codes[0]  # still, when full
    listed = await rows(served.http, exp["code"])
    assert [listed[c]["join_label"] for c in codes] == ["ann", "bob", "cy", "dee"]
    assert all(listed[c]["joined_at"] and listed[c]["status"] is None for c in codes)
    completion = [listed[c]["completion_code"] for c in codes]
    assert len(set(completion)) == 4 and all(len(c) == 10 and c.isalnum() and c.isupper() for c in completion)


async def test_join_refuses_what_it_cannot_seat(served: Harness) -> None:
    """No label: 400; a lab experiment or an unknown code: 404; a cancelled one: 410; all as pages."""
    lab = await served.create()
    exp = await served.create(online={"label_param": "PROLIFIC_PID"})
    missing = await served.http.get(f"/join/{exp['code']}", params={"label": "x"})
    assert missing.status_code == 400 and "PROLIFIC_PID" in missing.text
    # a lab experiment is not "no experiment": it exists, and is not open for online joining
    not_online = await arrive(served.http, lab["code"], "x")
    assert not_online.status_code == 404 and "not open for online joining" in not_online.text
    assert "There is no experiment" not in not_online.text
    unknown = await arrive(served.http, "nope", "x")
    assert unknown.status_code == 404 and "There is no experiment to join at this address" in unknown.text
    code = seat_of(await arrive(served.http, exp["code"], "5f1a", "PROLIFIC_PID"))
    assert code == exp["participants"][0]["code"]
    # a seat whose pre-made link was used is not handed out again
    used = await served.connect(exp["participants"][1]["code"])
    await used.expect("hello")
    assert (await arrive(served.http, exp["code"], "other", "PROLIFIC_PID")).status_code == 409
    ended = await served.http.post(f"/api/experiments/{exp['code']}/end")
    assert ended.status_code == 200, ended.text
    over = await arrive(served.http, exp["code"], "late", "PROLIFIC_PID")
    assert over.status_code == 410 and "over" in over.text
    assert seat_of(await arrive(served.http, exp["code"], "5f1a", "PROLIFIC_PID")) == code


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("lobby_timeout", -1),
        ("fill", "ghosts"),
        ("label_param", "a b"),
        ("completion_url", "https://x.example/?who={name}"),
        ("completion_url", "ftp://x.example/"),
        ("completion_url", "https://x.example/?s={score:.2f}"),
        ("dropout_after", "soon"),
    ],
)
async def test_online_settings_name_the_bad_field(served: Harness, field: str, value: Any) -> None:
    """A bad ``online`` field is a 400 that names it."""
    response = await served.http.post(
        "/api/experiments", json={"game": "bimatrix", "participants": 2, "group_size": 2, "online": {field: value}}
    )
    assert response.status_code == 400, response.text
    assert response.json()["field"] == f"online.{field}"


async def test_older_participants_get_completion_codes_lazily(served: Harness) -> None:
    """Rows made before completion codes get theirs when first listed, and the export shows them."""
    exp = await served.create(participants=2)
    assert all(r["completion_code"] for r in (await rows(served.http, exp["code"])).values())  # made with the rows
    engine = create_engine(normalise_url(served.runtime.settings.database_url))
    try:
        with engine.begin() as conn:
            conn.execute(
                update(participants)
                .where(participants.c.code.in_([p["code"] for p in exp["participants"]]))
                .values(completion_code=None)
            )
        csv = await served.http.get(f"/api/experiments/{exp['code']}/export.csv", params={"table": "participants"})
        listed = await rows(served.http, exp["code"])
        assert all(r["completion_code"] for r in listed.values())
        with engine.connect() as conn:
            stored = dict(conn.execute(select(participants.c.code, participants.c.completion_code)).all())
        assert all(stored[c] == listed[c]["completion_code"] for c in listed)
    finally:
        engine.dispose()
    header = csv.text.splitlines()[0].split(",")
    assert header[-4:] == ["join_label", "joined_at", "completion_code", "status"]
    assert all(listed[p["code"]]["completion_code"] in csv.text for p in exp["participants"])


async def test_lobby_counts_arrivals_and_the_group_starts_when_full(served: Harness) -> None:
    """The waiting members see how many are here, live; the third arrival starts the period."""
    exp = await served.create(participants=3, group_size=3, game="public_goods", period_length=30, online=online())
    clients = []
    for i, label in enumerate(("a", "b", "c")):
        code = seat_of(await arrive(served.http, exp["code"], label))
        client = await served.connect(code)
        hello = (await client.expect("hello"))["payload"]
        if i < 2:
            assert hello["lobby"] == {"present": i + 1, "needed": 3}
        for earlier in clients if i < 2 else []:
            await until_present(earlier, i + 1, 3)
        clients.append(client)
    for client in clients:
        assert (await client.expect("state"))["payload"] == "period_start"


async def test_lobby_timeout_releases_the_unfilled_group(served: Harness) -> None:
    """``fill: release``: after the timeout the group's seats are closed, the members sent back with
    ``no_group``, and the next arrival takes the next group's first seat."""
    exp = await served.create(
        participants=6, group_size=3, game="public_goods", online=online(fill="release", lobby_timeout=1.0)
    )
    codes = [p["code"] for p in exp["participants"]]
    first = [seat_of(await arrive(served.http, exp["code"], label)) for label in ("a", "b")]
    assert first == codes[:2]
    clients = [await served.connect(code) for code in first]
    for client in clients:
        await client.expect("hello")
    started = time.monotonic()
    for client in clients:
        frame = await frame_on(client, "lobby", wait=5)
        while frame["payload"].get("status") is None:  # the counts come first
            frame = await frame_on(client, "lobby", wait=5)
        assert frame["payload"]["status"] == "no_group" and "seq" in frame
    assert time.monotonic() - started < timeout(4)
    listed = await rows(served.http, exp["code"])
    assert [listed[c]["status"] for c in codes] == ["no_group"] * 3 + [None] * 3
    back = await served.http.get(f"/p/{first[0]}/done", follow_redirects=False)
    assert back.status_code == 303
    query = parse_qs(urlsplit(back.headers["location"]).query)
    assert query["s"] == ["no_group"] and query["l"] == ["a"] and query["score"] == ["0"]
    assert query["cc"] == [listed[first[0]]["completion_code"]] and query["c"] == [first[0]]
    assert seat_of(await arrive(served.http, exp["code"], "late")) == codes[3]


async def test_way_back_after_the_last_block_carries_the_score(served: Harness) -> None:
    """``/p/{code}/done``: 409 before the end, then 303 to the completion URL with status and score."""
    exp = await served.create(participants=2, group_size=2, period_length=0.6, num_subperiods=2, online=online())
    codes = [seat_of(await arrive(served.http, exp["code"], label)) for label in ("x y", "z&w")]
    early = await served.http.get(f"/p/{codes[0]}/done", follow_redirects=False)
    assert early.status_code == 409
    clients = [await served.connect(code) for code in codes]
    for client in clients:
        state = await client.expect("state")
        assert state["payload"] == "period_start"
    await clients[0].send("decisions", 1.0)
    for client in clients:
        while (await client.expect("state", wait=5))["payload"] != "period_end":
            pass
    listed = await rows(served.http, exp["code"])
    for code, label in zip(codes, ("x y", "z&w"), strict=True):
        back = None
        for _ in range(50):  # the scores are stored with the period's end; allow the writer a moment
            back = await served.http.get(f"/p/{code}/done", follow_redirects=False)
            if back.status_code == 303:
                break
            await asyncio.sleep(0.1)
        assert back is not None and back.status_code == 303, back
        location = back.headers["location"]
        assert "l=" + label.replace(" ", "%20").replace("&", "%26") in location
        query = parse_qs(urlsplit(location).query)
        assert query["s"] == ["finished"] and query["l"] == [label]
        assert float(query["score"][0]) == pytest.approx(listed[code]["final_score"], abs=1e-6)
        assert query["cc"] == [listed[code]["completion_code"]]
    lab = await served.create()
    assert (await served.http.get(f"/p/{lab['participants'][0]['code']}/done")).status_code == 404
    assert (await served.http.get("/p/unknown/done")).status_code == 404


async def test_lobby_timeout_fills_the_group_with_bots(served: Harness) -> None:
    """``fill: bots``: after the timeout the empty seats are the bots' (status ``bot``) and the period starts."""
    exp = await served.create(
        participants=3, group_size=3, game="public_goods", period_length=30, online=online(fill="bots", lobby_timeout=1.0)
    )
    code = seat_of(await arrive(served.http, exp["code"], "alone"))
    client = await served.connect(code)
    await client.expect("hello")
    assert (await client.expect("state", wait=5))["payload"] == "period_start"
    listed = await rows(served.http, exp["code"])
    assert sorted(str(r["status"]) for r in listed.values()) == ["None", "bot", "bot"]
    assert (await arrive(served.http, exp["code"], "late")).status_code == 409


# --------------------------------------------------------------------------- 200 at once

ARRIVALS = 200
#: across two cluster workers: fewer (the seats' safety across processes is the point; the two
#: workers' start and their cluster traffic cost the suite's time)
CLUSTER_ARRIVALS = 80


async def _crowd(bases: list[str], experiment: str, codes: list[str]) -> None:
    """``len(codes)`` labels arrive within a second over ``bases`` (round robin), each opens its
    socket; then every label again (a reload), and 20 more past full."""
    count = len(codes)
    labels = [f"prolific-{i:03d}" for i in range(count)]
    # idle connections are dropped before the server's keep-alive (5 s) closes them: a request
    # sent on one the server is closing at that moment would fail to read its answer
    limits = httpx.Limits(max_connections=100, keepalive_expiry=1.0)
    clients = [httpx.AsyncClient(base_url=b, limits=limits, timeout=timeout(20)) for b in bases]
    try:
        async def one(i: int, label: str) -> str:
            await asyncio.sleep(i / count)  # spread over one second
            code = seat_of(await arrive(clients[i % len(clients)], experiment, label))
            for attempt in range(5):  # as the page does: a socket closed 1013 (try again later) connects again
                ws_base = bases[(i + 1 + attempt) % len(bases)].replace("http://", "ws://")
                try:
                    async with connect(f"{ws_base}/ws/p/{code}", open_timeout=timeout(20)) as ws:
                        async with asyncio.timeout(timeout(20)):
                            while True:
                                frame = orjson.loads(await ws.recv())
                                if frame["channel"] == "hello":
                                    assert frame["payload"]["participant"] == code
                                    return code
                except ConnectionClosedError as exc:
                    if exc.rcvd is None or exc.rcvd.code != 1013:
                        raise
                    await asyncio.sleep(0.2)
            raise AssertionError(f"{code}: no hello in 5 connections")

        started = time.monotonic()
        seated = await asyncio.gather(*(one(i, label) for i, label in enumerate(labels)))
        elapsed = time.monotonic() - started
        assert len(set(seated)) == count and set(seated) == set(codes), "every label seated exactly once"
        again = await asyncio.gather(
            *(arrive(clients[(i + 1) % len(clients)], experiment, label) for i, label in enumerate(labels))
        )
        assert [seat_of(r) for r in again] == seated, "a reload keeps the seat"
        late = await asyncio.gather(*(arrive(clients[i % len(clients)], experiment, f"late-{i}") for i in range(20)))
        assert all(r.status_code == 409 for r in late)
        print(f"{count} arrivals with their sockets in {elapsed:.2f} s over {len(bases)} process(es)")
    finally:
        for client in clients:
            await client.aclose()


async def test_200_arrivals_at_once_are_seated_once_each(database_url: str) -> None:
    """One process (SQLite and PostgreSQL): 200 arrivals within a second, their sockets, reloads, 20 too many."""
    async with running_server(database_url) as harness:
        exp = await harness.create(participants=ARRIVALS, group_size=2, period_length=600, online=online())
        await _crowd([harness.base], exp["code"], [p["code"] for p in exp["participants"]])


async def test_arrivals_on_two_cluster_workers(tmp_path: Path, postgres_url: str, redis_url: str, redis_prefix: str) -> None:
    """Two ``synclab serve`` workers on one PostgreSQL: 80 arrivals within a second, half on each,
    share the seats; nobody is seated twice."""
    cluster = Cluster(tmp_path, postgres_url, redis_url, redis_prefix)
    try:
        cluster.start("a")
        cluster.start("b")
        await asyncio.to_thread(cluster.healthy, "a", "b")
        async with cluster.http("a") as http:
            response = await http.post(
                "/api/experiments",
                json={"game": "bimatrix", "participants": CLUSTER_ARRIVALS, "group_size": 2, "period_length": 600,
                      "online": online()},
            )
            assert response.status_code == 201, response.text
            exp = response.json()
        await _crowd([w.base for w in cluster.workers.values()], exp["code"], [p["code"] for p in exp["participants"]])
    finally:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(cluster.stop_all)
    for name in cluster.workers:  # no worker failed on anything along the way
        assert "Traceback" not in cluster.logs(name), cluster.logs(name)


async def _hello(ws_url: str, tries: int = 40) -> tuple[Any, dict[str, Any], float]:
    """A socket that got its ``hello`` (connecting again after 1013 or a refused handshake), and when."""
    for _ in range(tries):
        try:
            ws = await connect(ws_url, open_timeout=timeout(5))
        except OSError:
            await asyncio.sleep(0.25)
            continue
        try:
            async with asyncio.timeout(timeout(10)):
                while True:
                    frame = orjson.loads(await ws.recv())
                    if frame["channel"] == "hello":
                        return ws, frame["payload"], time.time()
        except ConnectionClosedError:
            await ws.close()
            await asyncio.sleep(0.25)
    raise AssertionError(f"no hello from {ws_url}")


async def test_lobby_timeout_runs_at_the_authority_from_the_stored_arrival(
    tmp_path: Path, postgres_url: str, redis_url: str, redis_prefix: str
) -> None:
    """Cluster: joined through one worker, waiting on another that is killed; the worker that takes the
    group over releases it at the stored arrival time plus ``lobby_timeout``, not that long after it took over."""
    cluster = Cluster(tmp_path, postgres_url, redis_url, redis_prefix)
    lobby_timeout = 4.0
    try:
        cluster.start("a")
        cluster.start("b")
        await asyncio.to_thread(cluster.healthy, "a", "b")
        async with cluster.http("b") as http:
            response = await http.post(
                "/api/experiments",
                json={"game": "public_goods", "participants": 3, "group_size": 3,
                      "online": online(fill="release", lobby_timeout=lobby_timeout)},
            )
            assert response.status_code == 201, response.text
            exp = response.json()
            code = seat_of(await arrive(http, exp["code"], "solo"))
            joined = time.time()
        a, b = cluster.workers["a"], cluster.workers["b"]
        ws, hello, _ = await _hello(f"{a.ws}/ws/p/{code}")  # the group's authority: a
        assert hello["lobby"] == {"present": 1, "needed": 3}
        await asyncio.sleep(0.5)
        cluster.signal("a", signal.SIGKILL)
        await asyncio.to_thread(cluster.wait, "a")
        with contextlib.suppress(Exception):
            await ws.close()
        ws, hello, back_at = await _hello(f"{b.ws}/ws/p/{code}")
        try:
            async with asyncio.timeout(timeout(15)):
                while True:
                    frame = orjson.loads(await ws.recv())
                    if frame["channel"] == "lobby" and frame["payload"].get("status") == "no_group":
                        break
        finally:
            await ws.close()
        released_at = frame["ts"] / 1000
        assert released_at >= joined + lobby_timeout - 0.5, "not before the timeout"
        assert released_at < back_at + lobby_timeout - 0.5, "from the stored arrival, not from the takeover"
        async with cluster.http("b") as http:
            listed = await rows(http, exp["code"])
        assert sorted(str(r["status"]) for r in listed.values()) == ["no_group"] * 3
    finally:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(cluster.stop_all)
    assert "Traceback" not in cluster.logs("b"), cluster.logs("b")


async def test_a_label_with_a_control_character_is_refused(served: Harness) -> None:
    """NUL (which PostgreSQL refuses in text: a 500), a newline, a tab, a right-to-left override:
    400, nothing seated; letters of any script are a label like any other."""
    exp = await served.create(online=online())
    for label in ("a\x00b", "a\nb", "a\tb", "abc\u202edef"):
        refused = await arrive(served.http, exp["code"], label)
        assert refused.status_code == 400, (label, refused.status_code)
    assert all(r["join_label"] is None for r in (await rows(served.http, exp["code"])).values())
    assert seat_of(await arrive(served.http, exp["code"], "José 李")) == exp["participants"][0]["code"]


async def test_a_dropouts_run_is_not_over_while_a_bot_plays_their_seat(served: Harness) -> None:
    """Dropped mid-period (a bot plays on), the run is not over: ``/p/{code}/done`` is 409 and the
    participant's own code does not read its completion code (the experimenter's does). Once the
    period ended, both come: the way back says ``dropped``."""
    exp = await served.create(participants=2, group_size=2, period_length=4, online=online(dropout_after=0.3))
    left, stays = [seat_of(await arrive(served.http, exp["code"], label)) for label in ("left", "stays")]
    clients = [await served.connect(code) for code in (left, stays)]
    for client in clients:
        while (await client.expect("state"))["payload"] != "period_start":
            pass
    own = f"/api/experiments/{exp['code']}/participants/{left}"
    await clients[0].close()
    for _ in range(50):  # the bot takes the seat dropout_after (0.3 s) after the socket went
        if (await rows(served.http, exp["code"]))[left]["status"] == "dropped":
            break
        await asyncio.sleep(0.1)
    assert (await rows(served.http, exp["code"]))[left]["status"] == "dropped"
    assert (await served.http.get(f"/p/{left}/done", follow_redirects=False)).status_code == 409
    anonymous = httpx.AsyncClient(base_url=served.base)
    try:
        mine = await anonymous.get(own, params={"participant": left})
        assert mine.status_code == 200 and mine.json()["completion_code"] is None, mine.text
        listed = await anonymous.get(f"/api/experiments/{exp['code']}/participants", params={"participant": left})
        assert [r["completion_code"] for r in listed.json()["results"]] == [None]
        code = (await rows(served.http, exp["code"]))[left]["completion_code"]
        assert code
        while (await clients[1].expect("state", wait=8))["payload"] != "period_end":
            pass
        for _ in range(50):  # the end's statuses are stored with the period's end
            back = await served.http.get(f"/p/{left}/done", follow_redirects=False)
            if back.status_code == 303:
                break
            await asyncio.sleep(0.1)
        assert back.status_code == 303, back.text
        query = parse_qs(urlsplit(back.headers["location"]).query)
        assert query["s"] == ["dropped"] and query["cc"] == [code]
        assert (await anonymous.get(own, params={"participant": left})).json()["completion_code"] == code
    finally:
        await anonymous.aclose()
