"""A fuzzer on the participant wire: hypothesis plays random sequences of frames against a real server.

Each example is a fresh server (uvicorn on port 0, SQLite) and a two-member bimatrix group whose
members are real WebSocket clients. Hypothesis draws what they do during the period: valid
decisions with ids from a small pool (so ids repeat, within a connection and across reconnects),
frames that are not JSON, not objects, of unknown channels, with bad decisions or ids, over the
16 KiB frame limit and over the 1 MiB socket limit, pings, reconnects, pauses and the
experimenter's pause and resume. After the period has ended the invariants must hold:

- nothing was logged at ERROR by the server;
- every acknowledged id is stored exactly once, with the ``seq`` its ack named;
- ``seq`` is gap-free from 1;
- the decisions each member last received (``hello``, ``group_decisions``, ``subperiod``) are the
  group's state folded from the stored events;
- ``synclab verify`` finds nothing wrong.

``SYNCLAB_FUZZ_EXAMPLES`` sets how many examples run (CI: a few; on demand: hundreds).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import and_, select
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from server.frames import WS_MAX_SIZE
from server.storage import events, experiments, make_engine, participants
from server.verify import verify
from tests.server.harness import Harness, eventually, running_server, timeout

EXAMPLES = int(os.environ.get("SYNCLAB_FUZZ_EXAMPLES", "3"))
PERIOD = 2.5
IDS = [f"id-{n}" for n in range(6)]
#: frames the server must refuse with an ``error`` frame (and change nothing)
BAD_FRAMES = [
    "{",
    "[]",
    '"decisions"',
    "null",
    '{"channel": 5, "payload": 0.5}',
    '{"channel": "no-such-channel", "payload": 1}',
    '{"channel": "decisions"}',
    '{"channel": "decisions", "payload": "cooperate"}',
    '{"channel": "decisions", "payload": 2}',
    '{"channel": "decisions", "payload": -0.5}',
    '{"channel": "decisions", "payload": NaN}',
    '{"channel": "decisions", "payload": 0.5, "id": 7}',
    '{"channel": "decisions", "payload": 0.5, "id": "' + "x" * 65 + '"}',
    '{"channel": "decisions", "payload": [0.5]}',
    '{"channel": "decisions", "payload": {"value": 0.5}}',
    '{"channel": "ping", "payload": 1, "id": {}}',
    '{"channel": "decisions", "payload": 0.5, "pad": "' + "y" * (17 * 1024) + '"}',  # over 16 KiB
]

member = st.integers(0, 1)
decide = st.tuples(st.just("decide"), member, st.floats(0, 1, allow_nan=False), st.sampled_from([*IDS, None]))
action = st.one_of(
    decide,
    decide,  # drawn as often as everything else together
    decide,
    decide,
    st.tuples(st.just("bad"), member, st.sampled_from(BAD_FRAMES)),
    st.tuples(st.just("binary"), member),
    st.tuples(st.just("ping"), member),
    st.tuples(st.just("reconnect"), member),
    st.tuples(st.just("huge"), member),
    st.tuples(st.just("sleep"), st.floats(0, 0.15)),
    st.tuples(st.just("control"), st.sampled_from(["pause", "resume"])),
)


@dataclass
class Member:
    """One participant: its current socket, every frame it got, and the acks by id."""

    code: str
    ws: ClientConnection | None = None
    reader: asyncio.Task[None] | None = None
    frames: list[dict[str, Any]] = field(default_factory=list)
    acks: dict[str, list[int]] = field(default_factory=dict)
    closes: list[int | None] = field(default_factory=list)

    async def open(self, base: str) -> None:
        await self.close()
        self.ws = await connect(
            f"{base}/ws/p/{self.code}", max_size=WS_MAX_SIZE, max_queue=None,
            open_timeout=timeout(5), close_timeout=timeout(2),
        )
        self.reader = asyncio.create_task(self._read(self.ws))

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for raw in ws:
                frame = orjson.loads(raw)
                self.frames.append(frame)
                if frame["channel"] == "ack":
                    self.acks.setdefault(frame["payload"]["id"], []).append(frame["payload"]["seq"])
        except ConnectionClosed:
            pass
        self.closes.append(ws.close_code)

    async def send(self, data: str | bytes) -> None:
        if self.ws is None:
            return
        with contextlib.suppress(ConnectionClosed):
            await self.ws.send(data)

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
            assert self.reader is not None
            await asyncio.wait_for(self.reader, timeout(5))
        self.ws = self.reader = None

    def last_state(self) -> dict[str, Any] | None:
        """The group decisions this member knows last: from hello, group_decisions or subperiod."""
        for frame in reversed(self.frames):
            channel, payload = frame["channel"], frame["payload"]
            if channel == "hello":
                return dict(payload["group_decisions"])
            if channel == "group_decisions":
                return dict(payload)
            if channel == "subperiod":
                return dict(payload["group_decisions"])
        return None


class ErrorLog(logging.Handler):
    """Every record at ERROR or above, from any logger."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def play(database_url: str, actions: list[tuple[Any, ...]]) -> None:
    errors = ErrorLog()
    logging.getLogger().addHandler(errors)
    try:
        async with running_server(database_url) as server:
            await _play(server, actions)
            code = server.runtime_code  # type: ignore[attr-defined]
        engine = make_engine(database_url)
        try:
            report = verify(engine, code)
        finally:
            engine.dispose()
        assert report.ok, report.problems
    finally:
        logging.getLogger().removeHandler(errors)
    assert not errors.records, [f"{r.name}: {r.getMessage()}" for r in errors.records]


async def _play(server: Harness, actions: list[tuple[Any, ...]]) -> None:
    exp = await server.create(period_length=PERIOD, block_pause=0)
    code = exp["code"]
    server.runtime_code = code  # type: ignore[attr-defined]
    members = [Member(p["code"]) for p in exp["participants"]]
    sent: dict[tuple[str, str], float] = {}
    try:
        for m in members:
            await m.open(server.ws_base)
        await _until_started(members)
        for act in actions:
            kind = act[0]
            if kind == "sleep":
                await asyncio.sleep(act[1])
                continue
            if kind == "control":
                response = await server.http.post(f"/api/experiments/{code}/{act[1]}")
                assert response.status_code in (200, 409), response.text
                continue
            m = members[act[1]]
            if kind == "decide":
                frame: dict[str, Any] = {"channel": "decisions", "payload": act[2]}
                if act[3] is not None:
                    frame["id"] = act[3]
                    sent.setdefault((m.code, act[3]), act[2])
                await m.send(orjson.dumps(frame).decode())
            elif kind == "bad":
                await m.send(act[2])
            elif kind == "binary":
                await m.send(b'{"channel": "decisions", "payload": 0.5}')
            elif kind == "ping":
                await m.send('{"channel": "ping", "payload": {"timestamp": 1}}')
            elif kind == "huge":
                # over the socket's 1 MiB: closed with 1009, then the member comes back
                await m.send('{"channel": "decisions", "payload": "' + "z" * WS_MAX_SIZE + '"}')
                await asyncio.sleep(0.05)
                await m.open(server.ws_base)
            elif kind == "reconnect":
                await m.open(server.ws_base)
        # let the period end (a pause left on would hold it: resume), every member connected
        await server.http.post(f"/api/experiments/{code}/resume")
        for m in members:
            if m.ws is None or m.reader is None or m.reader.done():
                await m.open(server.ws_base)
        await _until_ended(server, code)
        await asyncio.sleep(0.2)  # the last broadcasts reach every member
        for m in members:
            await m.close()
    finally:
        for m in members:
            with contextlib.suppress(Exception):
                await m.close()

    events = await server.events(code)
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(1, len(seqs) + 1)), f"seq has gaps or repeats: {seqs}"

    # every acknowledged id is stored once, with the seq its acks named
    stored_ids = await _stored_client_ids(server, code)
    for m in members:
        for frame_id, acked in m.acks.items():
            assert len(set(acked)) == 1, f"{m.code} {frame_id}: acked with different seqs {acked}"
            assert stored_ids.get((m.code, frame_id)) == [acked[0]], (m.code, frame_id, acked, stored_ids)
    assert all(len(v) == 1 for v in stored_ids.values()), stored_ids

    # what each member last saw is the state folded from the stored events
    folded: dict[str, Any] | None = None
    for e in events:
        if e["channel"] == "group_decisions":
            folded = dict(e["value"])
        elif e["channel"] == "subperiod":
            folded = dict(e["value"]["group_decisions"])
    for m in members:
        seen = m.last_state()
        assert seen is not None, f"{m.code} never got a state"
        if folded is not None:
            assert seen == folded, f"{m.code} last saw {seen}, the stored events fold to {folded}"


async def _until_started(members: list[Member]) -> None:
    """Until every member has seen ``period_start`` (so most decisions drawn are in the period)."""
    await eventually(
        lambda: all(any(f["channel"] == "state" and f["payload"] == "period_start" for f in m.frames) for m in members),
        wait=10,
    )


async def _until_ended(server: Harness, code: str) -> None:
    async with asyncio.timeout(timeout(PERIOD * 4 + 10)):
        while True:
            response = await server.http.get(f"/api/experiments/{code}")
            if response.json()["status"] in ("done", "cancelled", "failed"):
                return
            await asyncio.sleep(0.1)


async def _stored_client_ids(server: Harness, code: str) -> dict[tuple[str, str], list[int]]:
    """(participant code, client id) -> the seqs of the stored events with that id (the API does not show ids)."""
    query = (
        select(participants.c.code, events.c.client_id, events.c.seq)
        .select_from(events.join(participants, participants.c.id == events.c.participant_id))
        .join(experiments, experiments.c.id == events.c.experiment_id)
        .where(and_(experiments.c.code == code, events.c.client_id.is_not(None)))
    )
    found: dict[tuple[str, str], list[int]] = {}
    engine = make_engine(server.runtime.settings.database_url)
    try:
        with engine.connect() as conn:
            for participant, client_id, seq in conn.execute(query):
                found.setdefault((participant, client_id), []).append(seq)
    finally:
        engine.dispose()
    return found


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=os.environ.get("CI") == "true",
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(actions=st.lists(action, min_size=10, max_size=40))
def test_random_frames_reconnects_and_controls_keep_every_invariant(tmp_path: Path, actions: list[tuple[Any, ...]]) -> None:
    database = tmp_path / f"fuzz-{os.urandom(4).hex()}.db"
    asyncio.run(play(f"sqlite:///{database}", actions))
