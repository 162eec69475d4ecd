"""The bare relay: the floor the server is measured against.

The same stack as ``synclab serve`` (uvicorn with the same WebSocket options, a Starlette
``WebSocketRoute``, orjson, one bounded send queue and sender task per connection) and the same
framing, minus everything that makes the server the server: no validation, no game, no
database, no hub. ``WS /ws/{group}/{code}`` joins group ``group`` as ``code`` and gets a
``hello``; each ``decisions`` frame sets the sender's decision and broadcasts the group's
``group_decisions`` to every member, then an ``ack`` (``{"id", "seq"}``) when the frame has an
``id``.

``python -m bench.relay --port 0 [--drop-every K] [--silent-every K] [--misgreet-every K] [--fsync FILE]``:
with ``--drop-every K`` every K-th decision is silently dropped (neither broadcast nor
acknowledged), so the benchmark's loss count can be tested; with ``--silent-every K`` every K-th
socket is accepted and held but never greeted (no ``hello``, no group), so what the benchmark does
with a socket whose hello never comes can be tested; with ``--misgreet-every K`` every K-th socket
is held likewise, its first frame something other than its hello (:func:`misgreeting`). With
``--fsync FILE`` the relay stores before it broadcasts, the least a durable server can do: each
decision frame is appended to ``FILE`` and broadcast only once an ``fdatasync`` has covered it, by
a thread that commits whatever is queued at once (group commit, woken at the end of the loop's
turn as the server's writer is). No SQLite, no game: the floor of storing before broadcasting on
this disk.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from server.frames import WEBSOCKET_OPTIONS, corked, frame_of, frame_taker, frame_writer

#: the server's own limit (Settings.send_queue_frames)
SEND_QUEUE_FRAMES = 2048
#: the server's collector threshold (server.cli.GC_THRESHOLD)
GC_THRESHOLD = 10_000


def encode(channel: str, payload: Any) -> str:
    return orjson.dumps({"channel": channel, "payload": payload}).decode()


def misgreeting(turn: int, group: str, code: str) -> str | bytes:
    """What ``--misgreet-every`` sends ``code`` first instead of its hello, the ``turn``-th time
    (in turn): another channel's frame, a text that is not JSON, its hello in a binary frame,
    another participant's hello."""
    hello = {"participant": code, "group": group, "members": [code]}
    return (
        encode("state", "period_start"),
        "hello",
        encode("hello", hello).encode(),
        encode("hello", {**hello, "participant": f"not {code}"}),
    )[turn % 4]


class Member:
    """One socket: a bounded queue drained by its own sender task, as in the server.

    With ``frames``, a frame that nothing queued is ahead of is written at once, made once per
    broadcast, and those of one stored batch together, as the server writes them
    (:mod:`server.frames`); otherwise every frame goes the ordinary way, through the queue and
    Starlette's ``send_text``."""

    def __init__(self, websocket: WebSocket, frames: bool = False) -> None:
        self.websocket = websocket
        self.out: deque[str] = deque()
        self.ready = asyncio.Event()
        self.closed = False
        self.write = frame_writer(websocket.scope) if frames else None

    def send(self, data: str) -> None:
        if self.closed:
            return
        if self.write is not None and not self.out and self.write(frame_of(data)):
            return
        if len(self.out) >= SEND_QUEUE_FRAMES:
            self.closed = True  # too slow: cut off, as the server does
            self.ready.set()
            return
        self.out.append(data)
        self.ready.set()

    async def sender(self) -> None:
        while not self.closed:
            await self.ready.wait()
            self.ready.clear()
            while self.out and not self.closed:
                await self.websocket.send_text(self.out.popleft())
        with contextlib.suppress(Exception):
            await self.websocket.close(4008)


class Log:
    """An append-only file and the thread that makes it durable: what is queued, at once, then ``fdatasync``."""

    def __init__(self, path: str, corking: bool = False) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        #: the frames of a batch's broadcasts go out together, as the server's (server.frames.corked)
        self.corking = corking
        self._queue: deque[tuple[bytes, Callable[[], None]]] = deque()
        self._cond = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waking = False
        threading.Thread(target=self._run, name="relay-log", daemon=True).start()

    def append(self, data: bytes, then: Callable[[], None]) -> None:
        """Store ``data``; ``then()`` runs on the loop once it is on disk (in the order appended)."""
        self._loop = asyncio.get_running_loop()
        self._queue.append((data, then))
        if not self._waking:  # wake the thread once this turn of the loop is over
            self._waking = True
            self._loop.call_soon(self._wake)

    def _wake(self) -> None:
        self._waking = False
        with self._cond:
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue:
                    self._cond.wait()
                batch = list(self._queue)
                self._queue.clear()
            os.write(self.fd, b"".join(data for data, _ in batch))
            os.fdatasync(self.fd)
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self.done, [then for _, then in batch])

    def done(self, callbacks: list[Callable[[], None]]) -> None:
        """A batch on disk: its broadcasts, on the loop (one write per socket with ``corking``)."""
        with corked() if self.corking else contextlib.nullcontext():
            _run_all(callbacks)


def _run_all(callbacks: list[Callable[[], None]]) -> None:
    for callback in callbacks:
        callback()


class Relay:
    """Groups by name: each member's current decision and its socket."""

    def __init__(self, drop_every: int = 0, log: Log | None = None, frames: bool = False, silent_every: int = 0,
                 misgreet_every: int = 0) -> None:
        self.drop_every = drop_every
        self.silent_every = silent_every
        self.misgreet_every = misgreet_every
        self.misgreeted = 0
        self.accepted = 0
        self.frames = frames
        self.log = log
        self.received = 0
        self.groups: dict[str, dict[str, Member]] = {}
        self.decisions: dict[str, dict[str, Any]] = {}

    async def socket(self, websocket: WebSocket) -> None:
        group = str(websocket.path_params["group"])
        code = str(websocket.path_params["code"])
        await websocket.accept()
        self.accepted += 1
        misgreet = self.misgreet_every and self.accepted % self.misgreet_every == 0
        if misgreet or (self.silent_every and self.accepted % self.silent_every == 0):
            # held open, read until the client goes, never greeted
            with contextlib.suppress(WebSocketDisconnect, RuntimeError):
                if misgreet:
                    first = misgreeting(self.misgreeted, group, code)
                    self.misgreeted += 1
                    await (websocket.send_bytes(first) if isinstance(first, bytes) else websocket.send_text(first))
                while True:
                    await websocket.receive_text()
            return
        member = Member(websocket, self.frames)
        members = self.groups.setdefault(group, {})
        members[code] = member
        self.decisions.setdefault(group, {})
        member.send(encode("hello", {"participant": code, "group": group, "members": list(members)}))
        sender = asyncio.create_task(member.sender())
        take_texts = frame_taker(websocket.scope) if self.frames else None
        if take_texts is not None:  # text frames handled as they are read, as the server does
            take_texts(lambda text: self.handle(group, code, text))
        try:
            while True:
                text = await websocket.receive_text()
                self.handle(group, code, text)
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            if take_texts is not None:
                take_texts(None)
            member.closed = True
            member.ready.set()
            if members.get(code) is member:
                del members[code]
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender

    def handle(self, group: str, code: str, text: str) -> None:
        frame = orjson.loads(text)
        if frame.get("channel") != "decisions":
            return
        self.received += 1
        if self.drop_every and self.received % self.drop_every == 0:
            return
        if self.log is not None:
            seq = self.received
            self.log.append(text.encode() + b"\n", lambda: self.broadcast(group, code, frame, seq))
        else:
            self.broadcast(group, code, frame, self.received)

    def broadcast(self, group: str, code: str, frame: dict[str, Any], seq: int) -> None:
        decisions = self.decisions[group]
        decisions[code] = frame.get("payload")
        data = encode("group_decisions", decisions)
        members = self.groups[group]
        for member in members.values():
            member.send(data)
        frame_id = frame.get("id")
        sender = members.get(code)
        if frame_id is not None and sender is not None:
            sender.send(encode("ack", {"id": frame_id, "seq": seq}))


def create_app(drop_every: int = 0, log: str | None = None, frames: bool = False, silent_every: int = 0,
               misgreet_every: int = 0) -> Starlette:
    relay = Relay(drop_every, None if log is None else Log(log, corking=frames), frames, silent_every, misgreet_every)
    return Starlette(routes=[WebSocketRoute("/ws/{group}/{code}", relay.socket)])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.relay", description="The bare WebSocket relay.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--drop-every", type=int, default=0, help="drop every K-th decision (0: none)")
    parser.add_argument("--silent-every", type=int, default=0,
                        help="accept every K-th socket but never send it a hello (0: none)")
    parser.add_argument("--misgreet-every", type=int, default=0,
                        help="accept every K-th socket and send it something else than its hello first (0: none)")
    parser.add_argument("--fsync", metavar="FILE", help="store each decision in FILE (fdatasync) before broadcasting it")
    parser.add_argument("--frames", action="store_true",
                        help="send and receive as the server does (server.frames): each frame written at once, "
                        "made once per broadcast, a stored batch's together; text frames handled as they are read")
    args = parser.parse_args(argv)
    for option in ("drop_every", "silent_every", "misgreet_every"):
        if getattr(args, option) < 0:
            parser.error(f"--{option.replace('_', '-')}: expected 0 or more, got {getattr(args, option)}")
    # the collector as server.cli.tune_gc sets it, and the options of server.cli._serve: the
    # floor has the server's own process settings and WebSocket stack
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])
    uvicorn.run(
        create_app(args.drop_every, args.fsync, args.frames, args.silent_every, args.misgreet_every),
        host=args.host,
        port=args.port,
        **WEBSOCKET_OPTIONS,
        log_level="info",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
