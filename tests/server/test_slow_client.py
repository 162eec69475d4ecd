"""A client that stops reading is cut off; its group goes on undisturbed."""

from __future__ import annotations

import asyncio
import socket

import orjson
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from groups import DecisionGroup
from server.connection import ClientConnection
from server.exceptions import WS_4008_TOO_SLOW
from tests.server.harness import Client, Harness, running_server, timeout


class Shout(DecisionGroup):
    """A test game: whatever a member shouts is broadcast to the group."""

    channels = frozenset({"shout"})

    def on_shout(self, participant: str, payload: object) -> None:
        self.send("shout", payload)


async def fast_and_slow(server: Harness) -> tuple[Client, ClientConnection, ClientConnection]:
    """A group of two shouters: the fast member's client, the slow member's client (a tiny
    receive buffer, and it reads nothing until told: the server's writes back up), and the
    slow member's connection on the server's side."""
    exp = await server.create(game=f"{__name__}:Shout", participants=2, group_size=2, period_length=600)
    fast_code, slow_code = (p["code"] for p in exp["participants"])
    fast = await server.connect(fast_code)
    port = int(server.base.rsplit(":", 1)[1])
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    slow = await connect(f"{server.ws_base}/ws/p/{slow_code}", sock=sock, max_queue=1, max_size=2**20)
    await fast.expect("state")
    group = next(iter(server.runtime.groups.views.values()))
    return fast, slow, group.current[slow_code]


async def test_a_client_that_never_reads_is_closed_with_4008_and_the_group_goes_on(sqlite_url: str) -> None:
    """A member that stops reading is cut off once its send queue is full; the others carry on."""
    async with running_server(
        sqlite_url, send_queue_frames=32, frames_per_second=10_000, frame_burst=10_000
    ) as server:
        fast, slow, slow_side = await fast_and_slow(server)
        loud = "x" * 12_000
        async with asyncio.timeout(timeout(30)):
            while slow_side.close_code is None:
                # every shout is one 12 kB frame to the slow member, which reads none of them;
                # paced, so that the reading member's queue never holds more than a few frames
                await fast.send("shout", loud)
                await asyncio.sleep(0.002)
        assert slow_side.close_code == WS_4008_TOO_SLOW
        # the fast member is still served, at once
        await fast.send("shout", "still here", frame_id="after")
        assert (await fast.expect("ack", wait=10))["payload"]["id"] == "after"
        # and the slow one, once it reads again, finds the close frame after what it had
        try:
            async with asyncio.timeout(timeout(10)):
                while True:
                    await slow.recv()
        except ConnectionClosed as closed:
            assert closed.rcvd is not None and closed.rcvd.code == WS_4008_TOO_SLOW
        else:  # pragma: no cover
            raise AssertionError("the slow client was never closed")


async def test_a_client_that_reads_late_gets_every_frame_in_order(sqlite_url: str) -> None:
    """Frames are written at once while nothing is queued before them; once the socket's buffers
    are full a send waits and what comes meanwhile queues behind it: a member that reads again
    later gets every frame, in order, none twice."""
    async with running_server(
        sqlite_url, send_queue_frames=4096, frames_per_second=10_000, frame_burst=10_000
    ) as server:
        fast, slow, slow_side = await fast_and_slow(server)
        shouts = 600
        async with asyncio.timeout(timeout(30)):
            for n in range(shouts):
                await fast.send("shout", f"{n:05d}" + "x" * 12_000)  # 7 MB in all: past the kernel's buffers
                await asyncio.sleep(0.001)
            await fast.send("shout", "done", frame_id="done")
            while True:  # the fast member reads its own frames as they come
                frame = await fast.expect("ack", wait=30)
                if frame["payload"]["id"] == "done":
                    break
        assert slow_side._sending or slow_side._out, "the slow member's socket never backed up"
        heard: list[int] = []
        seqs: list[int] = []
        async with asyncio.timeout(timeout(30)):
            while len(heard) < shouts:
                frame = orjson.loads(await slow.recv())
                if frame["channel"] == "shout":
                    heard.append(int(frame["payload"][:5]))
                    seqs.append(frame["seq"])
        assert heard == list(range(shouts))
        assert seqs == sorted(seqs) and len(set(seqs)) == shouts
        assert slow_side.close_code is None
        await slow.close()
