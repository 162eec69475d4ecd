"""What a generator's participant does with each frame the target sends it (bench/record.py,
:meth:`Peer.read` and :meth:`Peer.take`), against a real ``websockets`` server: a frame that is
not the wire's (not JSON, not an object, binary) is counted unreadable, and the frames after it
are read as before, whether the socket reads them itself or ``websockets`` assembles them.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from array import array
from collections.abc import AsyncIterator, Sequence

import orjson
from websockets.asyncio.server import ServerConnection, serve

from bench.load import Load, Peer, greeting
from bench.record import Run
from bench.sockets import open_socket
from bench.table import table
from tests.server.harness import eventually, timeout

#: a frame the server sends: text, binary, or a text in fragments
Sent = str | bytes | list[str]


def decisions(k: int) -> str:
    return orjson.dumps({"channel": "group_decisions", "payload": {"p0": k, "p1": k}}).decode()


@contextlib.asynccontextmanager
async def a_target(script: Sequence[Sent]) -> AsyncIterator[str]:
    """A server that greets ``p0``, waits for its first frame, then sends ``script``."""

    async def handler(ws: ServerConnection) -> None:
        await ws.send(orjson.dumps({"channel": "hello", "payload": {"participant": "p0", "members": ["p0", "p1"]}}).decode())
        await ws.recv()
        for frame in script:
            await ws.send(iter(frame) if isinstance(frame, list) else frame)
        with contextlib.suppress(Exception):
            await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0, compression=None) as running:
        port = next(iter(running.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}/"


async def reading(script: Sequence[Sent]) -> tuple[Peer, Run]:
    """Participant ``p0``'s peer once it has read ``script`` up to its receipts of decision 2."""
    run = Run("relay", Load(participants=2, group_size=2, rate=1.0, duration=2.0))
    run.codes, run.index_of, run.groups = ["p0", "p1"], {"p0": 0, "p1": 1}, [[0, 1], [0, 1]]
    run.due = run.sent_at = array("d", [math.nan]) * run.load.total  # (nothing sent: the target sends alone)
    async with a_target(script) as url, asyncio.timeout(timeout(20)):
        ws = await open_socket(url)
        peer: Peer | None = None
        try:
            hello = await greeting(ws, "p0", timeout(5))
            peer = Peer(0, "p0", ws, run, list(hello["members"]))
            peer.task = asyncio.create_task(peer.read())
            await asyncio.sleep(0)  # the reader takes the frames from here on
            await ws.send("go")
            with contextlib.suppress(TimeoutError):
                await eventually(lambda: len(peer.receipts) >= 4 or ws.close_code is not None)
            assert [(s, k) for s, k, _ in peer.receipts] == [(0, 1), (1, 1), (0, 2), (1, 2)], (peer.receipts, ws.close_code)
            assert ws.close_code is None and not peer.task.done(), "the socket and its reader go on"
        finally:
            await ws.close()
            if peer is not None and peer.task is not None:
                await asyncio.wait_for(peer.task, timeout(5))
    assert peer is not None
    return peer, run


async def test_a_text_frame_that_is_not_the_wire_s_is_counted_and_the_socket_reads_on() -> None:
    """Frames the socket reads itself: a text that is not JSON and a JSON array are counted
    unreadable; the ``group_decisions`` after them are received."""
    peer, run = await reading(["not json", decisions(1), "[1, 2]", '{"channel": "group_decisions", "payload": 3}', decisions(2)])
    assert run.unreadable == 3, run.unreadable
    assert peer.ws.direct >= 2, "the socket read the texts itself"
    summary = run.summary()
    assert summary["unreadable_frames"] == 3
    assert "run: 3 frames unreadable" in table([{**summary, "name": "run"}])


async def test_a_binary_frame_is_counted_and_the_reader_reads_on() -> None:
    """A binary frame goes to ``websockets``, and so does a fragmented text after it: the peer's
    reader counts the binary frame unreadable and goes on to the fragments and what follows."""
    first, second = decisions(1)[:10], decisions(1)[10:]
    peer, run = await reading([b"\x00\x01binary", [first, second], decisions(2)])
    assert run.unreadable == 1, run.unreadable
    assert peer.ws.passed >= 2, "the binary frame and the fragments went to websockets"
