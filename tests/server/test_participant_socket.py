"""The participant WebSocket, CONTRACT section 3: frames, rules and the otree-redwood route.

Every test runs a real server (uvicorn on port 0) and talks to it over real WebSockets. The
stored events are read back through the REST API: what a participant has seen must be stored,
and a refused frame must store nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from server import clientids
from tests.server.harness import Client, Harness, eventually, running_server, timeout

HELLO_KEYS = {
    "participant",
    "group",
    "members",
    "role",
    "block",
    "phase",
    "group_decisions",
    "period",
    "server_time",
    "last_seq",
}
PERIOD_KEYS = {"started_at", "ends_at", "subperiod", "num_subperiods"}


# --------------------------------------------------------------------------- helpers


def now_ms() -> int:
    return int(time.time() * 1000)


def codes_of(exp: dict[str, Any]) -> list[str]:
    return [p["code"] for p in exp["participants"]]


def redwood_path(game: str, group: int | str, code: str) -> str:
    return f"/redwood/app-name/{game}/group/{group}/participant/{code}/"


async def join(server: Harness, code: str, path: str | None = None) -> tuple[Client, dict[str, Any]]:
    """Connect on ``/ws/p/{code}`` and read the ``hello`` that must come first."""
    client = await server.connect(code, path)
    hello = await client.next()
    assert hello["channel"] == "hello", f"expected hello as the first frame, got {hello}"
    return client, hello["payload"]


async def running_group(
    server: Harness, **body: Any
) -> tuple[dict[str, Any], list[str], list[Client], list[dict[str, Any]]]:
    """Create an experiment, connect every participant, and wait for every period to start.

    Returns the experiment, the codes, the clients and each client's ``period_start`` frame;
    each client has read its hello, its ``state`` and the first ``group_decisions``.
    """
    exp = await server.create(**body)
    codes = codes_of(exp)
    clients = [(await join(server, code))[0] for code in codes]
    starts = []
    for client in clients:
        state = await client.expect("state")
        assert state["payload"] == "period_start"
        starts.append(state)
        await client.expect("group_decisions")
    return exp, codes, clients, starts


async def decide(client: Client, value: Any, frame_id: str) -> int:
    """Send a decision with ``frame_id``; the ``seq`` of its ack."""
    await client.send("decisions", value, frame_id=frame_id)
    return await ack_of(client, frame_id)


async def ack_of(client: Client, frame_id: str) -> int:
    async with asyncio.timeout(timeout(5)):
        while True:
            frame = await client.expect("ack")
            if frame["payload"]["id"] == frame_id:
                seq: int = frame["payload"]["seq"]
                return seq


async def decisions_where(client: Client, check: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """Skip ``group_decisions`` frames until one whose payload passes ``check``."""
    async with asyncio.timeout(timeout(5)):
        while True:
            frame = await client.expect("group_decisions")
            if check(frame["payload"]):
                return frame


async def close_code(client: Client, wait: float = 5.0) -> int:
    """Read frames until the server closes the socket; the close code it sent."""
    async with asyncio.timeout(timeout(wait)):
        while True:
            try:
                await client.next(wait)
            except ConnectionClosed as exc:
                assert exc.rcvd is not None, f"closed without a close frame: {exc}"
                return exc.rcvd.code


async def handshake_status(server: Harness, path: str) -> int:
    """The HTTP status of a refused handshake (fails the test if the handshake succeeds)."""
    with pytest.raises(InvalidStatus) as refused:
        ws = await connect(f"{server.ws_base}{path}", open_timeout=timeout(5))
        await ws.close()
    return refused.value.response.status_code


def stored(events: list[dict[str, Any]], channel: str, participant: str | None = None) -> list[dict[str, Any]]:
    return [
        e for e in events if e["channel"] == channel and (participant is None or e["participant"] == participant)
    ]


def group_view(server: Harness, group_id: int) -> Any:
    """The group as this process's connections see it (its members here: ``current``)."""
    return server.runtime.groups.views[group_id]


def group_of(server: Harness, code: str) -> Any:
    """The live group in this process that ``code`` is a member of."""
    return next(g for g in server.runtime.groups.groups.values() if code in g.member_ids)


def live_group(server: Harness, group_id: int) -> Any:
    """The group's authority in this process."""
    return server.runtime.groups.groups[group_id]


# --------------------------------------------------------------------------- the page and the handshake


async def test_the_participant_page_is_served_at_p_code(server: Harness) -> None:
    """GET /p/{code} answers 200 with an HTML page."""
    exp = await server.create()
    response = await server.http.get(f"/p/{codes_of(exp)[0]}")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")


async def test_an_unknown_code_is_refused_with_403_at_the_handshake(server: Harness) -> None:
    """A code that names no participant never gets a socket: the handshake fails with 403."""
    await server.create()
    assert await handshake_status(server, "/ws/p/no-such-code") == 403


# --------------------------------------------------------------------------- hello


async def test_hello_is_the_first_frame_with_every_documented_key_before_the_period_starts(server: Harness) -> None:
    """Before the start hello says waiting, no decisions, no period; roles follow member order."""
    exp = await server.create()
    a_code, b_code = codes_of(exp)
    a, a_hello = await join(server, a_code)
    assert set(a_hello) >= HELLO_KEYS
    assert a_hello["participant"] == a_code
    assert isinstance(a_hello["group"], int)
    assert a_hello["members"] == [a_code, b_code]
    assert a_hello["role"] == "row"
    assert a_hello["block"] == 0
    assert a_hello["phase"] == "waiting"
    assert a_hello["group_decisions"] is None
    assert a_hello["period"] is None
    assert isinstance(a_hello["server_time"], int)
    assert abs(a_hello["server_time"] - now_ms()) < 2000
    assert a_hello["last_seq"] == 0

    b, b_hello = await join(server, b_code)  # this connection starts the period, after its hello
    assert set(b_hello) >= HELLO_KEYS
    assert b_hello["participant"] == b_code
    assert b_hello["group"] == a_hello["group"]
    assert b_hello["members"] == [a_code, b_code]
    assert b_hello["role"] == "col"
    assert b_hello["phase"] == "waiting"
    assert b_hello["period"] is None
    for client in (a, b):
        assert (await client.next())["payload"] == "period_start"


async def test_hello_after_the_period_start_carries_the_running_period_and_decisions(server: Harness) -> None:
    """A connection after the start gets phase running, the period times and the decisions."""
    exp, (a_code, b_code), (a, _), starts = await running_group(server, period_length=60)
    start = starts[0]
    assert isinstance(start["seq"], int) and isinstance(start["ts"], int)
    assert abs(start["ts"] - now_ms()) < 5000
    await a.close()
    _, hello = await join(server, a_code)
    assert set(hello) >= HELLO_KEYS
    assert hello["participant"] == a_code
    assert hello["role"] == "row"
    assert hello["members"] == [a_code, b_code]
    assert hello["phase"] == "running"
    assert hello["group_decisions"] == {a_code: 0.5, b_code: 0.5}
    period = hello["period"]
    assert set(period) >= PERIOD_KEYS
    assert period["started_at"] == start["ts"]
    assert abs(period["ends_at"] - (period["started_at"] + 60_000)) <= 1
    assert period["subperiod"] is None
    assert period["num_subperiods"] is None
    events = await server.events(exp["code"])
    assert hello["last_seq"] == events[-1]["seq"]
    assert abs(hello["server_time"] - now_ms()) < 2000


async def test_hello_reports_the_number_of_subperiods_of_the_block(server: Harness) -> None:
    """With num_subperiods set, hello's period carries it."""
    _, (a_code, _), (a, _), _ = await running_group(server, period_length=40, num_subperiods=4)
    await a.close()
    _, hello = await join(server, a_code)
    assert hello["period"]["num_subperiods"] == 4


async def test_a_public_goods_member_has_the_player_role(server: Harness) -> None:
    """hello's role comes from the game: public_goods calls everyone 'player'."""
    exp = await server.create(game="public_goods", participants=3, group_size=3)
    _, hello = await join(server, codes_of(exp)[2])
    assert hello["role"] == "player"
    assert hello["members"] == codes_of(exp)


# --------------------------------------------------------------------------- state and period_start


async def test_period_start_is_sent_once_only_when_all_three_members_are_connected(server: Harness) -> None:
    """A public_goods group of 3 starts when its third member connects, and only once."""
    exp = await server.create(game="public_goods", participants=3, group_size=3)
    codes = codes_of(exp)
    a, _ = await join(server, codes[0])
    b, _ = await join(server, codes[1])
    assert await a.silent(0.3)
    assert await b.silent(0.05)
    c, _ = await join(server, codes[2])
    starts = []
    for client in (a, b, c):
        state = await client.next()
        assert state["channel"] == "state" and state["payload"] == "period_start"
        starts.append(state)
        gd = await client.next()
        assert gd["channel"] == "group_decisions"
        assert gd["payload"] == dict.fromkeys(codes, 0.0)
    assert len({s["seq"] for s in starts}) == 1
    await a.close()  # a reconnect repeats the state to the newcomer only, never to the group
    a2, _ = await join(server, codes[0])
    assert (await a2.next())["seq"] == starts[0]["seq"]
    assert await b.silent(0.3)
    assert await c.silent(0.05)
    events = await server.events(exp["code"])
    assert len([e for e in stored(events, "state") if e["value"] == "period_start"]) == 1


async def test_a_member_who_left_before_the_others_arrived_keeps_the_period_from_starting(server: Harness) -> None:
    """period_start needs every member connected at the same time, not just once each."""
    exp = await server.create(game="public_goods", participants=3, group_size=3)
    codes = codes_of(exp)
    a, hello = await join(server, codes[0])
    b, _ = await join(server, codes[1])
    await a.close()
    group = group_view(server, hello["group"])
    await eventually(lambda: codes[0] not in group.current)
    c, _ = await join(server, codes[2])
    assert await b.silent(0.3)
    assert await c.silent(0.05)
    a2, _ = await join(server, codes[0])
    for client in (a2, b, c):
        assert (await client.expect("state"))["payload"] == "period_start"


async def test_a_participant_who_connects_after_a_forced_start_gets_the_original_state_frame(server: Harness) -> None:
    """state is repeated on connect: the latecomer gets period_start with the original seq and ts."""
    exp = await server.create()
    a_code, b_code = codes_of(exp)
    a, hello = await join(server, a_code)
    await live_group(server, hello["group"]).start()  # the experimenter forces the start
    original = await a.expect("state")
    assert original["payload"] == "period_start"
    b, b_hello = await join(server, b_code)
    assert b_hello["phase"] == "running"
    assert b_hello["period"]["started_at"] == original["ts"]
    state = await b.next()
    assert state == original
    gd = await b.next()
    assert gd["channel"] == "group_decisions"
    assert gd["payload"] == {a_code: 0.5, b_code: 0.5}
    await a.expect("group_decisions")
    assert await a.silent(0.3)  # B's arrival does not start the period again
    events = await server.events(exp["code"])
    assert len(stored(events, "state")) == 1


async def test_after_the_period_ends_a_new_connection_gets_state_period_end_and_decisions_are_refused(
    server: Harness,
) -> None:
    """The last state repeated on connect is period_end once the period is over."""
    _, (a_code, _), (a, b), _ = await running_group(server, period_length=0.5)
    end = await a.expect("state", wait=5)
    assert end["payload"] == "period_end"
    assert (await b.expect("state"))["seq"] == end["seq"]
    await a.close()
    again, hello = await join(server, a_code)
    assert hello["phase"] == "ended"
    assert await again.next() == end
    await again.send("decisions", 1, frame_id="late")
    refused = await again.expect("error")
    assert refused["payload"]["code"] == "not_running"


# --------------------------------------------------------------------------- group_decisions and reconnects


async def test_group_decisions_are_resent_on_reconnect_with_the_current_decisions(server: Harness) -> None:
    """Unlike otree-redwood, a reconnecting participant is sent the group's current decisions."""
    _, (a_code, b_code), (a, b), _ = await running_group(server)
    await decide(a, 1, "a1")
    await decide(b, 0, "b1")
    await a.close()
    again, hello = await join(server, a_code)
    assert hello["group_decisions"] == {a_code: 1.0, b_code: 0.0}
    assert (await again.next())["payload"] == "period_start"
    gd = await again.next()
    assert gd["channel"] == "group_decisions"
    assert gd["payload"] == {a_code: 1.0, b_code: 0.0}


async def test_a_reconnecting_participant_gets_last_seq_of_the_last_event_it_saw(server: Harness) -> None:
    """hello's last_seq is the seq of the last group frame the participant received."""
    _, (a_code, b_code), (a, _), _ = await running_group(server)
    await a.send("decisions", 1, frame_id="a1")
    seen = await decisions_where(a, lambda d: d[a_code] == 1)
    await ack_of(a, "a1")
    await a.close()
    _, hello = await join(server, a_code)
    assert hello["last_seq"] == seen["seq"]
    assert hello["group_decisions"] == seen["payload"] == {a_code: 1.0, b_code: 0.5}


async def test_a_participant_reconnecting_after_missing_a_decision_gets_it_in_hello(server: Harness) -> None:
    """A decision made while a member was away is in its next hello, with its seq as last_seq."""
    _, (a_code, b_code), (a, b), starts = await running_group(server)
    await a.close()
    await b.send("decisions", 0.25, frame_id="b1")
    seen_by_b = await decisions_where(b, lambda d: d[b_code] == 0.25)
    again, hello = await join(server, a_code)
    assert hello["last_seq"] == seen_by_b["seq"] > starts[0]["seq"]
    assert hello["group_decisions"] == {a_code: 0.5, b_code: 0.25}
    await again.expect("group_decisions")


# --------------------------------------------------------------------------- ack and client ids


async def test_a_frame_with_an_id_is_acknowledged_with_the_seq_it_was_stored_under(server: Harness) -> None:
    """ack {"id", "seq"} follows a frame with an id; the seq names the stored decision."""
    exp, (a_code, b_code), (a, b), _ = await running_group(server)
    await a.send("decisions", 1, frame_id="d-1")
    gd = await decisions_where(a, lambda d: d[a_code] == 1)
    ack = await a.expect("ack")
    assert ack["payload"] == {"id": "d-1", "seq": ack["payload"]["seq"]}
    seq = ack["payload"]["seq"]
    assert isinstance(seq, int) and seq < gd["seq"]
    events = await server.events(exp["code"])
    mine = [e for e in events if e["seq"] == seq]
    assert len(mine) == 1
    assert mine[0]["channel"] == "decisions"
    assert mine[0]["participant"] == a_code
    assert mine[0]["value"] == 1
    # without an id there is no ack
    await b.send("decisions", 0)
    await decisions_where(b, lambda d: d[b_code] == 0)
    assert await b.silent(0.3)


async def test_a_repeated_id_is_acknowledged_again_with_the_first_seq_and_stored_once(server: Harness) -> None:
    """Retrying a frame id (even with another value) answers the first seq and stores nothing."""
    exp, (a_code, _), (a, b), _ = await running_group(server)
    first = await decide(a, 1, "retry-me")
    await decisions_where(b, lambda d: d[a_code] == 1)
    before = await server.events(exp["code"])
    assert await decide(a, 0, "retry-me") == first
    assert await b.silent(0.3)  # the retry is not broadcast again
    assert await server.events(exp["code"]) == before
    assert len(stored(before, "decisions", a_code)) == 1


async def test_a_repeated_id_sent_twice_at_once_is_stored_once(server: Harness) -> None:
    """Two frames with the same id in flight together get the same seq; one is stored."""
    exp, (a_code, _), (a, _), _ = await running_group(server)
    await a.send("decisions", 1, frame_id="twice")
    await a.send("decisions", 0, frame_id="twice")
    seqs = [await ack_of(a, "twice"), await ack_of(a, "twice")]
    assert seqs[0] == seqs[1]
    events = await server.events(exp["code"])
    assert [e["value"] for e in stored(events, "decisions", a_code)] == [1]


async def test_a_repeated_id_after_a_reconnect_is_acknowledged_with_the_first_seq(server: Harness) -> None:
    """A retry after a reconnect (the safe-retry case) answers the first seq and stores once."""
    exp, (a_code, b_code), (a, _), _ = await running_group(server)
    first = await decide(a, 1, "across")
    await a.close()
    again, hello = await join(server, a_code)
    before = await server.events(exp["code"])
    assert await decide(again, 0, "across") == first
    assert await server.events(exp["code"]) == before
    assert len(stored(before, "decisions", a_code)) == 1
    await again.close()
    _, hello = await join(server, a_code)
    assert hello["group_decisions"] == {a_code: 1.0, b_code: 0.5}


async def test_a_repeat_of_an_old_id_is_answered_from_the_database(
    server: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the ids a group keeps as they are (``KEPT``; two here), a repeat is looked up in the
    database and answered with the first seq, nothing stored or broadcast; new ids go on as ever."""
    monkeypatch.setattr(clientids, "KEPT", 2)
    exp, (a_code, _), (a, b), _ = await running_group(server)
    seqs = [await decide(a, i / 10, f"old-{i}") for i in range(8)]
    assert seqs == sorted(set(seqs))
    ids = group_of(server, a_code).client_ids[a_code]
    assert ids.get("old-0") is clientids.MAYBE and ids.get("old-7") == seqs[7]
    await decisions_where(b, lambda d: d[a_code] == 0.7)
    before = await server.events(exp["code"])
    for i in (0, 3, 7):
        assert await decide(a, 0.25, f"old-{i}") == seqs[i]
    assert await b.silent(0.3)  # none of the repeats is broadcast
    assert await server.events(exp["code"]) == before
    assert len(stored(before, "decisions", a_code)) == 8
    assert await decide(a, 0.75, "new-after") > seqs[-1]
    assert [e["value"] for e in stored(await server.events(exp["code"]), "decisions", a_code)][-1] == 0.75


async def test_a_repeat_of_an_old_id_after_a_restart_is_answered_from_the_database(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restarted server loads a member's ids from the database (the newest kept as they are, the
    older in the filter): a repeat of an old one is answered with its first seq, on SQLite and PostgreSQL."""
    monkeypatch.setattr(clientids, "KEPT", 2)
    async with running_server(database_url) as server:
        exp, (a_code, _), (a, _), _ = await running_group(server)
        seqs = [await decide(a, i / 10, f"kept-{i}") for i in range(6)]
        before = await server.events(exp["code"])
    async with running_server(database_url) as server:
        again, _ = await join(server, a_code)
        ids = group_of(server, a_code).client_ids[a_code]
        assert ids.get("kept-0") is clientids.MAYBE and ids.get("kept-5") == seqs[5]
        assert await decide(again, 0.9, "kept-0") == seqs[0]
        assert await decide(again, 0.9, "kept-5") == seqs[5]
        assert await server.events(exp["code"]) == before


async def test_an_id_the_filter_mistakes_for_an_old_one_is_stored_as_new(
    server: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The filter of old ids may say "maybe" of an id never sent: the database says it is new, and
    the frame is stored once. Here the filter says it of every id (no bit tested)."""
    monkeypatch.setattr(clientids, "KEPT", 2)
    monkeypatch.setattr(clientids, "_mask", lambda h: 0)  # (PROBES is written out in _mask: none of its bits)
    exp, (a_code, _), (a, b), _ = await running_group(server)
    seqs = [await decide(a, i % 2, f"id-{i}") for i in range(10)]
    assert seqs == sorted(set(seqs))
    group = group_of(server, a_code)
    assert group.client_ids[a_code].get("never-sent") is clientids.MAYBE
    await a.send("decisions", 0.5, frame_id="twice-new")  # looked up, then received, once
    await a.send("decisions", 0.5, frame_id="twice-new")
    twice = await ack_of(a, "twice-new")
    assert await ack_of(a, "twice-new") == twice > seqs[-1]
    assert await decide(a, 0, "id-1") == seqs[1]  # an old one still answered with its first seq
    # frames sent at once while one is looked up keep their order (each one is looked up in turn)
    burst = [(f"burst-{i}", round(0.1 * (i + 1), 1)) for i in range(4)]
    for frame_id, value in burst:
        await a.send("decisions", value, frame_id=frame_id)
    acked = [await ack_of(a, frame_id) for frame_id, _ in burst]
    assert acked == sorted(acked) and acked[0] > twice
    await decisions_where(b, lambda d: d[a_code] == 0.4)
    events = stored(await server.events(exp["code"]), "decisions", a_code)
    assert [e["seq"] for e in events] == [*seqs, twice, *acked]
    assert [e["value"] for e in events][-4:] == [0.1, 0.2, 0.3, 0.4]
    assert not group._looking and not group._held


async def test_another_participant_may_use_the_same_id_string_independently(server: Harness) -> None:
    """Client ids are per participant: the same string from two members stores two decisions."""
    exp, (a_code, b_code), (a, b), _ = await running_group(server)
    seq_a = await decide(a, 1, "same")
    seq_b = await decide(b, 0, "same")
    assert seq_a != seq_b
    events = await server.events(exp["code"])
    assert [e["seq"] for e in stored(events, "decisions")] == [seq_a, seq_b]
    assert (await decisions_where(a, lambda d: d[b_code] == 0))["payload"] == {a_code: 1.0, b_code: 0.0}


async def test_an_id_of_64_characters_is_accepted(server: Harness) -> None:
    """The longest id the contract allows is acknowledged."""
    _, _, (a, _), _ = await running_group(server)
    long_id = "x" * 64
    assert isinstance(await decide(a, 1, long_id), int)


# --------------------------------------------------------------------------- refused frames

BAD_FRAMES: list[tuple[str, str, str]] = [
    # (name, raw text, expected error code); a refused frame with a valid id gets it echoed
    ("not_json", "{not json", "bad_json"),
    ("truncated_json", '{"channel": "decisions", "payload": ', "bad_json"),
    ("nan_literal", '{"channel": "decisions", "payload": NaN}', "bad_json"),
    ("infinite_number", '{"channel": "decisions", "payload": 1e400}', "bad_json"),
    ("deeply_nested", "[" * 5_000 + "]" * 5_000, "bad_json"),
    ("array", "[1, 2]", "bad_frame"),
    ("string", '"decisions"', "bad_frame"),
    ("number", "7", "bad_frame"),
    ("null", "null", "bad_frame"),
    ("missing_channel", '{"payload": 1}', "bad_frame"),
    ("channel_not_a_string", '{"channel": 5, "payload": 1}', "bad_frame"),
    ("empty_channel", '{"channel": "", "payload": 1}', "bad_frame"),
    ("missing_payload", '{"channel": "decisions"}', "bad_frame"),
    ("id_a_number", '{"channel": "decisions", "payload": 1, "id": 7}', "bad_id"),
    ("id_an_object", '{"channel": "decisions", "payload": 1, "id": {"a": 1}}', "bad_id"),
    ("id_65_chars", orjson.dumps({"channel": "decisions", "payload": 1, "id": "x" * 65}).decode(), "bad_id"),
    # PostgreSQL's text columns refuse a NUL: refused here, not by the writer's failed batch
    ("id_with_nul", orjson.dumps({"channel": "decisions", "payload": 1, "id": "a\u0000b"}).decode(), "bad_id"),
    ("unknown_channel", '{"channel": "chat", "payload": "hi", "id": "u1"}', "unknown_channel"),
    ("decision_2", '{"channel": "decisions", "payload": 2, "id": "v1"}', "invalid_decision"),
    ("decision_negative", '{"channel": "decisions", "payload": -0.1, "id": "v2"}', "invalid_decision"),
    ("decision_string", '{"channel": "decisions", "payload": "x", "id": "v3"}', "invalid_decision"),
    ("decision_bool", '{"channel": "decisions", "payload": true, "id": "v4"}', "invalid_decision"),
    ("decision_null", '{"channel": "decisions", "payload": null, "id": "v5"}', "invalid_decision"),
    ("decision_list", '{"channel": "decisions", "payload": [1], "id": "v6"}', "invalid_decision"),
    # nested 1,000 deep (orjson reads up to 1,024): repr() of it raised RecursionError (game_error)
    ("decision_nested", '{"channel": "decisions", "payload": ' + "[" * 1_000 + "]" * 1_000 + ', "id": "v7"}', "bad_frame"),
    ("id_nested", '{"channel": "decisions", "payload": 1, "id": ' + "[" * 1_000 + "]" * 1_000 + "}", "bad_id"),
    ("channel_nested", '{"payload": 1, "channel": ' + "[" * 1_000 + "]" * 1_000 + "}", "bad_frame"),
    ("too_large", orjson.dumps({"channel": "decisions", "payload": "x" * 20_000}).decode(), "too_large"),
    # 5,000 characters but 20,000 bytes: the limit is in bytes
    ("too_large_in_bytes", orjson.dumps({"channel": "decisions", "payload": "\U0001f600" * 5_000}).decode(), "too_large"),
]


@pytest.mark.parametrize(("raw", "code"), [(raw, code) for _, raw, code in BAD_FRAMES], ids=[n for n, _, _ in BAD_FRAMES])
async def test_a_refused_frame_gets_an_error_and_changes_nothing(server: Harness, raw: str, code: str) -> None:
    """The error frame names the fault; the socket stays open, nothing is stored, play goes on."""
    exp, (a_code, b_code), (a, b), _ = await running_group(server)
    before = await server.events(exp["code"])
    await a.send_raw(raw)
    frame = await a.next()
    assert frame["channel"] == "error", frame
    assert frame["payload"]["code"] == code
    assert isinstance(frame["payload"]["message"], str) and frame["payload"]["message"]
    sent = orjson.loads(raw) if code not in ("bad_json",) else None
    if isinstance(sent, dict) and code not in ("bad_id",) and isinstance(sent.get("id"), str):
        assert frame["payload"]["id"] == sent["id"]
    assert await server.events(exp["code"]) == before
    # the socket still plays, and the refused frame left no ack nor broadcast behind
    await a.send("decisions", 1, frame_id="valid-after")
    expected = {a_code: 1.0, b_code: 0.5}
    for client in (a, b):
        gd = await client.next()
        assert (gd["channel"], gd["payload"]) == ("group_decisions", expected)
    ack = await a.next()
    assert ack["channel"] == "ack" and ack["payload"]["id"] == "valid-after"
    after = await server.events(exp["code"])
    assert [e["seq"] for e in stored(after, "decisions")] == [ack["payload"]["seq"]]


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


DEEP_FRAMES = [
    ('{"channel": "decisions", "id": "deep", "payload": ' + nested(1_000) + "}", "bad_frame"),
    ('{"channel": "decisions", "payload": 0.5, "id": ' + nested(1_000) + "}", "bad_id"),
    ('{"payload": 0.5, "channel": ' + nested(1_000) + "}", "bad_frame"),
    ('{"channel": "decisions", "id": "deep2", "payload": {"a": ' + nested(1_000) + "}}", "bad_frame"),
    # deeper than the wire takes, not deeper than orjson reads: refused whatever the game would say
    ('{"channel": "decisions", "id": "deep3", "payload": ' + nested(65) + "}", "bad_frame"),
    ('{"channel": "decisions", "id": "deep4", "payload": ' + nested(64) + "}", "invalid_decision"),  # the game's
]


async def test_deeply_nested_frames_get_their_own_error_codes_and_log_no_error(
    server: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """A payload nested more than 64 deep gets bad_frame with its id, whatever the game (a game that
    took any value would have it stored, and the database's encoder stops at 254 levels); an id or
    channel nested 1,000 deep gets bad_id or bad_frame; each with a short message, on both routes,
    and the server logs no error (repr() of it raised RecursionError, answered game_error with a
    traceback in the log)."""
    caplog.set_level(logging.WARNING)
    exp, (_, b_code), (a, _), _ = await running_group(server)
    group_id = (await server.events(exp["code"]))[0]["group"]
    rw = await server.connect(b_code, redwood_path("bimatrix", group_id, b_code))
    for client in (a, rw):
        for raw, code in DEEP_FRAMES:
            await client.send_raw(raw)
            frame = await client.expect("error")
            assert frame["payload"]["code"] == code, frame
            assert len(frame["payload"]["message"]) < 300, frame
            if '"id": "deep' in raw:  # refused with its id, so the page drops it rather than keep it
                assert frame["payload"]["id"].startswith("deep"), frame
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert stored(await server.events(exp["code"]), "decisions") == []


async def test_a_refused_decision_does_not_use_up_its_id(server: Harness) -> None:
    """A frame id refused by the game may be sent again with a valid decision and is stored then."""
    exp, (a_code, _), (a, _), _ = await running_group(server)
    await a.send("decisions", 2, frame_id="fix-me")
    refused = await a.expect("error")
    assert refused["payload"] == {"code": "invalid_decision", "message": refused["payload"]["message"], "id": "fix-me"}
    seq = await decide(a, 0.75, "fix-me")
    events = await server.events(exp["code"])
    assert [(e["seq"], e["value"]) for e in stored(events, "decisions", a_code)] == [(seq, 0.75)]


def padded(size: int) -> str:
    """A valid decision frame of exactly ``size`` bytes (an unknown member pads it)."""
    bare = orjson.dumps({"channel": "decisions", "payload": 1, "id": "edge", "pad": ""}).decode()
    frame = orjson.dumps({"channel": "decisions", "payload": 1, "id": "edge", "pad": "x" * (size - len(bare))}).decode()
    assert len(frame.encode()) == size
    return frame


async def test_max_frame_bytes_is_the_largest_frame_accepted(sqlite_url: str) -> None:
    """With max_frame_bytes=256 a frame of 256 bytes is played and one of 257 gets too_large."""
    async with running_server(sqlite_url, max_frame_bytes=256) as server:
        exp, (a_code, _), (a, b), _ = await running_group(server)
        await a.send_raw(padded(257))
        refused = await a.next()
        assert refused["channel"] == "error" and refused["payload"]["code"] == "too_large"
        await a.send_raw(padded(256))
        seq = await ack_of(a, "edge")
        await decisions_where(b, lambda d: d[a_code] == 1)
        events = await server.events(exp["code"])
        assert [e["seq"] for e in stored(events, "decisions")] == [seq]


async def test_a_frame_over_the_protocol_limit_does_not_disturb_the_group(server: Harness) -> None:
    """A 2 MiB frame (over the 1 MiB WebSocket cap) stores nothing; the group and the sender play on."""
    exp, (a_code, b_code), (a, b), _ = await running_group(server)
    with contextlib.suppress(ConnectionClosed):
        await a.send_raw(orjson.dumps({"channel": "decisions", "payload": "x" * (2 << 20)}).decode())
    with contextlib.suppress(ConnectionClosed, TimeoutError):
        frame = await a.next(1.0)
        assert frame["channel"] == "error" and frame["payload"]["code"] == "too_large"
    assert await b.silent(0.2)
    assert stored(await server.events(exp["code"]), "decisions") == []
    again, _ = await join(server, a_code)
    await decide(again, 1, "after-huge")
    assert (await decisions_where(b, lambda d: d[a_code] == 1))["payload"] == {a_code: 1.0, b_code: 0.5}


async def test_a_binary_frame_is_refused_with_bad_frame(server: Harness) -> None:
    """Only JSON text frames are accepted; a binary frame (even of valid JSON) gets bad_frame."""
    exp, (a_code, _), (a, b), _ = await running_group(server)
    before = await server.events(exp["code"])
    await a.send_raw(b'{"channel": "decisions", "payload": 1}')
    frame = await a.next()
    assert frame["channel"] == "error"
    assert frame["payload"]["code"] == "bad_frame"
    assert await b.silent(0.2)
    assert await server.events(exp["code"]) == before
    await decide(a, 1, "after-binary")
    await decisions_where(b, lambda d: d[a_code] == 1)


async def test_a_decision_before_the_period_starts_is_refused_with_not_running(server: Harness) -> None:
    """Until every member is connected a decision gets not_running, and nothing is stored."""
    exp = await server.create()
    a_code, b_code = codes_of(exp)
    a, _ = await join(server, a_code)
    await a.send("decisions", 1, frame_id="early")
    frame = await a.next()
    assert frame["channel"] == "error"
    assert frame["payload"]["code"] == "not_running"
    assert frame["payload"]["id"] == "early"
    assert await server.events(exp["code"]) == []
    b, _ = await join(server, b_code)
    await a.expect("state")
    gd = await a.expect("group_decisions")
    assert gd["payload"] == {a_code: 0.5, b_code: 0.5}  # the early decision left no trace
    await decide(a, 1, "early")  # its id was not used up either
    await decisions_where(b, lambda d: d[a_code] == 1)


async def test_frames_faster_than_the_rate_limit_are_refused_with_rate_limited(sqlite_url: str) -> None:
    """Beyond the burst a frame gets rate_limited and is dropped; after a pause frames work again."""
    async with running_server(sqlite_url, frames_per_second=2, frame_burst=3) as server:
        exp, (a_code, b_code), (a, b), _ = await running_group(server)
        for i in range(4):
            await a.send("decisions", i / 4, frame_id=f"r{i}")
        acks: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        async with asyncio.timeout(timeout(5)):
            while len(acks) < 3 or not errors:
                frame = await a.next()
                if frame["channel"] == "ack":
                    acks.append(frame["payload"])
                elif frame["channel"] == "error":
                    errors.append(frame["payload"])
        assert [ack["id"] for ack in acks] == ["r0", "r1", "r2"]
        assert [e["code"] for e in errors] == ["rate_limited"]
        assert await a.silent(0.2)  # the dropped frame is neither acknowledged nor stored
        events = await server.events(exp["code"])
        assert [e["value"] for e in stored(events, "decisions", a_code)] == [0, 0.25, 0.5]
        await asyncio.sleep(0.6)  # one token comes back
        await decide(a, 1, "after-pause")
        assert (await decisions_where(b, lambda d: d[a_code] == 1))["payload"] == {a_code: 1.0, b_code: 0.5}


async def test_a_client_flooding_far_beyond_the_burst_is_closed_with_4029(sqlite_url: str) -> None:
    """Once a whole burst of frames was refused, the next frame cuts the client off with 4029."""
    async with running_server(sqlite_url, frames_per_second=2, frame_burst=3) as server:
        _, (a_code, _), (a, b), _ = await running_group(server)
        with contextlib.suppress(ConnectionClosed):
            for _ in range(50):
                await a.send("ping", {"timestamp": 1})
        assert await close_code(a) == 4029
        # frames still queued at the cut-off are dropped; what did arrive is 3 pongs at most
        assert len([f for f in a.frames if f["channel"] == "ping"]) <= 3
        assert {f["payload"]["code"] for f in a.frames if f["channel"] == "error"} <= {"rate_limited"}
        # the group goes on: the flooder may come back and play
        again, _ = await join(server, a_code)
        await decide(again, 1, "back")
        await decisions_where(b, lambda d: d[a_code] == 1)


async def test_a_client_flooding_the_default_server_is_closed_with_4029(server: Harness) -> None:
    """With the default limits (50/s, burst 100) a flood of 1,000 frames is cut off with 4029."""
    exp = await server.create()
    a, _ = await join(server, codes_of(exp)[0])
    frame = orjson.dumps({"channel": "ping", "payload": {"timestamp": 1}}).decode()
    with contextlib.suppress(ConnectionClosed):
        for _ in range(1_000):
            await a.send_raw(frame)
    assert await close_code(a) == 4029


async def test_a_client_flooding_binary_frames_is_closed_with_4029(sqlite_url: str) -> None:
    """Binary frames count against the frame rate like text frames: a binary flood is cut off."""
    async with running_server(sqlite_url, frames_per_second=2, frame_burst=3) as server:
        exp = await server.create()
        a, _ = await join(server, codes_of(exp)[0])
        with contextlib.suppress(ConnectionClosed):
            for _ in range(50):
                await a.send_raw(b"\x00binary")
        assert await close_code(a, wait=2) == 4029


# --------------------------------------------------------------------------- ping


async def test_ping_is_echoed_with_the_server_time(server: Harness) -> None:
    """ping {"timestamp": 123} is answered on ping with the timestamp and an int server_time."""
    exp = await server.create()
    a, _ = await join(server, codes_of(exp)[0])
    await a.send("ping", {"timestamp": 123})
    pong = await a.next()
    assert pong["channel"] == "ping"
    assert set(pong["payload"]) == {"timestamp", "server_time"}
    assert pong["payload"]["timestamp"] == 123
    server_time = pong["payload"]["server_time"]
    assert isinstance(server_time, int) and not isinstance(server_time, bool)
    assert abs(server_time - now_ms()) < 2000
    assert await server.events(exp["code"]) == []  # a ping is not an event


# --------------------------------------------------------------------------- groups


async def test_only_the_own_group_receives_its_broadcasts(server: Harness) -> None:
    """Four bimatrix participants make two groups; a decision in group 1 never reaches group 2."""
    exp, codes, clients, starts = await running_group(server, participants=4)
    a, b, c, d = clients
    a_code, b_code, c_code, d_code = codes
    assert starts[0]["seq"] == starts[1]["seq"] != starts[2]["seq"] == starts[3]["seq"]
    await a.send("decisions", 1, frame_id="g1")
    for client in (a, b):
        gd = await decisions_where(client, lambda p: p.get(a_code) == 1)
        assert gd["payload"] == {a_code: 1.0, b_code: 0.5}
    assert await c.silent(0.3)
    assert await d.silent(0.05)
    await c.send("decisions", 0, frame_id="g2")
    gd = await decisions_where(d, lambda p: p.get(c_code) == 0)
    assert gd["payload"] == {c_code: 0.0, d_code: 0.5}
    await ack_of(a, "g1")
    assert await a.silent(0.3)
    assert await b.silent(0.05)
    events = await server.events(exp["code"])
    groups_of = {e["participant"]: e["group"] for e in stored(events, "decisions")}
    assert groups_of[a_code] != groups_of[c_code]
    # hello and last_seq are per group: A's group saw nothing of group 2's later events
    await a.close()
    _, hello = await join(server, a_code)
    assert hello["members"] == [a_code, b_code]
    assert hello["group"] == groups_of[a_code]
    assert hello["last_seq"] == max(e["seq"] for e in events if e["group"] == groups_of[a_code])
    assert hello["last_seq"] < gd["seq"]


# --------------------------------------------------------------------------- replacement


async def test_a_new_connection_with_the_same_code_closes_the_older_with_4000(server: Harness) -> None:
    """The newer socket replaces the older (closed 4000); the group sees no disconnect."""
    exp, (a_code, b_code), (old, b), _ = await running_group(server)
    new, hello = await join(server, a_code)
    assert hello["phase"] == "running"
    assert await close_code(old) == 4000
    assert await b.silent(0.3)
    await decide(new, 1, "from-new")
    assert (await decisions_where(b, lambda d: d[a_code] == 1))["payload"] == {a_code: 1.0, b_code: 0.5}
    events = await server.events(exp["code"])
    assert len(stored(events, "state")) == 1


async def test_a_replaced_connection_still_counts_its_participant_as_connected(server: Harness) -> None:
    """Replacing a waiting member's socket keeps it connected: the period starts when the other comes."""
    exp = await server.create()
    a_code, b_code = codes_of(exp)
    old, hello = await join(server, a_code)
    new, _ = await join(server, a_code)
    assert await close_code(old) == 4000
    group = group_view(server, hello["group"])
    await eventually(lambda: len(group.current) == 1)
    b, _ = await join(server, b_code)
    for client in (new, b):
        assert (await client.expect("state"))["payload"] == "period_start"
    await decide(new, 1, "new")
    await decisions_where(b, lambda d: d[a_code] == 1)


# --------------------------------------------------------------------------- otree-redwood


async def test_a_redwood_client_gets_no_hello_but_the_state_and_the_decisions_on_connect(server: Harness) -> None:
    """On the redwood route the first frames are state (after the start) and group_decisions."""
    exp, (a_code, b_code), (a, b), starts = await running_group(server)
    await decide(a, 1, "a1")
    group_id = (await server.events(exp["code"]))[0]["group"]
    await b.close()
    rw = await server.connect(b_code, redwood_path("bimatrix", group_id, b_code))
    state = await rw.next()
    assert state["channel"] == "state"
    assert state["payload"] == "period_start"
    assert state["seq"] == starts[1]["seq"]
    gd = await rw.next()
    assert gd["channel"] == "group_decisions"
    assert gd["payload"] == {a_code: 1.0, b_code: 0.5}
    assert all(f["channel"] != "hello" for f in rw.frames)


async def test_redwood_and_synclab_clients_play_in_one_group(server: Harness) -> None:
    """decisions in on either route, group_decisions out to both members."""
    exp = await server.create()
    a_code, b_code = codes_of(exp)
    a, hello = await join(server, a_code)
    rw = await server.connect(b_code, redwood_path("bimatrix", hello["group"], b_code))
    assert (await rw.next())["payload"] == "period_start"  # no hello: state comes first
    assert (await rw.next())["payload"] == {a_code: 0.5, b_code: 0.5}
    await a.expect("state")
    await rw.send("decisions", 0)
    for client in (a, rw):
        gd = await decisions_where(client, lambda d: d[b_code] == 0)
        assert gd["payload"] == {a_code: 0.5, b_code: 0.0}
    await a.send("decisions", 1)
    for client in (a, rw):
        gd = await decisions_where(client, lambda d: d[a_code] == 1)
        assert gd["payload"] == {a_code: 1.0, b_code: 0.0}
    events = await server.events(exp["code"])
    assert [(e["participant"], e["value"]) for e in stored(events, "decisions")] == [(b_code, 0), (a_code, 1)]


async def test_a_redwood_client_connected_before_the_start_waits_silently(server: Harness) -> None:
    """Before the period starts the redwood route sends nothing: no hello, no state."""
    exp = await server.create()
    a_code, b_code = codes_of(exp)
    first, hello = await join(server, a_code)
    group_id = hello["group"]
    await first.close()
    rw = await server.connect(a_code, redwood_path("bimatrix", group_id, a_code))
    assert await rw.silent(0.3)
    b, _ = await join(server, b_code)
    assert (await rw.next()) == (await b.expect("state"))


async def test_a_redwood_ping_is_answered_with_its_timestamp(server: Harness) -> None:
    """otree-redwood's ping {"channel":"ping","timestamp":5} comes back exactly as sent."""
    exp = await server.create()
    a_code, _ = codes_of(exp)
    _, hello = await join(server, a_code)
    rw = await server.connect(a_code, redwood_path("bimatrix", hello["group"], a_code))
    await rw.send_raw('{"channel": "ping", "timestamp": 5}')
    assert await rw.next() == {"channel": "ping", "timestamp": 5}


async def test_the_redwood_route_refuses_a_wrong_app_name_or_group_with_403(server: Harness) -> None:
    """The app must be the game's name and the group the participant's own; else 403."""
    exp = await server.create(participants=4)
    a_code, _, c_code, _ = codes_of(exp)
    _, a_hello = await join(server, a_code)
    _, c_hello = await join(server, c_code)
    own, other = a_hello["group"], c_hello["group"]
    assert own != other
    assert await handshake_status(server, redwood_path("public_goods", own, a_code)) == 403
    assert await handshake_status(server, redwood_path("no-such-app", own, a_code)) == 403
    assert await handshake_status(server, redwood_path("bimatrix", other, a_code)) == 403
    assert await handshake_status(server, redwood_path("bimatrix", "not-a-number", a_code)) == 403
    assert await handshake_status(server, redwood_path("bimatrix", own, "no-such-code")) == 403
    ok = await server.connect(a_code, redwood_path("bimatrix", own, a_code))
    await ok.send_raw('{"channel": "ping", "timestamp": 1}')
    assert await ok.next() == {"channel": "ping", "timestamp": 1}


# --------------------------------------------------------------------------- persistence


async def test_what_a_participant_has_seen_is_already_stored(any_server: Harness) -> None:
    """Every frame with a seq, and every ack, names an event that the API returns at once."""
    exp, (a_code, _), (a, b), starts = await running_group(any_server)
    events = await any_server.events(exp["code"])
    assert starts[0]["seq"] in {e["seq"] for e in events}
    for i in range(5):
        value = i / 4
        await a.send("decisions", value, frame_id=f"s{i}")
        gd = await decisions_where(b, lambda d: bool(d[a_code] == value))  # noqa: B023 (awaited here)
        assert isinstance(gd["ts"], int) and abs(gd["ts"] - now_ms()) < 5000
        stored_now = {e["seq"]: e for e in await any_server.events(exp["code"])}
        assert gd["seq"] in stored_now
        assert stored_now[gd["seq"]]["channel"] == "group_decisions"
        assert stored_now[gd["seq"]]["value"] == gd["payload"]
        ack = await ack_of(a, f"s{i}")
        acked = [e for e in await any_server.events(exp["code"]) if e["seq"] == ack]
        assert [(e["channel"], e["participant"], e["value"]) for e in acked] == [("decisions", a_code, i / 4)]
    all_events = await any_server.events(exp["code"])
    assert [e["seq"] for e in all_events] == list(range(1, len(all_events) + 1))


async def test_after_a_server_restart_hello_state_and_retried_ids_are_unchanged(database_url: str) -> None:
    """A restarted server rebuilds hello, the repeated state and the client ids from the database."""
    async with running_server(database_url) as first:
        exp, (a_code, b_code), (a, _), starts = await running_group(first, period_length=120)
        await a.send("decisions", 1, frame_id="before-restart")
        seen = await decisions_where(a, lambda d: d[a_code] == 1)
        seq = await ack_of(a, "before-restart")
        before = await first.events(exp["code"])
    async with running_server(database_url) as second:
        again, hello = await join(second, a_code)
        assert hello["phase"] == "running"
        assert hello["group_decisions"] == {a_code: 1.0, b_code: 0.5}
        assert hello["last_seq"] == seen["seq"]
        # ms of a time stored with microseconds: equal but for a rounding at the 0.5 ms edge
        assert abs(hello["period"]["started_at"] - starts[0]["ts"]) <= 1
        state = await again.next()
        assert state["channel"] == "state" and state["seq"] == starts[0]["seq"]
        assert abs(state["ts"] - starts[0]["ts"]) <= 1
        assert (await again.next())["payload"] == {a_code: 1.0, b_code: 0.5}
        assert await decide(again, 0, "before-restart") == seq
        assert await second.events(exp["code"]) == before


async def test_hello_names_the_game_and_what_the_participant_earned_so_far(server: Harness) -> None:
    """hello carries the experiment, game, config and timing, and the score so far after a reconnect."""
    exp, codes, clients, _ = await running_group(server, period_length=3, num_subperiods=3, bonus_points=2)
    await clients[0].send("decisions", 1.0, "a")  # row plays A, col B: row earns 0, col 5 per second
    await clients[1].send("decisions", 0.0, "b")
    result = (await clients[1].expect("result", wait=3))["payload"]
    assert result["subperiod"] == 0
    await clients[1].close()
    _, hello = await join(server, codes[1])
    assert hello["experiment"] == exp["code"]
    assert hello["game"] == "bimatrix"
    assert hello["config"]["payoffs"]["AB"] == [0, 5]
    assert hello["period_length"] == 3
    assert hello["bonus_points"] == 2
    assert hello["earned"] == pytest.approx(5 / 3 * (hello["period"]["subperiod"]))
    assert hello["period"]["subperiod"] >= 1


async def test_a_redwood_client_follows_its_block_move_and_reconnects_through_its_old_url(server: Harness) -> None:
    """Both members on the redwood route over two blocks: after the pause each socket gets the next
    block's ``period_start`` and decisions (its group is a new one), and a member reconnecting
    through the URL of its first block's group joins the group of the block it is in now."""
    exp = await server.create(blocks=2, period_length=1, block_pause=0.3)
    a_code, b_code = codes_of(exp)
    first_group = None
    for code in (a_code, b_code):
        client, hello = await join(server, code)
        first_group = hello["group"]
        await client.close()
    a, b = [await server.connect(c, redwood_path("bimatrix", first_group, c)) for c in (a_code, b_code)]
    start_1 = await until_value(a, "state", "period_start")
    await until_value(a, "state", "period_end", wait=5)
    start_2 = await until_value(a, "state", "period_start", wait=5)
    assert start_2["seq"] > start_1["seq"]
    assert (await a.expect("group_decisions"))["payload"] == {a_code: 0.5, b_code: 0.5}
    detail = (await server.http.get(f"/api/experiments/{exp['code']}/participants/{b_code}")).json()
    assert detail["group"] != first_group
    await b.close()
    again = await server.connect(b_code, redwood_path("bimatrix", first_group, b_code))
    state = await again.next()
    assert state["channel"] == "state" and state["payload"] == "period_start" and state["seq"] == start_2["seq"]
    await again.send("decisions", 1)
    gd = await decisions_where(a, lambda d: d[b_code] == 1)
    assert gd["payload"] == {a_code: 0.5, b_code: 1.0}
    stored_b = [e for e in await server.events(exp["code"]) if e["channel"] == "decisions" and e["participant"] == b_code]
    assert stored_b and stored_b[-1]["group"] == detail["group"]


async def until_value(client: Client, channel: str, value: Any, wait: float = 5.0) -> dict[str, Any]:
    async with asyncio.timeout(timeout(wait)):
        while True:
            frame = await client.expect(channel, wait)
            if frame["payload"] == value:
                return frame
