"""A game's own private message names its recipient in the event log, on every channel.

A game sends to some members only with ``send(channel, payload, to=[…])``; the event it stores
names the one member it went to (``events.recipient_id``), as a ``result`` event names the
participant whose result it is: in the database, in ``GET …/events``, in the exports (HTTP and
``synclab export``) and in the monitor's live rows. Sent to several members, to the group, or by a
participant, the event names no recipient.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import Engine, select

from groups import DecisionGroup
from server.cli import main
from server.storage import events, participants
from tests.server.harness import Client, Harness, running_server, until_state
from tests.server.test_monitor import rows_until


class Tips(DecisionGroup):
    """A test game of private messages: a member's ``tip`` is sent on to the members it names
    (``to``), or to the whole group when it names none."""

    channels = frozenset({"tip"})

    def on_tip(self, participant: str, payload: Any) -> None:
        self.send("tip", payload["text"], to=payload.get("to"))


#: each tip's text, and the members it goes to: by their place in the group (None: the group)
TIPS: dict[str, list[int] | None] = {"to one": [1], "to another": [2], "to two": [1, 2], "to all": None}


async def tipped(server: Harness, monitor: bool = False) -> tuple[str, list[str], Client | None]:
    """An experiment of three tipping members: the first sends :data:`TIPS`, each acknowledged
    (stored); its code, the members' codes, and the monitor that watched it (if ``monitor``)."""
    exp = await server.create(game=f"{__name__}:Tips", participants=3, group_size=3, period_length=600)
    code = exp["code"]
    mon = await server.monitor(code) if monitor else None
    clients = [await server.connect(p["code"]) for p in exp["participants"]]
    hello = await clients[0].expect("hello")
    members = hello["payload"]["members"]
    await until_state(clients[0], "period_start")
    for i, (text, to) in enumerate(TIPS.items()):
        await clients[0].send("tip", {"text": text, "to": None if to is None else [members[k] for k in to]}, f"t{i}")
        await clients[0].expect("ack")
    return code, members, mon


def sent_tips(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The recipient of each tip the server sent (by its text), from event rows."""
    return {r["value"]: r["recipient"] for r in rows if r["channel"] == "tip" and r["participant"] is None}


def expected(members: list[str]) -> dict[str, str | None]:
    return {text: members[to[0]] if to is not None and len(to) == 1 else None for text, to in TIPS.items()}


def stored_tips(engine: Engine) -> dict[str, str | None]:
    """The recipient's code of each tip the server sent, as the database holds it."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(events.c.value, participants.c.code)
            .select_from(events.outerjoin(participants, participants.c.id == events.c.recipient_id))
            .where(events.c.channel == "tip", events.c.participant_id.is_(None))
        ).all()
    return {value: who for value, who in rows}


async def test_a_tip_to_one_member_names_it_in_the_database_the_api_the_exports_and_the_monitor(
    any_server: Harness, database_url: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:
    """A game's ``send("tip", …, to=[member])`` names that member as the event's ``recipient``; a
    tip to two members or to the group names none; the member's own ``tip`` frames name none
    (they have a ``participant``). The same in the stored row, ``GET …/events``, both exports over
    HTTP, ``synclab export --table events`` (CSV and JSON) and the monitor's live rows."""
    server = any_server
    code, members, mon = await tipped(server, monitor=True)
    want = expected(members)
    assert want["to one"] == members[1] and want["to two"] is None
    listed = await server.events(code)  # (a read waits for the journal's apply)
    assert sent_tips(listed) == want
    assert all(r["recipient"] is None for r in listed if r["channel"] == "tip" and r["participant"] is not None)
    assert await server.runtime.database.read(stored_tips) == want

    as_csv = (await server.http.get(f"/api/experiments/{code}/export.csv", params={"table": "events"})).text
    assert sent_tips(_csv_rows(as_csv)) == want
    as_json = (await server.http.get(f"/api/experiments/{code}/export.json", params={"table": "events"})).content
    assert sent_tips(orjson.loads(as_json)) == want

    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.setenv("DATABASE_URL", database_url)
    for fmt, rows in (("csv", _csv_rows), ("json", orjson.loads)):
        assert main(["export", code, "--table", "events", "--format", fmt]) == 0
        assert sent_tips(rows(capsys.readouterr().out)) == want, fmt

    assert mon is not None
    live = await rows_until(mon, lambda rs: len(sent_tips(rs)) == len(TIPS))
    assert sent_tips(live) == want


async def test_the_direct_writer_on_sqlite_stores_a_tips_recipient_too(sqlite_url: str) -> None:
    """Without the journal (``SYNCLAB_JOURNAL=off``) SQLite's writer stores the recipient as the
    journal's apply does."""
    async with running_server(sqlite_url, journal="off") as server:
        code, members, _ = await tipped(server)
        assert await server.runtime.database.read(stored_tips) == expected(members)
        assert sent_tips(await server.events(code)) == expected(members)


def _csv_rows(text: str) -> list[dict[str, Any]]:
    """An events CSV's rows as the JSON has them: ``value`` decoded, an empty cell ``None``."""
    rows = list(csv.DictReader(io.StringIO(text)))
    for row in rows:
        row["value"] = orjson.loads(row["value"])
        row["participant"] = row["participant"] or None
        row["recipient"] = row["recipient"] or None
    return rows
