"""``synclab bots CODE``: simulated participants on real WebSockets against a real server."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from groups import DecisionGroup
from groups.public_goods import PublicGoods
from server import ticks
from server.bot import FINISHED, Bot
from server.bots import BotReport, run_bots
from server.cli import main
from server.settings import Settings
from server.storage import list_tokens, make_engine
from server.verify import run_verify
from tests.server.harness import TOKEN, Client, Harness, timeout
from tests.server.test_cli import free_port

#: settings of the developer's shell that must not leak into the command
SETTINGS = ("DATABASE_URL", "REDIS_URL", "PORT", "SYNCLAB_ADMIN_TOKEN", "SYNCLAB_MAX_FRAME_BYTES",
            "SYNCLAB_FRAMES_PER_SECOND", "SYNCLAB_FRAME_BURST", "SYNCLAB_SEND_QUEUE", "SYNCLAB_WRITER_MAX_BATCH",
            "SYNCLAB_SHUTDOWN_TIMEOUT")


async def get(server: Harness, path: str) -> Any:
    response = await server.http.get(path, params={"page_size": 1000})
    assert response.status_code == 200, response.text
    return response.json()


async def bots(server: Harness, code: str, wait: float = 30.0, **options: Any) -> BotReport:
    """Run the bots on ``code`` to their end (bounded by ``wait`` seconds)."""
    options.setdefault("rate", 4.0)
    options.setdefault("time_limit", timeout(wait))
    return await asyncio.wait_for(run_bots(server.base, code, TOKEN, **options), timeout(wait + 10))


async def until_connected(server: Harness, code: str, participant: str, connected: bool = True) -> None:
    """Poll the participants list until ``participant`` shows ``connected`` (at most 5 s)."""
    for _ in range(int(timeout(5) / 0.05)):
        people = (await get(server, f"/api/experiments/{code}/participants"))["results"]
        if next(p for p in people if p["code"] == participant)["connected"] is connected:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"participant {participant} never showed connected={connected}")


async def until_event(server: Harness, code: str, value: Any, wait: float = 10.0) -> None:
    for _ in range(int(timeout(wait) / 0.05)):
        if any(e["value"] == value for e in await server.events(code)):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"experiment {code} never stored {value!r}")


async def until_frame(client: Client, channel: str, value: Any, wait: float = 10.0) -> None:
    async with asyncio.timeout(timeout(wait)):
        while (await client.expect(channel, wait))["payload"] != value:
            pass


def clean(report: BotReport) -> None:
    """Nothing went wrong: a refusal is only a decision sent as its period ended."""
    assert report.ok and not report.timed_out, report.summary()
    assert report.errors == [], report.errors
    assert set(report.refused) <= {"not_running"}, report.refused
    assert 0 < report.acked <= report.sent


async def test_bots_play_a_two_block_public_goods_experiment_to_done(server: Harness, sqlite_url: str) -> None:
    """Six bots, two groups of three, two blocks: done, every session finished, and it verifies."""
    exp = await server.create(
        game="public_goods", participants=6, group_size=3, blocks=2, period_length=2, num_subperiods=4,
        block_pause=0.3, config={"endowment": 20, "mpcr": 0.4},
    )
    code = exp["code"]
    everyone = {p["code"] for p in exp["participants"]}

    report = await bots(server, code, seed=7)

    clean(report)
    assert (report.participants, report.connected, report.bots, report.finished) == (6, 0, 6, 6)
    assert report.status == "done"
    assert (await get(server, f"/api/experiments/{code}"))["status"] == "done"
    sessions = (await get(server, f"/api/experiments/{code}/sessions"))["results"]
    assert len(sessions) == 12
    for person in everyone:
        mine = [s for s in sessions if s["participant"] == person]
        assert sorted(s["block"] for s in mine) == [0, 1]
        assert all(s["started_at"] and s["finished_at"] for s in mine)
    events = await server.events(code)
    decisions = [e for e in events if e["channel"] == "decisions"]
    assert {e["participant"] for e in decisions} == everyone
    assert len({(e["participant"], e["group"]) for e in decisions}) == 12  # each bot decided in each block
    assert all(0 <= e["value"] <= 20 for e in decisions)
    assert len(decisions) == report.acked
    assert run_verify(Settings(database_url=sqlite_url), code) == 0


async def test_bots_play_a_users_game_with_its_own_strategy(server: Harness, sqlite_url: str) -> None:
    """The stag hunt of docs/writing-a-game.md, named by import path: its bots send its strings."""
    exp = await server.create(game="examples.stag_hunt:StagHunt", participants=3, group_size=3, period_length=2.5)

    report = await bots(server, exp["code"], seed=3)

    clean(report)
    assert report.finished == 3 and report.status == "done"
    moves = {e["value"] for e in await server.events(exp["code"]) if e["channel"] == "decisions"}
    assert moves and moves <= {"stag", "hare"}
    assert run_verify(Settings(database_url=sqlite_url), exp["code"]) == 0


async def test_bots_play_the_min_effort_example_and_verify_recomputes_its_scores(server: Harness, sqlite_url: str) -> None:
    """The guide's second example, named by import path: its bots send efforts from 1 to 7."""
    exp = await server.create(game="examples.min_effort:MinEffort", participants=4, group_size=2, period_length=2.5)

    report = await bots(server, exp["code"], seed=5)

    clean(report)
    assert report.finished == 4 and report.status == "done"
    moves = {e["value"] for e in await server.events(exp["code"]) if e["channel"] == "decisions"}
    assert moves and moves <= set(range(1, 8))
    assert run_verify(Settings(database_url=sqlite_url), exp["code"]) == 0


async def test_a_connected_human_is_not_played(server: Harness) -> None:
    exp = await server.create(game="bimatrix", participants=2, group_size=2, period_length=2.5)
    code = exp["code"]
    person, other = (p["code"] for p in exp["participants"])
    human = await server.connect(person)
    await human.expect("hello")
    await until_connected(server, code, person)

    report = await bots(server, code)

    clean(report)
    assert (report.participants, report.connected, report.bots, report.finished) == (2, 1, 1, 1)
    await until_frame(human, "state", "period_end")
    assert human.ws.close_code is None  # never replaced by a bot
    decided = {e["participant"] for e in await server.events(code) if e["channel"] == "decisions"}
    assert decided == {other}
    moves = [f["payload"][other] for f in human.frames if f["channel"] == "group_decisions"]
    assert len(set(moves)) > 1  # the human saw the bot move


async def test_a_human_taking_over_stops_that_bot(server: Harness) -> None:
    """Close code 4000 (a newer connection of the same code) ends that bot, and is no error."""
    exp = await server.create(game="bimatrix", participants=2, group_size=2, period_length=2)
    code = exp["code"]
    person = exp["participants"][0]["code"]
    run = asyncio.create_task(bots(server, code))
    await until_event(server, code, "period_start")
    human = await server.connect(person)
    assert (await human.expect("hello"))["payload"]["phase"] == "running"

    report = await run

    clean(report)
    assert (report.bots, report.replaced, report.finished, report.failed) == (2, 1, 1, 0)
    assert report.status == "done"
    assert human.ws.close_code is None


async def test_a_dropped_bot_connects_again_and_plays_on(server: Harness) -> None:
    exp = await server.create(game="bimatrix", participants=2, group_size=2, period_length=2.5)
    code = exp["code"]
    players = [
        Bot(p["code"], f"{server.ws_base}/ws/p/{p['code']}", rate=5.0, rng=random.Random(i), pace=random.Random(i),
            prefix=f"drop-{i}")
        for i, p in enumerate(exp["participants"])
    ]
    tasks = [asyncio.create_task(bot.play()) for bot in players]
    try:
        dropped = players[0]
        loop = asyncio.get_running_loop()
        give_up = loop.time() + timeout(5)
        while loop.time() < give_up:  # until a frame is out and not yet acknowledged
            if dropped.sent >= 2 and dropped.unacked:
                break
            await asyncio.sleep(0)
        assert dropped.sent >= 2 and dropped.unacked
        socket = dropped._ws
        assert socket is not None
        socket.transport.abort()  # the TCP connection is gone, without a close frame
        await asyncio.wait_for(asyncio.gather(*tasks), timeout(15))
    finally:
        for task in tasks:
            task.cancel()
    assert [bot.outcome for bot in players] == [FINISHED, FINISHED]
    assert dropped.reconnects == 1 and dropped.errors == []
    assert dropped.resent >= 1  # what was out at the drop went again with its id
    late = [e for e in await server.events(code) if e["participant"] == dropped.participant and e["channel"] == "decisions"]
    assert len(late) == dropped.acked  # every frame stored once, resent or not
    assert dropped.acked >= 3  # it went on deciding after the drop


class RaisingBot(PublicGoods):
    """public_goods whose bot_decision fails every time (found by its import path)."""

    def bot_decision(self, participant: str, decisions: Any, rng: Any) -> Any:
        raise RuntimeError(f"no idea for {participant}")


async def test_a_game_failing_in_every_bot_is_one_error_line_with_a_count(server: Harness) -> None:
    """Four bots, two blocks, a bot_decision that always raises: eight failures (each bot holds still
    until its next block), reported as the first in full and a count of the rest, as the server
    logs a stand-in's failing bot_decision."""
    exp = await server.create(game="tests.server.test_bots:RaisingBot", participants=4, group_size=2, blocks=2,
                              period_length=2, block_pause=0.2)

    report = await bots(server, exp["code"])

    assert report.ok and report.status == "done" and report.finished == 4, report.summary()
    assert report.sent == 0
    assert len(report.errors) == 1, report.errors
    assert report.errors[0].startswith("participant "), report.errors
    assert "RaisingBot.bot_decision failed, so this bot holds still: RuntimeError('no idea for " in report.errors[0]
    assert report.errors[0].endswith("; 7 more such failures (4 bots in all)"), report.errors


async def test_the_games_failures_only_the_server_sees_are_reported_with_a_count(
    server: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A payoff that always raises fails in the scheduler's tick, where no bot is told of it: the
    server records it (``game_fault``) and, its period's end long past (1 s here), ends the group
    without its game. The run reports the recorded failures, the first in full and a count of the
    others, and none from before the run. It used to report no error at all."""
    monkeypatch.setattr(ticks, "GAME_FAULT_END_AFTER", 1.0)  # the server runs in this process
    exp = await server.create(game="tests.server.test_game_faults:Broken", participants=2, group_size=2,
                              period_length=1, num_subperiods=1)

    report = await bots(server, exp["code"])

    assert report.ok and report.status == "cancelled", report.summary()
    group = (await server.events(exp["code"]))[0]["group"]
    assert report.errors == [
        f"group {group}: the game's payoff failed during tick (recorded by the server): "
        "ZeroDivisionError: broken on purpose; 1 more such failure"
    ], report.errors
    again = await run_bots(server.base, exp["code"], TOKEN)  # ended: nothing played, nothing new reported
    assert again.errors == [] and again.bots == 0


# --------------------------------------------------------------------------- the command


@pytest.fixture
def shell(tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The command's environment: the test's database, no other synclab setting, no ``.env``."""
    for name in SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABASE_URL", sqlite_url)
    monkeypatch.chdir(tmp_path)
    yield


async def synclab(*args: str) -> int:
    """``synclab ARGS`` in a thread, so the server in this event loop keeps serving."""
    return await asyncio.wait_for(asyncio.to_thread(main, list(args)), timeout(40))


@pytest.mark.usefixtures("shell")
async def test_the_command_plays_with_a_watch_token_of_its_own_and_deletes_it(
    server: Harness, sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --token or SYNCLAB_ADMIN_TOKEN the bots make a ``watch`` token for the run (stored
    tokens are hashes: none can be read back) and delete it when they end."""
    exp = await server.create(game="public_goods", participants=3, group_size=3, period_length=2.5)

    assert await synclab("bots", exp["code"], "--url", server.base, "--rate", "3", "--seed", "1") == 0

    out, err = capsys.readouterr()
    assert f"experiment {exp['code']} is done" in out and "3 bots (3 finished)" in out, out
    assert err == ""
    assert await synclab("verify", exp["code"]) == 0
    assert await synclab("bots", exp["code"], "--url", server.base) == 0  # nothing left to play
    assert "done already: nothing to play" in capsys.readouterr().out
    engine = make_engine(sqlite_url)
    try:
        assert list_tokens(engine) == []
    finally:
        engine.dispose()


@pytest.mark.usefixtures("shell")
async def test_the_command_refuses_what_it_cannot_run(
    server: Harness, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cases = [
        (["NOSUCHCODE", "--url", server.base, "--token", TOKEN], "no experiment with code 'NOSUCHCODE'"),
        (["NOSUCHCODE", "--url", server.base, "--token", "wrong"], "refused the experimenter token (403"),
        (["NOSUCHCODE", "--url", f"http://127.0.0.1:{free_port()}", "--token", TOKEN], "cannot reach the server"),
        (["NOSUCHCODE", "--url", "ftp://127.0.0.1", "--token", TOKEN], "--url: expected"),
        (["NOSUCHCODE", "--url", server.base, "--token", TOKEN, "--rate", "0"], "--rate: expected a number > 0"),
        (["NOSUCHCODE", "--url", server.base], "no experiment with code 'NOSUCHCODE'"),  # with a token of its own
    ]
    for args, message in cases:
        assert await synclab("bots", *args) == 2, args
        err = capsys.readouterr().err
        assert message in err, (args, err)
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path}/missing.db")
    assert await synclab("bots", "NOSUCHCODE", "--url", server.base) == 2
    assert "no experimenter token: pass --token or set SYNCLAB_ADMIN_TOKEN" in capsys.readouterr().err
    monkeypatch.setenv("SYNCLAB_ADMIN_TOKEN", TOKEN)  # the environment's token is used
    assert await synclab("bots", "NOSUCHCODE", "--url", server.base) == 2
    assert "no experiment with code" in capsys.readouterr().err


class StartsWithASet(DecisionGroup):
    """Its initial decisions are sets: the period's start cannot be stored, so it never starts."""

    def initial_decision(self, participant: str) -> Any:
        return {1, 2}


async def test_a_group_whose_members_are_all_here_but_never_starts_is_not_blamed_on_a_missing_member(
    server: Harness,
) -> None:
    """Every member connected (the run's bots), the game failed at the start: the time limit's
    message said the group waited "for a member who is not connected", sending the researcher to
    the monitor's start button instead of the server's log."""
    exp = await server.create(game="tests.server.test_bots:StartsWithASet", participants=2, group_size=2)

    report = await bots(server, exp["code"], wait=2)

    assert report.timed_out
    (message,) = report.errors
    assert "not connected" not in message, message
    assert "2 of them in a group whose members are all connected" in message, message
    assert "the game may have failed as it started (the server's log says)" in message, message


@pytest.mark.usefixtures("shell")
async def test_the_command_exits_1_at_its_time_limit(server: Harness, capsys: pytest.CaptureFixture[str]) -> None:
    exp = await server.create(game="bimatrix", participants=2, group_size=2, period_length=30)

    assert await synclab("bots", exp["code"], "--url", server.base, "--token", TOKEN, "--timeout", "1") == 1

    out, err = capsys.readouterr()
    assert "timed out after 1 s with experiment" in err and "2 bots had not finished" in err, err
    assert "2 bots (2 stopped)" in out and "TIMED OUT" in out, out
    people = (await get(server, f"/api/experiments/{exp['code']}/participants"))["results"]
    for person in people:  # the bots closed their sockets on the way out
        await until_connected(server, exp["code"], person["code"], connected=False)
