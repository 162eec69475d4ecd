"""The experimenter's live feed: ``WS /ws/monitor/{code}``, the token in the first frame.

No secret travels in the URL (where access logs, browser history and proxies would keep it):
the socket is accepted, and the client's first frame must be ``{"channel": "auth", "payload":
{"token": ...}}`` within :data:`AUTH_SECONDS`, else it is closed with 4401; an unknown or
revoked token is closed with 4403 (the reason says which). A ``?token=`` in the URL, as the
contract's older clients send it, is still taken (deprecated; the server's log masks it, and no
page of synclab sends it). Any
account may watch (``admin`` or ``watch``); the token is checked again every second, so a
revoked one is cut off within about two.

Once in, the monitor gets a ``snapshot`` of the experiment (groups, their phase and decisions,
who is connected), then everything stored after it: ``events`` frames, each a list of event rows
batched every :data:`FLUSH_EVERY` seconds, ``connection`` frames as participants come and go,
``stats`` every second (the events this monitor was sent: in a cluster they are stored on any
worker) and ``experiment`` when the status changes.

A monitor never holds up the participants: a live group publishes one encoded list per stored
write (skipped when no monitor listens), and the monitor only appends it to its buffer; a
monitor that falls :data:`MAX_BUFFERED` writes behind is closed with 4008 and reconnects to a
fresh snapshot.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Any

import orjson
from starlette.websockets import WebSocket, WebSocketDisconnect

from .accounts import Account, Refused
from .exceptions import (
    WS_4008_TOO_SLOW,
    WS_4401_UNAUTHENTICATED,
    WS_4403_TOKEN_REFUSED,
    WS_4404_UNKNOWN,
)
from .experimentapi import experiment_body
from .hub import monitor_presence_topic, monitor_topic
from .meter import Meter
from .progress import participant_progress
from .runtime import Runtime
from .storage import experiment_participants, experiment_row, experiment_timing, monitor_state
from .tasks import ended
from .wire import encode, ms

#: seconds between two ``events`` frames
FLUSH_EVERY = 0.1
#: seconds between two ``stats`` frames
STATS_EVERY = 1.0
#: stored writes a monitor may be behind before it is cut off
MAX_BUFFERED = 20_000
#: seconds a monitor has to send its ``auth`` frame
AUTH_SECONDS = 5.0
#: the first frame a monitor must send
AUTH_FRAME = '{"channel": "auth", "payload": {"token": "<an experimenter token>"}}'


class Monitor:
    """One monitor socket: buffers what the hub delivers and sends it in batches."""

    def __init__(self, websocket: WebSocket, meter: Meter) -> None:
        self.websocket = websocket
        #: JSON lists of event rows, one per stored write, not sent yet
        self.rows: list[str] = []
        #: whole ``connection`` frames, not sent yet
        self.frames: list[str] = []
        self.overflowed = False
        self.after_seq = 0
        #: the experiment's throughput and broadcast latency (wherever it was stored), shared with
        #: its other monitors here; this one counts from ``counted``
        self.meter = meter
        self.counted = meter.events

    def deliver(self, to: frozenset[str] | None, data: str) -> None:
        if self.overflowed:
            return
        if data.startswith("["):
            self.rows.append(data)
            self.meter.observe(data)
        else:
            self.frames.append(data)
        if len(self.rows) + len(self.frames) > MAX_BUFFERED:
            self.overflowed = True
            self.rows.clear()
            self.frames.clear()

    def lost(self) -> None:
        """Frames for this monitor may have been lost (Redis reconnected): it starts over from a snapshot."""
        self.overflowed = True

    def take_events(self) -> str | None:
        """The buffered rows as one ``events`` frame (rows up to ``after_seq`` dropped), or None."""
        if not self.rows:
            return None
        chunks, self.rows = self.rows, []
        if self.after_seq:
            kept = [r for chunk in chunks for r in orjson.loads(chunk) if r["seq"] > self.after_seq]
            self.after_seq = 0
            return encode("events", kept) if kept else None
        body = ",".join(chunk[1:-1] for chunk in chunks if len(chunk) > 2)
        return '{"channel":"events","payload":[' + body + "]}"

    def take_frames(self) -> list[str]:
        frames, self.frames = self.frames, []
        return frames


async def monitor_socket(websocket: WebSocket) -> None:
    rt: Runtime = websocket.app.state.runtime
    await websocket.accept()
    # CONTRACT §4's ``?token=`` still works for the clients written against it (the log masks it,
    # see server.redaction); the page, and every new client, send it in the first frame instead
    token = websocket.query_params.get("token") or await _auth_frame(websocket)
    if token is None:
        return
    found = await rt.accounts.identify(token)
    if isinstance(found, Refused):
        await websocket.close(WS_4403_TOKEN_REFUSED, found.reason)
        return
    code = str(websocket.path_params["code"])
    row = await rt.database.read(experiment_row, code)
    if row is None:
        await websocket.close(WS_4404_UNKNOWN, "unknown experiment")
        return
    meter = rt.meters.get(row["id"])
    if meter is None:  # held by its monitors: gone with the last of them
        meter = rt.meters[row["id"]] = Meter(time.time)
    monitor = Monitor(websocket, meter)
    topics = (monitor_topic(row["id"]), monitor_presence_topic(row["id"]))
    for topic in topics:  # first: nothing stored after the snapshot's read is missed
        rt.hub.subscribe(topic, monitor)
    try:
        snapshot = await _snapshot(rt, websocket, row)
        monitor.after_seq = snapshot["last_seq"]
        await websocket.send_text(encode("snapshot", snapshot))
        receiver = asyncio.create_task(_drain(websocket))
        try:
            await _send_loop(rt, monitor, row, receiver, token)
        finally:
            await ended([receiver])
    except (WebSocketDisconnect, RuntimeError):
        pass  # the page went away while we sent
    finally:
        for topic in topics:
            rt.hub.unsubscribe(topic, monitor)


async def _auth_frame(websocket: WebSocket) -> str | None:
    """The token of the monitor's first frame; ``None`` once the socket is closed with 4401 (none in time, or a bad frame)."""
    try:
        message = await asyncio.wait_for(websocket.receive(), AUTH_SECONDS)
    except TimeoutError:
        await websocket.close(WS_4401_UNAUTHENTICATED, f"expected the first frame {AUTH_FRAME} within {AUTH_SECONDS:g} s")
        return None
    if message["type"] == "websocket.disconnect":
        return None
    try:
        frame = orjson.loads(message.get("text") or message.get("bytes") or b"")
    except orjson.JSONDecodeError:
        frame = None
    payload = frame.get("payload") if isinstance(frame, dict) and frame.get("channel") == "auth" else None
    token = payload.get("token") if isinstance(payload, dict) else None
    if not isinstance(token, str) or not token:
        await websocket.close(WS_4401_UNAUTHENTICATED, f"expected the first frame {AUTH_FRAME}")
        return None
    return token


async def _drain(websocket: WebSocket) -> None:
    """Read until the page closes; a monitor sends nothing we act on."""
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return


async def _send_loop(
    rt: Runtime, monitor: Monitor, row: dict[str, Any], receiver: asyncio.Task[None], token: str
) -> None:
    status = row["status"]
    next_stats = time.monotonic()
    while not receiver.done():
        await asyncio.wait({receiver}, timeout=FLUSH_EVERY)
        if receiver.done():
            return
        if monitor.overflowed:
            await monitor.websocket.close(WS_4008_TOO_SLOW, "too slow: reconnect for a fresh snapshot")
            return
        batch = monitor.take_events()
        if batch is not None:
            await monitor.websocket.send_text(batch)
        for frame in monitor.take_frames():
            await monitor.websocket.send_text(frame)
        if time.monotonic() >= next_stats:
            next_stats = time.monotonic() + STATS_EVERY
            found = await rt.accounts.identify(token)  # revoked meanwhile: cut off
            if not isinstance(found, Account):
                await monitor.websocket.close(WS_4403_TOKEN_REFUSED, found.reason)
                return
            current = await rt.database.read(experiment_row, row["code"])
            if current is not None and current["status"] != status:
                status = current["status"]
                await monitor.websocket.send_text(encode("experiment", {"status": status}))
            await monitor.websocket.send_text(encode("stats", _stats(rt, monitor, status)))


def _stats(rt: Runtime, monitor: Monitor, status: str) -> dict[str, Any]:
    return {
        "status": status,
        **monitor.meter.summary(since=monitor.counted),
        "writer": {"batches": rt.writer.batches, "committed": rt.writer.committed},
        "server_time": ms(time.time()),
    }


async def _snapshot(rt: Runtime, websocket: WebSocket, row: dict[str, Any]) -> dict[str, Any]:
    db = rt.database
    state = await db.read(monitor_state, row["id"])
    people = await db.read(experiment_participants, row["id"])
    timing = await db.read(experiment_timing, row["id"])
    progress = await db.read(participant_progress, row["id"])
    agents = state.pop("user_agents")
    return {
        "experiment": experiment_body(websocket, row, people, timing),
        **state,
        "participants": [
            {
                "code": p["code"],
                "label": p["label"],
                "group": p["group"],
                "connected": p["connected"],
                "connected_since": _iso_ms(p["connected_since"]),
                "user_agent": agents.get(p["code"]),
                "completion": p["completion"],
                "final_score": p["final_score"],
            }
            for p in progress
        ],
        "server_time": ms(time.time()),
    }


def _iso_ms(value: str | None) -> int | None:
    return None if value is None else ms(datetime.fromisoformat(value).timestamp())
