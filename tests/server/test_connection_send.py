"""How a participant connection sends: at once when nothing is queued before the frame, through
its sender task when a send has to wait, and what happens when the client is gone.

The socket here is a double of Starlette's ``WebSocket`` send side (the real stack's waiting
send is covered by ``test_slow_client``, with a real socket whose buffers fill up): it records
what was sent, can make a send wait until released, and can fail as Starlette does when uvicorn
finds the client gone (``WebSocketDisconnect`` 1006)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from starlette.websockets import WebSocketDisconnect

from server.connection import ClientConnection
from server.settings import Settings


class Socket:
    def __init__(self) -> None:
        self.scope: dict[str, Any] = {"extensions": {}}  # no direct way for frames: every send is Starlette's
        self.sent: list[str] = []
        self.gate: asyncio.Future[None] | None = None
        self.gone = False
        self.closed: int | None = None

    async def send_text(self, data: str) -> None:
        if self.gone:
            raise WebSocketDisconnect(1006)
        if self.gate is not None:  # the transport's buffer is full until the gate opens
            await self.gate
        self.sent.append(data)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed = code

    async def receive(self) -> dict[str, Any]:
        await asyncio.sleep(3600)
        return {"type": "websocket.disconnect", "code": 1000}


def connection(socket: Socket) -> ClientConnection:
    return ClientConnection(socket, None, "P1", Settings(send_queue_frames=8), "synclab")  # type: ignore[arg-type]


async def test_a_frame_with_nothing_before_it_is_sent_without_the_sender_task() -> None:
    socket = Socket()
    conn = connection(socket)
    conn.send("a")
    conn.send("b")
    assert socket.sent == ["a", "b"]  # no task has run yet


async def test_frames_behind_a_waiting_send_go_after_it_in_order() -> None:
    socket = Socket()
    socket.gate = asyncio.get_running_loop().create_future()
    conn = connection(socket)
    sender = asyncio.create_task(conn._sender())
    conn.send("a")  # waits for the gate
    conn.send("b")
    conn.send("c")
    await asyncio.sleep(0.01)
    assert socket.sent == []
    socket.gate.set_result(None)
    socket.gate = None
    for _ in range(100):
        if len(socket.sent) == 3:
            break
        await asyncio.sleep(0.01)
    assert socket.sent == ["a", "b", "c"]
    conn.send("d")  # nothing waits any more: at once again
    assert socket.sent == ["a", "b", "c", "d"]
    conn.close(1000)
    await asyncio.wait_for(sender, 1)
    assert socket.closed == 1000


async def test_a_full_queue_behind_a_waiting_send_cuts_the_client_off() -> None:
    socket = Socket()
    socket.gate = asyncio.get_running_loop().create_future()
    conn = connection(socket)
    sender = asyncio.create_task(conn._sender())
    for n in range(20):
        conn.send(str(n))
    assert conn.close_code == 4008
    sender.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sender


async def test_a_client_gone_ends_the_sender_with_the_send_s_error_and_later_frames_are_dropped() -> None:
    socket = Socket()
    conn = connection(socket)
    sender = asyncio.create_task(conn._sender())
    socket.gone = True
    conn.send("lost")  # raises nothing here
    conn.send("also lost")
    with pytest.raises(WebSocketDisconnect):
        await asyncio.wait_for(sender, 1)
    assert socket.sent == []
