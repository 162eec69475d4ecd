"""``synclab verify CODE``: experiments played on a real server, checked from the stored log.

Four experiments play at once on one server (so the whole file stays a few seconds a database):
bimatrix with subperiods and a bonus, bimatrix in continuous time with a pause, public_goods of
three with subperiods (a second group never comes: its sessions stay unfinished), and public_goods
of three in continuous time, paused and then ended early by the experimenter. Each then verifies;
an altered score, an altered final_score and a deleted event are each named, and undoing the
alteration makes the experiment verify again.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import orjson
import pytest
from sqlalchemy import Engine, text

from groups import PublicGoods
from server.cli import main
from server.storage import create_schema, make_engine
from server.verify import verify
from tests.server.harness import Client, Harness, running_server, timeout, until_state
from tests.server.test_blocks import decide
from tests.server.test_cli import HEALTHY_SECONDS

PD = {"AA": [3, 3], "AB": [0, 5], "BA": [5, 0], "BB": [1, 1]}
#: the console script's entry point, run by this interpreter (as tests/server/test_cli.py does)
SYNCLAB = [sys.executable, "-c", "from server.cli import main; raise SystemExit(main())"]
#: settings of the developer's shell that must not leak into the command
SETTINGS = ("DATABASE_URL", "REDIS_URL", "PORT", "SYNCLAB_ADMIN_TOKEN", "SYNCLAB_MAX_FRAME_BYTES",
            "SYNCLAB_FRAMES_PER_SECOND", "SYNCLAB_FRAME_BURST", "SYNCLAB_SEND_QUEUE", "SYNCLAB_WRITER_MAX_BATCH",
            "SYNCLAB_SHUTDOWN_TIMEOUT")


# --------------------------------------------------------------------------- playing


async def one_group(server: Harness, exp: dict[str, Any]) -> list[Client]:
    """Connect the first participant's whole group (in member order), leaving the others away."""
    first = await server.connect(exp["participants"][0]["code"])
    members = (await first.expect("hello"))["payload"]["members"]
    others = [await server.connect(code) for code in members[1:]]
    return [first, *others]


async def play_subperiods(pair: list[Client]) -> None:
    """Row A from the start; col B in subperiod 0, then A in subperiod 1 (ticks at 2 and 4 s)."""
    row, col = pair
    await until_state(row, "period_start")
    await decide(row, 1.0, "r0")
    await decide(col, 0.0, "c0")
    # past the 2 s subperiod tick: its frame, seen perhaps while the ack was awaited (a fixed 1.1 s
    # from the ack put c1 after the period's end when the ack came 0.9 s late on a loaded machine)
    async with asyncio.timeout(timeout(5)):
        while not any(f["channel"] == "subperiod" for f in col.frames):
            await col.next()
    await decide(col, 1.0, "c1")
    for client in pair:
        await until_state(client, "period_end")


async def play_continuous_with_a_pause(server: Harness, code: str, pair: list[Client]) -> None:
    """Row moves to A, the experimenter pauses 0.3 s, col moves to 0.25 after the resume."""
    row, col = pair
    await until_state(row, "period_start")
    await asyncio.sleep(0.1)
    await decide(row, 1.0, "r")
    await asyncio.sleep(0.15)
    assert await server.runtime.groups.control(code, "pause") != []
    await asyncio.sleep(0.3)
    assert await server.runtime.groups.control(code, "resume") != []
    await decide(col, 0.25, "c")
    for client in pair:
        await until_state(client, "period_end")


async def play_public_goods(trio: list[Client]) -> None:
    a, b, c = trio
    await until_state(a, "period_start")
    await decide(a, 20, "a")
    await decide(b, 5.5, "b")
    await asyncio.sleep(0.4)
    await decide(c, 10, "c")
    await decide(a, 0, "a2")
    for client in trio:
        await until_state(client, "period_end")


async def play_and_end_while_paused(server: Harness, code: str, trio: list[Client]) -> None:
    """A 30 s period: contributions, a pause, and the experimenter's end during the pause."""
    a, b, _c = trio
    await until_state(a, "period_start")
    await decide(a, 7, "a")
    await asyncio.sleep(0.2)
    await decide(b, 3, "b")
    assert await server.runtime.groups.control(code, "pause") != []
    await asyncio.sleep(0.1)
    assert await server.runtime.groups.control(code, "end") != []
    for client in trio:
        await until_state(client, "period_end")


async def play_everything(url: str) -> dict[str, dict[str, Any]]:
    """Play the four experiments at once; returns each one's creation answer by name."""
    async with running_server(url) as server:
        made = {
            # periods of 4 s: the decisions land where they are meant to even when this busy machine
            # stalls for a second (a decision after the end would be refused; at 2 s the pairs' last
            # decision had the 1 s between the subperiod's tick and the end)
            "pairs": await server.create(period_length=4, num_subperiods=2, bonus_points=1.5, config={"payoffs": PD}),
            "flow": await server.create(period_length=4, config={"payoffs": PD}),
            "goods": await server.create(
                game="public_goods", participants=6, group_size=3, period_length=4, num_subperiods=4,
                config={"endowment": 20, "mpcr": 0.4},
            ),
            "ended": await server.create(game="public_goods", participants=3, group_size=3, period_length=30),
        }
        seated = {name: await one_group(server, exp) for name, exp in made.items()}
        await asyncio.gather(
            play_subperiods(seated["pairs"]),
            play_continuous_with_a_pause(server, made["flow"]["code"], seated["flow"]),
            play_public_goods(seated["goods"]),
            play_and_end_while_paused(server, made["ended"]["code"], seated["ended"]),
        )
    return made


# --------------------------------------------------------------------------- checking


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[pytest.MonkeyPatch]:
    """No setting of the developer's shell and no ``.env`` file reach the command."""
    for name in SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    yield monkeypatch


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(["verify", *args])
    out, err = capsys.readouterr()
    return status, out, err


def one(engine: Engine, sql: str, **params: Any) -> Any:
    with engine.connect() as conn:
        return conn.execute(text(sql), params).one()


def change(engine: Engine, sql: str, **params: Any) -> None:
    with engine.begin() as conn:
        assert conn.execute(text(sql), params).rowcount == 1


def test_played_experiments_verify_and_every_alteration_is_named(
    database_url: str, environment: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    made = asyncio.run(play_everything(database_url))
    environment.setenv("DATABASE_URL", database_url)
    engine = make_engine(database_url)
    try:
        counts = {"pairs": (4, 2, 0), "flow": (2, 2, 0), "goods": (12, 3, 3), "ended": (3, 3, 0)}
        for name, exp in made.items():
            status, out, err = run(capsys, exp["code"])
            assert (status, err) == (0, ""), out
            assert out.rstrip().endswith(": OK"), out
            report = verify(engine, exp["code"])
            assert (report.results, report.sessions, report.unfinished_sessions) == counts[name], report
            assert report.events > 0 and report.problems == []
        # the absent public_goods group is noted, not failed; so is the end during a pause
        assert "(3 unfinished)" in run(capsys, made["goods"]["code"])[1]

        status, out, _ = run(capsys, made["flow"]["code"], "--json")
        body = orjson.loads(out)
        assert status == 0 and body["ok"] is True and body["results"] == 2 and body["problems"] == []

        altered_score_is_named(engine, made["pairs"], capsys)
        altered_final_score_is_named(engine, made["ended"], capsys)
        deleted_event_is_a_gap(engine, made["flow"], capsys)

        status, out, err = run(capsys, "no-such-code")
        assert status == 2 and out == "" and "no experiment with code 'no-such-code'" in err
        finished = subprocess.run(
            [*SYNCLAB, "verify", made["goods"]["code"]], capture_output=True, text=True, check=False,
            timeout=timeout(HEALTHY_SECONDS), env={"DATABASE_URL": database_url, "PATH": "/usr/bin:/bin"}, cwd=Path.cwd(),
        )
        assert finished.returncode == 0, finished.stderr
        assert finished.stdout.rstrip().endswith(": OK") and "3 unfinished" in finished.stdout
    finally:
        engine.dispose()


def altered_score_is_named(engine: Engine, exp: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    """Row's subperiod-1 score + 0.25: that result and its session's final_score are named; undone, all agrees."""
    row_code = exp["participants"][0]["code"]
    seq, score = one(
        engine,
        "SELECT r.seq, r.score FROM results r JOIN sessions s ON s.id = r.session_id "
        "JOIN participants p ON p.id = s.participant_id WHERE p.code = :code AND r.subperiod = 1",
        code=row_code,
    )
    change(engine, "UPDATE results SET score = :score WHERE seq = :seq AND session_id IN "
           "(SELECT id FROM sessions WHERE experiment_id = (SELECT id FROM experiments WHERE code = :code))",
           score=score + 0.25, seq=seq, code=exp["code"])
    status, out, _ = run(capsys, exp["code"])
    assert status == 1
    mismatches = [line for line in out.splitlines() if line.startswith("MISMATCH")]
    assert any(f"participant {row_code} seq {seq}: subperiod 1 score {score + 0.25!r}, recomputed {score!r}" in line
               for line in mismatches), out
    assert any(f"participant {row_code} seq {seq}: the result event says" in line for line in mismatches), out
    assert any(f"participant {row_code}: final_score" in line for line in mismatches), out
    assert out.rstrip().endswith(f"{len(mismatches)} mismatches")
    change(engine, "UPDATE results SET score = :score WHERE seq = :seq AND session_id IN "
           "(SELECT id FROM sessions WHERE experiment_id = (SELECT id FROM experiments WHERE code = :code))",
           score=score, seq=seq, code=exp["code"])
    assert run(capsys, exp["code"])[0] == 0


def altered_final_score_is_named(engine: Engine, exp: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    """One session's final_score + 1: exactly its two lines (stored sum and recomputed); undone, all agrees."""
    code = exp["participants"][1]["code"]
    session_id, final = one(
        engine,
        "SELECT s.id, s.final_score FROM sessions s JOIN participants p ON p.id = s.participant_id WHERE p.code = :code",
        code=code,
    )
    change(engine, "UPDATE sessions SET final_score = :score WHERE id = :id", score=final + 1, id=session_id)
    status, out, _ = run(capsys, exp["code"])
    mismatches = [line for line in out.splitlines() if line.startswith("MISMATCH")]
    assert status == 1 and len(mismatches) == 2, out
    assert all(f"participant {code}: final_score {final + 1!r}" in line for line in mismatches), out
    change(engine, "UPDATE sessions SET final_score = :score WHERE id = :id", score=final, id=session_id)
    assert run(capsys, exp["code"])[0] == 0


def deleted_event_is_a_gap(engine: Engine, exp: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    """Row's decision event deleted: the gap at its seq, and the continuous scores no longer agree."""
    row_code = exp["participants"][0]["code"]
    (seq,) = one(
        engine,
        "SELECT e.seq FROM events e JOIN participants p ON p.id = e.participant_id "
        "WHERE p.code = :code AND e.channel = 'decisions'",
        code=row_code,
    )
    (last,) = one(engine, "SELECT last_seq FROM experiments WHERE code = :code", code=exp["code"])
    assert 1 < seq < last
    change(engine, "DELETE FROM events WHERE seq = :seq AND experiment_id = "
           "(SELECT id FROM experiments WHERE code = :code)", seq=seq, code=exp["code"])
    status, out, _ = run(capsys, exp["code"])
    assert status == 1
    assert f"MISMATCH experiment {exp['code']}: seq {seq} missing from the event log (a gap)" in out.splitlines()
    for person in exp["participants"]:
        assert f"participant {person['code']} seq" in out and "continuous score" in out, out


def test_a_bad_database_is_exit_2_and_nothing_is_created(
    environment: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing SQLite file is not created; a database without synclab's tables is named as such."""
    missing = tmp_path / "absent.db"
    environment.setenv("DATABASE_URL", f"sqlite:///{missing}")
    status, out, err = run(capsys, "anything")
    assert (status, out) == (2, "") and "no SQLite database" in err and not missing.exists()

    empty = tmp_path / "empty.db"
    engine = make_engine(f"sqlite:///{empty}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE unrelated (x INTEGER)"))
    engine.dispose()
    environment.setenv("DATABASE_URL", f"sqlite:///{empty}")
    status, out, err = run(capsys, "anything")
    assert (status, out) == (2, "") and "has no table 'experiments'" in err

    fresh = tmp_path / "fresh.db"
    engine = make_engine(f"sqlite:///{fresh}")
    create_schema(engine)
    engine.dispose()
    environment.setenv("DATABASE_URL", f"sqlite:///{fresh}")
    status, out, err = run(capsys, "nope")
    assert (status, out) == (2, "") and "no experiment with code 'nope'" in err


class Flaky(PublicGoods):
    """public_goods whose payoff raises once ``broken`` (a game mended or broken after the play)."""

    broken: ClassVar[bool] = False

    def payoff(self, participant: str, decisions: Any) -> float:
        if Flaky.broken:
            raise ZeroDivisionError("the game's own slip")
        return super().payoff(participant, decisions)


def test_a_game_that_raises_while_replaying_is_exit_2_not_a_mismatch(
    sqlite_url: str, environment: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """verify replays with the game's code: when that raises, verify cannot run (exit 2, one line
    naming the group and the error), where it ended in a traceback and exit 1, a mismatch's code."""

    async def played() -> str:
        async with running_server(sqlite_url) as server:
            exp = await server.create(game="tests.server.test_verify:Flaky", participants=2, group_size=2,
                                      period_length=2, num_subperiods=2)
            await play_subperiods(await one_group(server, exp))
            return str(exp["code"])

    code = asyncio.run(played())
    environment.setenv("DATABASE_URL", sqlite_url)
    assert run(capsys, code)[0] == 0
    monkeypatch.setattr(Flaky, "broken", True)
    status, out, err = run(capsys, code)
    assert (status, out) == (2, ""), (out, err)
    assert "the game failed while replaying it: ZeroDivisionError: the game's own slip" in err
    assert len(err.strip().splitlines()) == 1, err
