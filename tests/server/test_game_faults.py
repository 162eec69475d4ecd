"""A game that fails on every tick, and a game that is slow, on a real server with real sockets.

A game whose payoff always raises held its group running for ever: its ticks were tried again
and again, and the experimenter's ``end``, which scores the period, failed too and left the group
as it was. Now ``end`` ends it without the game (a ``game_fault`` event records why), and the
group ends by itself once its period's end is long past. A hook that holds the event loop is
logged, naming the game and the group, in an action or outside one (a stand-in's
``bot_decision``, a hello's ``payoff`` and ``role``). A hello in a group whose payoff gives NaN is
answered, with the score up to the last accrual; one whose role raises, with no role. A hook that
fails outside an action, at every hello or every decision of a stand-in, is logged once with its
traceback, then counted.
"""

from __future__ import annotations

import asyncio
import csv
import io
import logging
import math
import os
import re
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import update
from websockets.asyncio.client import connect

from groups import RESERVED_CHANNELS, DecisionGroup, Phase, PublicGoods
from server import control, course, hooks, presence, standins, ticks
from server.cluster.requests import error_of, exception_of
from server.exceptions import BadRequest, GameFailed
from server.experiments import parse_request
from server.hooks import FRAME_FAULTS_LOG_EVERY
from server.storage import make_engine, sessions
from server.throttle import LogThrottle
from server.verify import verify
from tests.server.harness import (
    TOKEN,
    Client,
    Harness,
    eventually,
    running_server,
    timeout,
    until_state,
)
from tests.server.test_blocks import decide, wait_for_status
from tests.server.test_cli import free_port, started, wait_until_healthy
from tests.server.test_monitor import rows_until
from tests.server.test_progress import everywhere, get
from tests.server.test_unstorable import answer

#: this checkout: a ``synclab serve`` child imports the games below from it
ROOT = Path(__file__).resolve().parents[2]


class Broken(PublicGoods):
    """public_goods whose payoff raises whatever the decisions (found by its import path)."""

    def payoffs(self, decisions: Any) -> dict[str, float]:  # as the base class asks each member's
        return {p: self.payoff(p, decisions) for p in self.members}

    def payoff(self, participant: str, decisions: Any) -> float:
        raise ZeroDivisionError("broken on purpose")


class Slow(PublicGoods):
    """public_goods whose decisions take 200 ms to check (found by its import path)."""

    def validate_decision(self, participant: str, decision: Any) -> Any:
        time.sleep(0.2)  # what a game that reads a file or asks a service does to every group
        return super().validate_decision(participant, decision)


class Raising(PublicGoods):
    """public_goods whose check of a decision raises, whatever the decision (found by its import path)."""

    def validate_decision(self, participant: str, decision: Any) -> Any:
        raise RuntimeError("broken check")


class Forger(PublicGoods):
    """public_goods whose ``finish`` channel sends the core's own period end (found by its import path)."""

    channels = frozenset({"finish"})

    def on_finish(self, participant: str, payload: Any) -> None:
        self.send("state", "period_end")


class DeclaresState(DecisionGroup):
    """A game taking ``state`` frames from its members (found by its import path)."""

    channels = frozenset({"state"})

    def on_state(self, participant: str, payload: Any) -> None:
        pass


class NotANumber(PublicGoods):
    """public_goods whose payoff is NaN once somebody contributes 7 (found by its import path)."""

    def payoffs(self, decisions: Any) -> dict[str, float]:  # as the base class asks each member's
        return {p: self.payoff(p, decisions) for p in self.members}

    def payoff(self, participant: str, decisions: Any) -> float:
        return math.nan if 7 in decisions.values() else super().payoff(participant, decisions)


class SlowPayoff(NotANumber):
    """public_goods whose payoff takes 60 ms once somebody contributes 3 (found by its import path)."""

    def payoff(self, participant: str, decisions: Any) -> float:
        if 3 in decisions.values():
            time.sleep(0.06)
        return super().payoff(participant, decisions)


class SlowBot(PublicGoods):
    """public_goods whose stand-ins take 60 ms to choose (found by its import path)."""

    def bot_decision(self, participant: str, decisions: Any, rng: Any) -> Any:
        time.sleep(0.06)
        return 5


class RaisingRole(PublicGoods):
    """public_goods whose role raises for every member (found by its import path)."""

    def role(self, participant: str) -> str:
        raise KeyError(participant)


class SetRole(PublicGoods):
    """public_goods whose role is a set, which JSON cannot hold (found by its import path)."""

    def role(self, participant: str) -> Any:
        return {"player"}


class SlowRole(PublicGoods):
    """public_goods whose role takes 60 ms (found by its import path)."""

    def role(self, participant: str) -> str:
        time.sleep(0.06)
        return "player"


class RaisingBot(PublicGoods):
    """public_goods whose stand-ins fail to choose, every time (found by its import path)."""

    def bot_decision(self, participant: str, decisions: Any, rng: Any) -> Any:
        raise RuntimeError("no idea")


class RaisingStart(PublicGoods):
    """public_goods whose start of the period raises, once every member is there (found by its import path)."""

    def when_all_players_ready(self) -> None:
        raise RuntimeError("cannot start")


async def until_events(server: Harness, code: str, count: int, wait: float = 5) -> list[dict[str, Any]]:
    """The experiment's events once there are ``count`` of them at least (polled, bounded)."""
    for _ in range(int(timeout(wait) / 0.05)):
        if len(events := await server.events(code)) >= count:
            return events
        await asyncio.sleep(0.05)
    raise AssertionError(f"experiment {code} never stored {count} events")


def faults(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r["value"] for r in rows if r["channel"] == "game_fault"]


async def until_connected(server: Harness, code: str, participant: str, connected: bool, wait: float = 5) -> None:
    """Poll the participants list (bounded) until ``participant`` shows as ``connected``."""
    for _ in range(int(timeout(wait) / 0.05)):
        rows = (await get(server, f"/api/experiments/{code}/participants"))["results"]
        if next(r["connected"] for r in rows if r["code"] == participant) is connected:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{participant} never showed as connected={connected}")


async def until_faulted(server: Harness, code: str, wait: float = 3) -> None:
    """Poll the events (bounded) until a ``game_fault`` is stored."""
    for _ in range(int(timeout(wait) / 0.05)):
        if faults(await server.events(code)):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"no game_fault was stored in {timeout(wait):g} s")


async def ended_with_the_experiment(client: Client) -> None:
    """The client's group's ``period_end``, then the notice that the experiment is over."""
    await until_state(client, "period_end")
    assert (await client.expect("experiment"))["payload"] == {"status": "cancelled"}


@pytest.mark.parametrize("num_subperiods", [2, None], ids=["subperiods", "continuous"])
async def test_the_experimenters_end_ends_a_group_whose_payoff_always_raises(
    database_url: str, num_subperiods: int | None
) -> None:
    """The group's first tick fails (recorded, the group waits); past the period's end it still
    runs. The experimenter's end over REST ends it all the same: listed in the answer, phase ended
    in the API and the export, the pages get period_end and the experiment's end, the fault
    recorded with its hook, type and message (in the events, the export and the monitor's feed),
    the sessions unfinished and the runs cancelled; verify agrees, with a note. It was left
    running, out of the answer, and nothing recorded the fault."""
    async with running_server(database_url) as server:
        exp = await server.create(game="tests.server.test_game_faults:Broken", participants=2, group_size=2,
                                  period_length=1, num_subperiods=num_subperiods)
        code = exp["code"]
        mon = await server.monitor(code)
        a, b = [await server.connect(p["code"]) for p in exp["participants"]]
        group = (await a.expect("hello"))["payload"]["group"]
        await until_state(a, "period_start")
        first = faults(await rows_until(mon, lambda rows: bool(faults(rows)), wait=5))
        assert first == [{"hook": "payoff", "error": "ZeroDivisionError", "message": "broken on purpose",
                          "during": "tick", "ended": False}]
        await asyncio.sleep(1.2)  # the period's end is past: the group still waits on its game
        assert (await get(server, f"/api/experiments/{code}/export.json"))["groups"][0]["phase"] == "running"
        # a page that comes back meanwhile is shown the running period, and its comings and goings
        # are stored (its socket was closed with 1011, its page tried again for ever, the close of
        # its socket was not stored)
        b = await server.connect(exp["participants"][1]["code"])
        assert (await b.expect("hello"))["payload"]["phase"] == "running"
        await b.close()
        await until_connected(server, code, exp["participants"][1]["code"], False)
        b = await server.connect(exp["participants"][1]["code"])
        assert (await b.expect("hello"))["payload"]["phase"] == "running"
        await until_connected(server, code, exp["participants"][1]["code"], True)

        ended = await server.http.post(f"/api/experiments/{code}/end")
        assert ended.status_code == 200, ended.text
        assert ended.json()["groups"] == [group] and ended.json()["status"] == "cancelled"
        for client in (a, b):
            await ended_with_the_experiment(client)
        recorded = faults(await rows_until(mon, lambda rows: len(faults(rows)) == 2, wait=5))
        assert recorded[1] == {"hook": "payoff", "error": "ZeroDivisionError", "message": "broken on purpose",
                               "during": "end", "ended": True}

        events = await server.events(code)
        tail = [(e["channel"], e["value"]) for e in events][-3:]
        assert [channel for channel, _ in tail] == ["control", "game_fault", "state"] and tail[2][1] == "period_end"
        assert faults(events) == first + recorded[1:]
        document = await get(server, f"/api/experiments/{code}/export.json")
        assert [g["phase"] for g in document["groups"]] == ["ended"]
        assert faults(document["events"]) == faults(events)
        # the game gave no score, and none was made up
        assert await get(server, f"/api/experiments/{code}/export.json?table=results") == []
        assert all(s["started_at"] and s["finished_at"] is None for s in document["sessions"])
        assert await everywhere(server, code) == {p["code"]: ("cancelled", 0) for p in exp["participants"]}
        assert (await get(server, f"/api/experiments/{code}"))["status"] == "cancelled"
    engine = make_engine(database_url)  # the server has stopped: everything it acknowledged is applied
    try:
        report = verify(engine, code)
    finally:
        engine.dispose()
    assert report.ok and report.unfinished_sessions == 2, report.summary()
    assert any("ended without its scores" in note and "ZeroDivisionError: broken on purpose" in note
               for note in report.notes), report.notes


async def test_a_group_whose_game_keeps_failing_ends_by_itself_long_after_its_period(
    server: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nobody ends it: once its period's end is GAME_FAULT_END_AFTER past (1 s here, 30 s by
    default) the group ends without its game, as the experimenter's end would, and the
    experiment, whose last period was not played through, is cancelled (it was done: ran to its
    end). It was tried every 10 s for ever."""
    monkeypatch.setattr(ticks, "GAME_FAULT_END_AFTER", 1.0)  # the server runs in this process
    exp = await server.create(game="tests.server.test_game_faults:Broken", participants=2, group_size=2,
                              period_length=1, num_subperiods=1)
    code = exp["code"]
    a, b = [await server.connect(p["code"]) for p in exp["participants"]]
    started_at = (await until_state(a, "period_start"))["ts"] / 1000
    ended = await until_state(a, "period_end", wait=6)
    assert ended["ts"] / 1000 - started_at == pytest.approx(2.0, abs=0.5)  # the end, then 1 s past it
    await until_state(b, "period_end")
    await wait_for_status(server, code, "cancelled")
    events = await server.events(code)
    assert [f["during"] for f in faults(events)] == ["tick", "tick"]
    assert [f["ended"] for f in faults(events)] == [False, True]
    assert await everywhere(server, code) == {p["code"]: ("cancelled", 0) for p in exp["participants"]}


async def test_the_end_without_the_game_keeps_the_subperiods_scored_before_it_failed(database_url: str) -> None:
    """Subperiod 0 is scored; a decision of 7 breaks Fragile's payoff at subperiod 1; the
    experimenter's end: the results of subperiod 0 stay, the end makes none of its own, and the
    sessions, not played through, stay unfinished. Each session's final_score is what it earned,
    its bonus plus those results, alike in the sessions and participants lists, the participant's
    detail and the exports (JSON and CSV), as the page shows it; verify checks it. It was 0 while
    the results stayed, and the participant's score the sum of such zeros."""
    async with running_server(database_url) as server:
        exp = await server.create(game="tests.server.test_blocks:Fragile", participants=2, group_size=2,
                                  period_length=2, num_subperiods=4, bonus_points=1)
        code = exp["code"]
        a, b = [await server.connect(p["code"]) for p in exp["participants"]]
        await until_state(a, "period_start")
        await a.expect("subperiod", wait=3)  # subperiod 0 scored at 0.5 s
        await decide(a, 7, "seven")
        await until_faulted(server, code)  # subperiod 1, due at 1 s, fails on the 7
        ended = await server.http.post(f"/api/experiments/{code}/end")
        assert ended.status_code == 200 and ended.json()["groups"], ended.text
        await until_state(b, "period_end")
        results = (await get(server, f"/api/experiments/{code}/results"))["results"]
        assert sorted(r["subperiod"] for r in results) == [0, 0]
        assert [f["hook"] for f in faults(await server.events(code))] == ["payoff", "payoff"]

        earned = {p["code"]: 1 + sum(r["score"] for r in results if r["participant"] == p["code"])
                  for p in exp["participants"]}
        assert earned == {p["code"]: 1 + 10 / 4 for p in exp["participants"]}  # public_goods, nobody gives: 10 a subperiod
        listed = (await get(server, f"/api/experiments/{code}/sessions"))["results"]
        assert {s["participant"]: (s["final_score"], s["finished_at"]) for s in listed} == {
            c: (score, None) for c, score in earned.items()
        }
        people = (await get(server, f"/api/experiments/{code}/participants"))["results"]
        assert {r["code"]: (r["final_score"], r["status"], r["completion"]["earned"]) for r in people} == {
            c: (score, "cancelled", 0) for c, score in earned.items()
        }
        for c, score in earned.items():
            detail = await get(server, f"/api/experiments/{code}/participants/{c}")
            assert detail["final_score"] == score and [s["final_score"] for s in detail["sessions"]] == [score]
        document = await get(server, f"/api/experiments/{code}/export.json")
        assert {s["participant"]: s["final_score"] for s in document["sessions"]} == earned
        assert {r["code"]: r["final_score"] for r in document["participants"]} == earned
        response = await server.http.get(f"/api/experiments/{code}/export.csv", params={"table": "sessions"})
        assert {r["participant"]: float(r["final_score"]) for r in csv.DictReader(io.StringIO(response.text))} == earned
    engine = make_engine(database_url)
    try:
        report = verify(engine, code)
        assert report.ok and report.results == 2 and report.unfinished_sessions == 2, report.summary()
        assert any("ended without its scores after 1 of 4 subperiods" in note for note in report.notes), report.notes
        with engine.begin() as conn:  # as the server stored it before
            conn.execute(update(sessions).where(sessions.c.group_id == ended.json()["groups"][0]).values(final_score=0.0))
        report = verify(engine, code)
    finally:
        engine.dispose()
    assert not report.ok and len(report.problems) == 4, report.problems  # each: not its stored results, not recomputed
    assert all("final_score 0.0" in problem for problem in report.problems), report.problems


async def test_a_game_sending_the_cores_period_end_gets_its_frame_refused_and_the_period_runs_on(
    server: Harness,
) -> None:
    """A member's frame whose hook sends ``state`` ``period_end``: that frame gets ``game_error``,
    nothing of it is stored or sent (the other member hears no ``period_end``), and the period runs
    on: a decision after it is acknowledged and broadcast, the group and the experiment still
    running. It was stored and sent as the core's own end of the period."""
    exp = await server.create(game=f"{__name__}:Forger", participants=2, group_size=2, period_length=600)
    code = exp["code"]
    a, b = [await server.connect(p["code"]) for p in exp["participants"]]
    for client in (a, b):
        await until_state(client, "period_start")
    await a.send("finish", None, "forged")
    refused = (await answer(a, "forged"))["payload"]
    assert refused["code"] == "game_error", refused
    await decide(a, 5, "after")
    while (await b.expect("group_decisions"))["payload"][exp["participants"][0]["code"]] != 5:
        pass  # (the period's first, then the decision's)
    assert [f["payload"] for f in b.frames if f["channel"] == "state"] == ["period_start"]
    events = await server.events(code)
    assert [e["value"] for e in events if e["channel"] == "state"] == ["period_start"]
    assert not [e for e in events if e["channel"] == "finish"]
    assert [g["phase"] for g in (await get(server, f"/api/experiments/{code}/export.json"))["groups"]] == ["running"]
    assert (await get(server, f"/api/experiments/{code}"))["status"] == "running"


def test_a_game_declaring_the_cores_state_channel_is_refused_at_creation() -> None:
    """A 400 naming the game and the channel: a member's ``state`` frame would have been stored
    as the core's ``state`` event (a ``period_end`` counted as the period's end)."""
    with pytest.raises(BadRequest) as refused:
        parse_request({"game": f"{__name__}:DeclaresState", "participants": 2, "group_size": 2})
    assert refused.value.status == 400 and refused.value.field == "game"
    assert "DeclaresState declares a channel it cannot take: expected a channel of the game's own, got 'state'" in str(refused.value)


def test_the_reserved_channels_hold_every_channel_the_server_gives_a_meaning_to() -> None:
    """The server's own events and frames, and every channel the participant page handles itself
    (a game's frame on one would never reach its view), are among groups.RESERVED_CHANNELS."""
    assert {control.CONTROL, presence.LOBBY, course.EXPERIMENT, standins.STANDIN} <= RESERVED_CHANNELS
    page = (ROOT / "server" / "static" / "participant.js").read_text()
    handlers = re.search(r"\nconst HANDLERS = \{\n(.*?)\n\};\n", page, re.S)
    assert handlers is not None
    handled = set(re.findall(r"^  (\w+):", handlers.group(1), re.M))
    assert len(handled) > 5 and handled <= RESERVED_CHANNELS, handled - RESERVED_CHANNELS


async def test_a_slow_hook_is_logged_naming_the_game_and_group_at_most_every_few_seconds(tmp_path: Path) -> None:
    """``synclab serve`` whose game takes 200 ms per decision: its log names the game, its class,
    the group and the time held, once for several slow decisions in a row (not once each)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    with started(tmp_path, "serve", "--port", str(port), SYNCLAB_ADMIN_TOKEN=TOKEN, PYTHONPATH=path) as running:
        wait_until_healthy(base)
        async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"},
                                     timeout=timeout(10)) as http:
            made = await http.post("/api/experiments", json={
                "game": "tests.server.test_game_faults:Slow", "participants": 2, "group_size": 2, "period_length": 60,
            })
            assert made.status_code == 201, made.text
            exp = made.json()
            a, b = [Client(await connect(f"ws://127.0.0.1:{port}/ws/p/{p['code']}", open_timeout=timeout(5)))
                    for p in exp["participants"]]
            try:
                hello = (await a.expect("hello"))["payload"]
                await until_state(a, "period_start")
                for i in range(3):
                    await decide(a, 5, f"slow-{i}")
            finally:
                for client in (a, b):
                    await client.close()
        log = running.stderr_path.read_text(errors="replace")
    warnings = re.findall(r"group (\d+): the game Slow \(tests\.server\.test_game_faults:Slow\) held the event "
                          r"loop (\d+) ms in one action", log)
    assert warnings, running.stderr()
    assert len(warnings) == 1, warnings  # three slow decisions within a second: logged once
    group, took = warnings[0]
    assert int(group) == hello["group"] and 200 <= int(took) < 2000


async def test_a_game_that_fails_on_every_frame_is_logged_once_not_a_traceback_a_frame(tmp_path: Path) -> None:
    """``synclab serve`` whose game raises on every decision: each frame is refused with
    ``game_error``, and the log has one traceback for the first of a few frames in a row, not one
    each (the line that counts the rest later is :func:`test_the_failures_between_two_log_lines_are_counted`)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    with started(tmp_path, "serve", "--port", str(port), SYNCLAB_ADMIN_TOKEN=TOKEN, PYTHONPATH=path) as running:
        wait_until_healthy(base)
        async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"},
                                     timeout=timeout(10)) as http:
            made = await http.post("/api/experiments", json={
                "game": "tests.server.test_game_faults:Raising", "participants": 2, "group_size": 2,
                "period_length": 60,
            })
            assert made.status_code == 201, made.text
            exp = made.json()
            a, b = [Client(await connect(f"ws://127.0.0.1:{port}/ws/p/{p['code']}", open_timeout=timeout(5)))
                    for p in exp["participants"]]
            try:
                group = (await a.expect("hello"))["payload"]["group"]
                await until_state(a, "period_start")
                first = time.monotonic()
                for i in range(8):
                    frame_id = f"bad-{i}"
                    await a.send("decisions", 5, frame_id)
                    async with asyncio.timeout(timeout(5)):
                        while True:
                            frame = await a.next()
                            if frame["channel"] == "error" and frame["payload"].get("id") == frame_id:
                                assert frame["payload"]["code"] == "game_error", frame
                                break
                assert time.monotonic() - first < FRAME_FAULTS_LOG_EVERY  # all within one log interval
            finally:
                for client in (a, b):
                    await client.close()
        log = running.stderr_path.read_text(errors="replace")
    name = "tests.server.test_game_faults:Raising"
    assert log.count(f"group {group}: the game {name} failed on a frame of") == 1, running.stderr()
    assert log.count("RuntimeError: broken check") == 1, running.stderr()
    assert log.count("Traceback (most recent call last)") == 1, running.stderr()


def slow_warnings(caplog: pytest.LogCaptureFixture, where: str) -> list[str]:
    """The warnings that the game held the event loop in ``where`` (on a loaded machine any action
    may take over 50 ms now and then: only those of ``where`` count)."""
    return [m for m in (r.getMessage() for r in caplog.records) if "held the event loop" in m and f" ms in {where} " in m]


def one_slow_warning(caplog: pytest.LogCaptureFixture, group: int, game: str, where: str, what: str) -> None:
    """Exactly one warning that ``game`` (a class of this module) held the event loop in
    ``where`` (``what`` saying which), naming ``group``, for 60 ms or more (under a second)."""
    warned = slow_warnings(caplog, where)
    assert len(warned) == 1, warned
    took = re.match(rf"group {group}: the game {game} \(tests\.server\.test_game_faults:{game}\) held the "
                    rf"event loop (\d+) ms in {re.escape(where)} \({re.escape(what)}\) ", warned[0])
    assert took is not None and 60 <= int(took[1]) < 1000, warned


async def test_a_hello_whose_payoff_is_nan_shows_the_score_up_to_the_last_accrual(
    server: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """Continuous time, a contributes 7 (taken: what accrues up to it is finite), then b connects
    again, twice: each hello comes, its score so far a finite number (the flow up to the decision;
    the payoff's NaN was put in it, and a NaN is no JSON: the page got null), one log line for both
    naming the game's payoff and the GameFault (a line a hello before)."""
    caplog.set_level(logging.WARNING, logger="synclab.live")
    exp = await server.create(game="tests.server.test_game_faults:NotANumber", participants=2, group_size=2,
                              period_length=60)
    a_code, b_code = (p["code"] for p in exp["participants"])
    a, _b = [await server.connect(c) for c in (a_code, b_code)]
    started_at = (await until_state(a, "period_start"))["ts"]
    await decide(a, 7, "seven")
    decided_at = time.time() * 1000
    again = await server.connect(b_code)
    hello = (await again.expect("hello"))["payload"]
    assert hello["phase"] == "running"
    assert isinstance(hello["earned"], float), hello["earned"]
    # 10 a second until the 7; the start's ts is rounded to the nearest millisecond (wire.ms), up
    # to half of one later than the start: a decision within a millisecond of it read over the bound
    assert 0 < hello["earned"] <= 10 * (decided_at - (started_at - 0.5)) / 1000 / 60
    await again.close()
    assert isinstance((await (await server.connect(b_code)).expect("hello"))["payload"]["earned"], float)
    warned = [r.getMessage() for r in hook_faults(caplog, "payoff")]
    assert len(warned) == 1, warned
    assert warned[0].startswith(f"group {hello['group']}: the game NotANumber (tests.server.test_game_faults:NotANumber) "
                                "failed in payoff (the score so far of a hello): GameFault: NotANumber.payoff gave nan for ")


async def test_a_slow_payoff_of_a_hello_is_logged_naming_the_hook(
    server: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """A contribution of 3 makes the payoff take 60 ms; b's hello asks it (the score so far),
    outside any action of the group: logged, naming the group, the game and payoff."""
    caplog.set_level(logging.WARNING, logger="synclab.live")
    exp = await server.create(game="tests.server.test_game_faults:SlowPayoff", participants=2, group_size=2,
                              period_length=60)
    a_code, b_code = (p["code"] for p in exp["participants"])
    a, _b = [await server.connect(c) for c in (a_code, b_code)]
    await until_state(a, "period_start")
    await decide(a, 3, "three")  # (its accrual asks the payoff of the decisions before it: quick)
    assert slow_warnings(caplog, "payoff") == []
    again = await server.connect(b_code)
    hello = (await again.expect("hello"))["payload"]
    one_slow_warning(caplog, hello["group"], "SlowPayoff", "payoff", "the score so far of a hello")


async def filled_by_a_bot(server: Harness, game: str) -> tuple[Any, int]:
    """A pair of ``game`` (a class of this module), b's seat filled by a stand-in, the period
    started: a's client and the group's id."""
    exp = await server.create(game=f"tests.server.test_game_faults:{game}", participants=2, group_size=2,
                              period_length=60)
    a_code, b_code = (p["code"] for p in exp["participants"])
    a = await server.connect(a_code)
    group: int = (await a.expect("hello"))["payload"]["group"]
    await server.runtime.groups.stand_in(group, b_code, "fill")
    await until_state(a, "period_start")
    return a, group


async def test_a_slow_bot_decision_is_logged_once_naming_the_hook(
    server: Harness, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stand-in fills b's seat; its game's bot_decision takes 60 ms, each time outside any action
    of the group: one warning for several (the group, the game, bot_decision and the time). It
    stalled every group with nothing logged."""
    caplog.set_level(logging.WARNING, logger="synclab.live")
    monkeypatch.setattr(standins, "PACE", 0.05)  # a bot's decision every 25 to 75 ms (the server runs in this process)
    a, group = await filled_by_a_bot(server, "SlowBot")
    for _ in range(4):  # the start's, then three of the bot's
        await a.expect("group_decisions")
    one_slow_warning(caplog, group, "SlowBot", "bot_decision", "a stand-in's decision")


def hook_faults(caplog: pytest.LogCaptureFixture, hook: str) -> list[logging.LogRecord]:
    """The log lines of the game failing in ``hook`` (a hook the server calls outside an action)."""
    return [r for r in caplog.records if "failed" in r.getMessage() and hook in r.getMessage()
            and "held the event loop" not in r.getMessage()]


@pytest.mark.parametrize(("game", "fault"), [
    ("RaisingRole", "KeyError: "),
    ("SetRole", "GameFault: SetRole.role gave {'player'} for "),
])
async def test_a_role_that_fails_is_shown_unknown_and_every_member_gets_their_page(
    server: Harness, caplog: pytest.LogCaptureFixture, game: str, fault: str
) -> None:
    """The game's role raises (or gives a set, no JSON) for every member: each member's hello comes
    all the same with the role null (unknown, as a game without roles has), the period starts
    with both connected, and one log line names the group, the game, role and the fault for the
    three hellos. Each socket was closed with 1011 before its hello: no member's page could start."""
    caplog.set_level(logging.WARNING, logger="synclab.live")
    exp = await server.create(game=f"tests.server.test_game_faults:{game}", participants=2, group_size=2,
                              period_length=60)
    a_code, b_code = (p["code"] for p in exp["participants"])
    a, b = [await server.connect(c) for c in (a_code, b_code)]
    hellos = [(await c.expect("hello"))["payload"] for c in (a, b)]
    assert [h["role"] for h in hellos] == [None, None]
    await until_state(a, "period_start")
    await b.close()
    hellos.append((await (await server.connect(b_code)).expect("hello"))["payload"])  # b again
    assert hellos[-1]["role"] is None and hellos[-1]["phase"] == "running"
    logged = hook_faults(caplog, "role")
    assert len(logged) == 1, [r.getMessage() for r in logged]
    assert logged[0].getMessage().startswith(
        f"group {hellos[0]['group']}: the game {game} (tests.server.test_game_faults:{game}) failed in role "
    ) and fault in logged[0].getMessage(), logged[0].getMessage()
    assert (logged[0].exc_info is not None) is (game == "RaisingRole")  # the traceback of a raise


async def test_a_slow_role_is_logged_naming_the_hook(server: Harness, caplog: pytest.LogCaptureFixture) -> None:
    """The game's role takes 60 ms, asked by each member's hello outside any action of the group:
    logged, naming the group, the game and role (once for the two hellos)."""
    caplog.set_level(logging.WARNING, logger="synclab.live")
    exp = await server.create(game="tests.server.test_game_faults:SlowRole", participants=2, group_size=2,
                              period_length=60)
    a, b = [await server.connect(p["code"]) for p in exp["participants"]]
    group = (await a.expect("hello"))["payload"]["group"]
    assert (await b.expect("hello"))["payload"]["role"] == "player"
    one_slow_warning(caplog, group, "SlowRole", "role", "a member's role in a hello")


async def test_a_bot_decision_that_raises_logs_one_traceback_then_a_line_counting_the_rest(
    server: Harness, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stand-in fills b's seat; its game's bot_decision raises at each of its decisions (every 25
    to 75 ms here, the log's interval 0.3 s): the first failure is logged with its traceback,
    naming the group, the game and bot_decision, the next line counts those since. Every decision
    of every stand-in logged a traceback (about one a second each)."""
    caplog.set_level(logging.WARNING, logger="synclab.live")
    monkeypatch.setattr(standins, "PACE", 0.05)  # the server runs in this process
    monkeypatch.setattr(hooks, "HOOK_FAULTS_LOG_EVERY", 0.3)
    _, group = await filled_by_a_bot(server, "RaisingBot")
    await eventually(lambda: len(hook_faults(caplog, "bot_decision")) >= 2, wait=3)
    first, second = (r.getMessage() for r in hook_faults(caplog, "bot_decision")[:2])
    assert [r.exc_info is not None for r in hook_faults(caplog, "bot_decision")[:2]] == [True, False], (first, second)
    prefix = f"group {group}: the game RaisingBot (tests.server.test_game_faults:RaisingBot) failed in bot_decision "
    assert first.startswith(prefix) and "RuntimeError: no idea" in first, first
    counted = re.search(r"RuntimeError: no idea.*\((\d+) more such failures since the last line\)", second)
    assert second.startswith(prefix) and counted is not None and int(counted[1]) >= 2, second


async def test_a_stand_in_whose_arrival_the_game_fails_on_takes_the_seat_and_is_logged_once_where_it_ran(
    server: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """A stand-in fills b's seat and the game fails on the period's start its arrival makes: as a
    human's arrival, it counts all the same (its ``standin`` event stored, b's status ``bot``), and
    the failure is logged once, with its traceback, at the group's authority, which in a cluster
    may be another worker than the caller's. The caller got :class:`GameFailed` while the seat
    stayed held for a bot in memory that never played it (``tests/server/test_standins``); before
    that, the game's own exception, logged nowhere here (a lobby's fill, a stand-in following to
    the next block: "a background task failed"), and in a cluster "a request failed" there and
    that here."""
    caplog.set_level(logging.ERROR)
    exp = await server.create(game="tests.server.test_game_faults:RaisingStart", participants=2, group_size=2,
                              period_length=60)
    code = exp["code"]
    a_code, b_code = (p["code"] for p in exp["participants"])
    a = await server.connect(a_code)
    group = (await a.expect("hello"))["payload"]["group"]
    await server.runtime.groups.stand_in(group, b_code, "fill")  # resolved once stored
    stood = [e["value"] for e in await server.events(code) if e["channel"] == "standin"]
    assert stood == [{"participant": b_code, "reason": "fill", "playing": True}]
    rows = (await get(server, f"/api/experiments/{code}/participants"))["results"]
    assert {r["code"]: r["status"] for r in rows}[b_code] == "bot"
    logged = [r for r in caplog.records if "failed" in r.getMessage()]
    assert [r.getMessage() for r in logged] == [
        f"group {group}: the game RaisingStart failed when a bot took the seat of {b_code} (fill); the bot plays it all the same"]
    assert logged[0].exc_info is not None and str(logged[0].exc_info[1]) == "cannot start"


async def test_a_period_start_the_game_fails_on_never_runs_a_period_nobody_was_told_of(server: Harness) -> None:
    """Both members connect and the game fails as the period starts. Its group was left running
    in memory, unstored: 1 s later its clock stored a period_end and results of decision null,
    and the experiment was done, its sessions never started. Now the group waits as stored."""
    exp = await server.create(game="tests.server.test_game_faults:RaisingStart", participants=2, group_size=2,
                              period_length=1)
    code = exp["code"]
    clients = [await server.connect(p["code"]) for p in exp["participants"]]
    for client, p in zip(clients, exp["participants"], strict=True):
        assert (await client.expect("hello"))["payload"]["phase"] == "waiting"
        await until_connected(server, code, p["code"], True)
    await asyncio.sleep(timeout(2))  # the period's length and more
    assert [e["channel"] for e in await server.events(code) if e["channel"] in ("state", "result")] == []
    assert (await get(server, f"/api/experiments/{code}"))["status"] != "done"
    snapshot = (await get(server, f"/api/experiments/{code}/participants"))["results"]
    assert all(r["connected"] for r in snapshot)


def test_the_games_failure_at_another_worker_is_raised_again_as_it_was_raised_there() -> None:
    """What the group's worker answers for a game that failed there (:class:`GameFailed`) is raised
    as one on the asker's (``server.course`` skips its group, ``server.connection`` answers its
    frame ``game_error``), with its message; it was a :class:`RefusedAction` of no known kind."""
    back = exception_of(orjson.loads(orjson.dumps(error_of(GameFailed("the game failed on this frame: KeyError")))))
    assert type(back) is GameFailed and back.code == "game_error"
    assert back.message == "the game failed on this frame: KeyError"


def test_the_failures_between_two_log_lines_are_counted() -> None:
    """The throttle of those lines, its times given: the first of a kind is logged with its
    traceback (-1), the rest within the interval counted, the next line after it carries the
    count; a kind of its own (another group, another exception) is logged at once."""
    throttle = LogThrottle(5.0, kept=2)
    assert throttle.due((1, "RuntimeError"), 100.0) == -1
    assert [throttle.due((1, "RuntimeError"), 100.0 + i / 10) for i in range(1, 8)] == [None] * 7
    assert throttle.due((2, "RuntimeError"), 101.0) == -1  # another group
    assert throttle.due((1, "RuntimeError"), 105.1) == 7  # the line that counts those since
    assert throttle.due((1, "RuntimeError"), 111.0) == -1  # a quiet interval: a traceback again
    assert throttle.due((1, "KeyError"), 111.0) == -1  # past `kept`: the oldest kind forgotten
    assert len(throttle._last) == 2


class RaisingPayoff(PublicGoods):
    """public_goods whose payoff raises once somebody contributes 7 (at the next accrual: a pause)."""

    def payoffs(self, decisions: Any) -> dict[str, float]:
        if 7 in decisions.values():
            raise ZeroDivisionError("seven on purpose")
        return super().payoffs(decisions)


async def snapshot_of(server: Harness, code: str) -> dict[str, Any]:
    """What a monitor that opens now is shown of the experiment."""
    monitor = await server.monitor(code)
    try:
        return dict((await monitor.expect("snapshot"))["payload"])
    finally:
        await monitor.close()


@pytest.mark.parametrize("who", ["stand-in", "human"])
async def test_an_arrival_whose_start_the_game_fails_on_counts_and_leaves_the_group_waiting_as_the_monitor_shows(
    server: Harness, caplog: pytest.LogCaptureFixture, who: str
) -> None:
    """b arrives (a stand-in filling the seat, or b's own socket) and the game fails on the
    period's start it makes: b counts as connected in the core (its arrival stored: the stand-in's
    ``standin`` event, the human's connection), the rest is undone, and the group waits, in the
    core, in what it stored and in the monitor's snapshot alike. The core was left running a
    period the game never started (``when_all_players_ready`` raised), whose ``period_start`` and
    decisions were stored as if they fell due before the failure; the monitor showed it running
    and a stand-in's seat was added to the core's connected set from outside it."""
    caplog.set_level(logging.WARNING)
    exp = await server.create(game="tests.server.test_game_faults:RaisingStart", participants=2, group_size=2,
                              period_length=60)
    code = exp["code"]
    a_code, b_code = (p["code"] for p in exp["participants"])
    a = await server.connect(a_code)
    group = (await a.expect("hello"))["payload"]["group"]
    if who == "stand-in":
        await server.runtime.groups.stand_in(group, b_code, "fill")  # resolved once stored
    else:
        b = await server.connect(b_code)
        await b.expect("hello")
        await until_connected(server, code, b_code, True)
    live = server.runtime.groups.local(group)
    assert live is not None
    await eventually(lambda: not live._pending, wait=3)
    assert live.core.connected == {a_code, b_code}
    assert live.core.state.phase is live.committed.phase is Phase.WAITING
    stored = [e["channel"] for e in await server.events(code)]
    assert stored == (["standin"] if who == "stand-in" else []), stored
    snap = await snapshot_of(server, code)
    assert [g["phase"] for g in snap["groups"]] == ["waiting"]
    connected = {p["code"]: p["connected"] for p in snap["participants"]}
    assert connected == {a_code: True, b_code: who == "human"}  # (a stand-in has no socket)
    await a.silent(0.3)
    assert [f["channel"] for f in a.frames if f["channel"] in ("state", "group_decisions")] == []


async def test_the_experimenters_start_or_pause_that_the_game_fails_on_answers_500_and_leaves_the_group(
    server: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """The experimenter starts a group whose game fails on the start, and pauses one whose payoff
    fails at the pause's accrual: each call answers 500 naming the group the game failed in (the
    others acted on), the group is left as it was (waiting; running), nothing of the action is
    stored but the failure, as a ``game_fault`` event (as a tick's), and it is logged once where
    the game ran, in the game-failure line with its traceback. It answered 200 with the group left
    out of the list, and the start's half-made period (``period_start``, decisions, its game never
    told) was stored and ran; later the failure was in the log alone."""
    caplog.set_level(logging.ERROR)
    exp = await server.create(game="tests.server.test_game_faults:RaisingStart", participants=2, group_size=2,
                              period_length=60)
    code = exp["code"]
    a = await server.connect(exp["participants"][0]["code"])
    group = (await a.expect("hello"))["payload"]["group"]
    started = await server.http.post(f"/api/experiments/{code}/start")
    assert started.status_code == 500, started.text
    assert started.json() == {
        "error": f"start failed in 1 of 1 groups, each left as it was: group {group}: "
                 "the game failed on the experimenter's start: RuntimeError",
        "action": "start", "groups": [], "failed": [group]}
    stored = await until_events(server, code, 1)
    assert [(e["group"], e["channel"], e["participant"]) for e in stored] == [(group, "game_fault", None)]
    assert stored[0]["value"] == {"hook": "when_all_players_ready", "error": "RuntimeError", "message": "cannot start",
                                  "during": "start", "ended": False}
    assert [g["phase"] for g in (await snapshot_of(server, code))["groups"]] == ["waiting"]
    line = (f"group {group}: the game RaisingStart (tests.server.test_game_faults:RaisingStart) failed in the "
            "experimenter's start: RuntimeError: cannot start; the group is left as it was")
    logged = [r for r in caplog.records if r.getMessage() == line]
    assert len(logged) == 1 and logged[0].exc_info is not None, [r.getMessage() for r in caplog.records]

    exp = await server.create(game="tests.server.test_game_faults:RaisingPayoff", participants=4, group_size=2,
                              period_length=60)
    code = exp["code"]
    clients = [await server.connect(p["code"]) for p in exp["participants"]]
    hellos = [(await c.expect("hello"))["payload"] for c in clients]
    for client in clients:
        await until_state(client, "period_start")
    await decide(clients[0], 7, "seven")
    failing = hellos[0]["group"]
    other = next(h["group"] for h in hellos if h["group"] != failing)
    before = len(await server.events(code))
    paused = await server.http.post(f"/api/experiments/{code}/pause")
    assert paused.status_code == 500, paused.text
    assert paused.json()["groups"] == [other] and paused.json()["failed"] == [failing], paused.text
    phases = {g["id"]: g["phase"] for g in (await snapshot_of(server, code))["groups"]}
    assert phases == {failing: "running", other: "paused"}
    stored = [(e["group"], e["channel"]) for e in (await server.events(code))[before:]]
    assert (failing, "control") not in stored and (other, "control") in stored, stored
    faulted = [e for e in (await until_events(server, code, before + 2))[before:] if e["channel"] == "game_fault"]
    assert [(e["group"], e["value"]["during"], e["value"]["error"]) for e in faulted] == [
        (failing, "pause", "ZeroDivisionError")]
    assert sum("failed in the experimenter's pause: ZeroDivisionError" in r.getMessage() for r in caplog.records) == 1
