"""One participant WebSocket: a receiver loop and a sender task fed by a bounded queue.

Limits (see :class:`server.settings.Settings`): a frame over ``max_frame_bytes`` is refused;
frames beyond ``frames_per_second`` (with a ``frame_burst`` allowance) are refused, and a client
that keeps sending after a whole burst was refused is cut off (4029); a client that does not
read its frames is cut off once ``send_queue_frames`` are waiting (4008). A slow or hostile
client never holds up its group: publishing only appends to this queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections import deque
from collections.abc import Coroutine, Generator
from typing import Any

import orjson
from starlette.websockets import WebSocket

from groups import RefusedAction

from .exceptions import (
    WS_1011_INTERNAL_ERROR,
    WS_4003_FORBIDDEN,
    WS_4008_TOO_SLOW,
    WS_4029_FLOODING,
    WS_4404_UNKNOWN,
    FrameError,
    NotPersisted,
)
from .frames import frame_of, frame_taker, frame_writer, lost_code
from .hooks import frame_failed
from .routing import LiveGroups
from .settings import Settings
from .storage import ConnectionChange, Seat
from .tasks import ended
from .views import GroupView
from .wire import encode, error, ms, parse, redwood_ping

log = logging.getLogger("synclab.connection")
#: the ``seq`` of a stored event's frame (see :func:`server.wire.encode`)
_SEQ = re.compile(r'"seq":(\d+)')

SYNCLAB = "synclab"
REDWOOD = "redwood"


class ClientConnection:
    """A participant's socket; the hub delivers group frames to it through :meth:`deliver`."""

    def __init__(
        self, websocket: WebSocket, group: GroupView, participant: str, settings: Settings, route: str, game: str = ""
    ) -> None:
        self.id = str(uuid.uuid4())
        self.websocket = websocket
        self.group = group
        self.participant = participant
        self.route = route
        self.game = game
        #: the group's frames kept while a join's answer is on its way (see :meth:`hold`)
        self._held: list[tuple[frozenset[str] | None, str]] | None = None
        self.close_code: int | None = None
        self._close_reason = ""
        self._settings = settings
        self._out: deque[str] = deque()
        self._ready = asyncio.Event()
        #: a send is under way that waits (for the transport's buffer): what comes meanwhile queues
        self._sending = False
        #: the rest of a send started at once that had to wait, for the sender task to finish
        self._rest: _Rest | None = None
        #: why a send started at once failed (the client is gone): the sender task ends with it
        self._broken: BaseException | None = None
        self._tokens = float(settings.frame_burst)
        #: the rate limit's refill per second and its cap (read at every frame)
        self._rate, self._burst = settings.frames_per_second, float(settings.frame_burst)
        self._refilled = time.monotonic()
        self._refused_in_a_row = 0
        #: the socket's direct way for a ready frame (see :mod:`server.frames`), if the server has one
        self._write = frame_writer(websocket.scope)

    # ------------------------------------------------------------------ sending

    def deliver(self, to: frozenset[str] | None, data: str) -> None:
        if to is None or self.participant in to:
            if self._held is not None:
                if len(self._held) >= self._settings.send_queue_frames:
                    self._held = None
                    self.close(WS_4008_TOO_SLOW, "too slow: the send queue is full")
                    return
                self._held.append((to, data))
                return
            self.send(data)

    def hold(self) -> None:
        """Keep the group's frames until :meth:`release` (a join's answer is on its way)."""
        if self._held is None:
            self._held = []

    def release(self, after: int) -> None:
        """Send the kept frames that come after ``seq`` ``after`` (the answer held the others)."""
        held, self._held = self._held or [], None
        for to, data in held:
            found = _SEQ.search(data)
            if found is None or int(found[1]) > after:
                self.deliver(to, data)

    def send(self, data: str) -> None:
        if self._out or self._sending or self.close_code is not None or self._broken is not None:
            self._send_later(data)
        elif self._write is None or not self._write(frame_of(data)):  # (the direct way: see _send_now)
            self._send_now(data)

    def _send_later(self, data: str) -> None:
        """Queue the frame behind those waiting (none is sent once the socket is closing or broken)."""
        if self.close_code is not None or self._broken is not None:
            return
        if len(self._out) >= self._settings.send_queue_frames:
            self._out.clear()
            self.close(WS_4008_TOO_SLOW, "too slow: the send queue is full")
            return
        self._out.append(data)
        self._ready.set()

    def close(self, code: int, reason: str = "") -> None:
        """Close after the frame being sent; frames still queued are dropped."""
        if self.close_code is None:
            self.close_code = code
            self._close_reason = reason
            self._ready.set()

    def _send_now(self, data: str) -> None:
        """Write the frame now, nothing being queued before it, without a turn of the sender task.

        Where the server offers it, the frame made once for the whole broadcast is written to the
        socket directly (:mod:`server.frames`), by the caller (:meth:`send`, :meth:`deliver`).
        Otherwise, or when that has to wait, here the ASGI send:
        it returns without waiting unless the transport's buffer is full (uvicorn's
        flow control), so it is run here up to its first wait: it almost always finishes, and
        the frame is on the socket with no task woken for it. If it waits, the sender task
        finishes it and sends what queued behind it meanwhile, in order.
        """
        sending = self.websocket.send_text(data)
        try:
            awaited = sending.send(None)
        except StopIteration:
            return
        except Exception as exc:  # the client is gone: the sender task ends with it, as with its own send
            self._broken = exc
            self._ready.set()
            return
        self._sending = True
        self._rest = _Rest(sending, awaited)
        self._ready.set()

    async def _sender(self) -> None:
        while True:
            await self._ready.wait()
            self._ready.clear()
            if self._broken is not None:
                raise self._broken
            rest, self._rest = self._rest, None
            if rest is not None:
                await rest
            self._sending = True
            try:
                while self._out and self.close_code is None:
                    await self.websocket.send_text(self._out.popleft())
            finally:
                self._sending = False
            if self.close_code is not None:
                await self.websocket.close(self.close_code, self._close_reason)
                return

    # ------------------------------------------------------------------ receiving

    async def run(self) -> None:
        """Serve until the client goes away or is cut off.

        Where the server offers it, text frames are handled as they are read (:mod:`server.frames`);
        the receiver task then sees only the rest (binary frames, the disconnect)."""
        take_texts = frame_taker(self.websocket.scope)
        if take_texts is not None:
            take_texts(self._on_text)
        sender = asyncio.create_task(self._sender())
        receiver = asyncio.create_task(self._receiver())
        try:
            await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
            if sender.done() and not receiver.done():
                # we closed the socket: give the client a moment to answer the close frame
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(receiver), 2.0)
        finally:
            if take_texts is not None:
                take_texts(None)
            await ended((sender, receiver))

    async def _receiver(self) -> None:
        while True:
            message = await self.websocket.receive()
            if message["type"] == "websocket.disconnect":
                if self.close_code is None:
                    code = int(message.get("code") or 1005)
                    # 1005 is also what uvicorn says of a connection lost without a close frame
                    self.close_code = (lost_code(self.websocket.scope) or code) if code == 1005 else code
                return
            if not self._take_token():
                continue
            text = message.get("text")
            if text is None:
                self.send(error("bad_frame", "expected a JSON text frame, got a binary frame"))
                continue
            self.handle(text)

    def _on_text(self, text: str) -> None:
        if self._take_token():
            self.handle(text)

    def handle(self, text: str) -> None:
        """Answer one client frame; nothing a client sends can raise out of here."""
        frame_id: str | None = None
        try:
            frame = parse(text, self._settings.max_frame_bytes)
            frame_id = frame.id
            if frame.channel == "ping":
                self._pong(frame.payload, frame.timestamp)
                return
            self.group.receive(
                self.participant, frame.channel, frame.payload, frame_id, lambda f: self._stored(f, frame_id)
            )
        except FrameError as exc:
            self.send(error(exc.code, exc.message, exc.frame_id))
            return
        except RefusedAction as exc:
            self.send(error(exc.code, exc.message, frame_id))
            return
        except Exception as exc:  # a fault in a game's hook: refuse the frame, keep serving
            frame_failed(self.group.id, self.game, self.participant, exc)
            self.send(error("game_error", f"the game failed on this frame: {type(exc).__name__}", frame_id))

    def _stored(self, future: asyncio.Future[list[int]], frame_id: str | None) -> None:
        if future.cancelled():
            return
        exc = future.exception()
        if exc is None:  # (stored: the common case first, the ack written out as encode makes it)
            if frame_id is not None:
                self.send(orjson.dumps({"channel": "ack", "payload": {"id": frame_id, "seq": future.result()[0]}}).decode())
        elif isinstance(exc, NotPersisted):
            self.send(error(exc.code, str(exc), frame_id))
        elif isinstance(exc, RefusedAction):  # refused by the group's authority on another worker
            self.send(error(exc.code, exc.message, frame_id))
        else:
            self.send(error("internal", f"the frame failed: {type(exc).__name__}", frame_id))

    def _pong(self, payload: Any, timestamp: Any) -> None:
        if self.route == REDWOOD:  # otree-redwood echoes the timestamp beside the channel
            self.send(redwood_ping(timestamp))
            return
        echo = dict(payload) if isinstance(payload, dict) else {"value": payload}
        echo["server_time"] = ms(time.time())
        self.send(encode("ping", echo))

    def _take_token(self) -> bool:
        now = time.monotonic()
        tokens = self._tokens + (now - self._refilled) * self._rate
        if tokens > self._burst:
            tokens = self._burst
        self._refilled = now
        if tokens >= 1.0:
            self._tokens = tokens - 1.0
            self._refused_in_a_row = 0
            return True
        self._tokens = tokens
        self._refused_in_a_row += 1
        rate, burst = self._settings.frames_per_second, self._settings.frame_burst
        if self._refused_in_a_row > burst:
            self.close(WS_4029_FLOODING, "flooding: far over the frame rate")
        else:
            self.send(error("rate_limited", f"expected at most {rate:g} frames per second (burst {burst}); this frame was dropped"))
        return False


class _Rest:
    """The rest of a coroutine started outside any task, now waiting for ``awaited``: awaiting
    this in a task resumes it there (what the task's own ``await`` would have done)."""

    __slots__ = ("_awaited", "_coroutine")

    def __init__(self, coroutine: Coroutine[Any, Any, Any], awaited: Any) -> None:
        self._coroutine = coroutine
        self._awaited = awaited

    def __await__(self) -> Generator[Any, Any, Any]:
        coroutine, awaited = self._coroutine, self._awaited
        while True:
            try:
                value = yield awaited
            except BaseException as exc:  # the task is cancelled: so is the send
                try:
                    awaited = coroutine.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    awaited = coroutine.send(value)
                except StopIteration as stop:
                    return stop.value


async def serve(websocket: WebSocket, groups: LiveGroups, settings: Settings, route: str) -> None:
    """The participant socket, for ``/ws/p/{code}`` and the otree-redwood route."""
    code = str(websocket.path_params["code"])
    seated = await groups.seat(code)
    if seated is None:
        await websocket.close(WS_4404_UNKNOWN, "unknown participant code")  # before accept: HTTP 403
        return
    seat, group = seated
    if route == REDWOOD and not _redwood_path_matches(websocket, seat):
        await websocket.close(WS_4003_FORBIDDEN, "the URL names another game or group")
        return
    await websocket.accept()
    conn = ClientConnection(websocket, group, code, settings, route, seat.game)
    change = ConnectionChange(
        conn.id,
        seat.participant_id,
        seat.experiment_id,
        opened=groups.clock(),
        user_agent=websocket.headers.get("user-agent"),
        address=websocket.client.host if websocket.client else None,
        route=route,
        worker=groups.worker or None,
    )
    try:
        group.attach(code, conn, change, hello=route == SYNCLAB)
    except Exception:
        log.exception("connect failed")
        conn.close(WS_1011_INTERNAL_ERROR, "internal error")
    try:
        await conn.run()
    finally:
        closed = ConnectionChange(
            conn.id, seat.participant_id, seat.experiment_id, closed=groups.clock(), close_code=conn.close_code
        )
        conn.group.detach(code, conn, closed)  # the group it is in now: it may have moved on


def _redwood_path_matches(websocket: WebSocket, seat: Seat) -> bool:
    """The URL names the game and one of the participant's groups: the current one, or that of an
    earlier or later block (an otree-redwood page keeps the URL it was built with across a block
    move, and reconnects through it); the socket always joins the current group."""
    return str(websocket.path_params.get("app")) == seat.game and str(websocket.path_params.get("group")) in {
        str(g) for g in (seat.groups or (seat.group_id,))
    }
