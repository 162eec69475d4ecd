"""The generator's own frames: what it reads past ``websockets``' parser and what it writes past its
``send`` (bench/sockets.py, :class:`StampedConnection`), against a real ``websockets`` server.

The frames read are fed to the client's ``data_received`` (what the event loop calls with what the
socket read) in chunks of every size, so that every place a frame can be cut is met: the texts
come out whole and in order, a ping is answered, a fragmented message is assembled by
``websockets`` and keeps its place, and the socket's own reading did engage.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
from collections.abc import AsyncIterator

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from bench.load import StampedConnection, _open, masked_text_frame, own_lags
from tests.server.harness import timeout


def server_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """A frame as a server writes it (unmasked)."""
    head = (0x80 if fin else 0) | opcode
    n = len(payload)
    if n < 126:
        return struct.pack("!BB", head, n) + payload
    if n < 1 << 16:
        return struct.pack("!BBH", head, 126, n) + payload
    return struct.pack("!BBQ", head, 127, n) + payload


#: texts, a long one (16-bit length), a ping, a fragmented message and texts after it
STREAM = b"".join([
    server_frame(0x1, b"a"),
    server_frame(0x1, ("\u00e9" * 100).encode()),
    server_frame(0x9, b"ping"),
    server_frame(0x1, b"b"),
    server_frame(0x1, b"c1", fin=False),
    server_frame(0x0, b"c2"),
    server_frame(0x1, b"d"),
    server_frame(0x1, b"e" * 70_000),
])
TEXTS = ["a", "\u00e9" * 100, "b", "c1c2", "d", "e" * 70_000]


class Server:
    def __init__(self) -> None:
        self.received: list[str] = []
        self.url = ""

    async def handler(self, ws: ServerConnection) -> None:
        await ws.send("hello")
        with contextlib.suppress(Exception):
            async for message in ws:
                self.received.append(str(message))


@contextlib.asynccontextmanager
async def a_server() -> AsyncIterator[Server]:
    server = Server()
    async with serve(server.handler, "127.0.0.1", 0, compression=None) as running:
        port = next(iter(running.sockets)).getsockname()[1]
        server.url = f"ws://127.0.0.1:{port}/"
        yield server


async def taking(ws: StampedConnection) -> list[str]:
    """The client after its hello, taking frames as the generator's peers do (:meth:`bench.record.Peer.read`)."""
    assert await ws.recv() == "hello"
    ws.stamps.popleft()
    got: list[str] = []
    ws.on_text = lambda text, _at: got.append(text)

    async def read() -> None:
        with contextlib.suppress(Exception):
            async for raw in ws:
                ws.stamps.popleft()
                got.append(str(raw))

    asyncio.get_running_loop().create_task(read())
    return got


async def until(check: object, what: str) -> None:
    for _ in range(int(timeout(5) / 0.01)):
        if callable(check) and check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(what)


@pytest.mark.parametrize("chunk", [1, 2, 3, 4, 5, 7, 64, 200, 4096, len(STREAM)])
async def test_frames_cut_anywhere_come_out_whole_and_in_order(chunk: int) -> None:
    async with a_server() as server:
        ws = await _open(server.url)
        try:
            got = await taking(ws)
            await until(ws._between_frames, "websockets' parser between two frames after the hello")
            for at in range(0, len(STREAM), chunk):
                ws.data_received(STREAM[at:at + chunk])
                await asyncio.sleep(0)  # the reader task may run between two reads, as it does live
            await until(lambda: len(got) >= len(TEXTS), f"every text: {got!r:.200}")
            assert got == TEXTS
            assert ws.direct >= 3, "the socket read the texts before the fragments itself"
            assert ws.passed >= 3, "the ping and the fragments went to websockets"
        finally:
            await ws.close()


async def test_the_parser_is_between_frames_only_when_it_waits_for_a_frame_s_first_byte() -> None:
    async with a_server() as server:
        ws = await _open(server.url)
        try:
            await taking(ws)
            await until(ws._between_frames, "between frames after the hello")
            # a header alone: websockets waits for the payload, holding no bytes
            super(StampedConnection, ws).data_received(server_frame(0x1, b"xyz")[:2])
            assert not ws.protocol.reader.buffer
            assert not ws._between_frames()
            waiting = ws.protocol.parser
            while waiting.gi_yieldfrom is not None:
                waiting = waiting.gi_yieldfrom
            assert waiting.gi_code is StreamReader.read_exact.__code__
        finally:
            await ws.close()


async def test_a_written_frame_reaches_the_server_and_a_closed_socket_writes_nothing() -> None:
    async with a_server() as server:
        ws = await _open(server.url)
        assert await ws.recv() == "hello"
        for text in ("one", "\u00e9" * 200):
            assert ws.write_frame(masked_text_frame(text.encode(), os.urandom(4)))
        await until(lambda: len(server.received) == 2, "both frames at the server")
        assert server.received == ["one", "\u00e9" * 200]
        await ws.close()
        assert not ws.write_frame(masked_text_frame(b"late", os.urandom(4)))


@pytest.mark.parametrize("size", [0, 5, 125, 126, 65_535, 65_536])
def test_a_masked_frame_parses_as_websockets_reads_a_client_s(size: int) -> None:
    payload = os.urandom(size)
    data = masked_text_frame(payload, b"\x01\x02\x03\x04")
    reader = StreamReader()
    reader.feed_data(data)
    parsing = Frame.parse(reader.read_exact, mask=True)
    with pytest.raises(StopIteration) as done:
        next(parsing)
    frame = done.value.value
    assert (frame.opcode, frame.fin, bytes(frame.data)) == (Opcode.TEXT, True, payload)
    assert not reader.buffer


def test_a_send_s_own_lag_leaves_out_the_reads_handled_while_it_was_due() -> None:
    """Lag spent handling reads (a burst the target released) is the target's; the rest is the generator's."""
    spans = [1.0, 1.5,  2.0, 2.004,  2.006, 2.010,  3.0, 3.001]
    due = [0.5, 2.001, 2.001, 2.5, 2.9995, 4.0]
    sent = [0.5005, 2.012, 2.0105, 2.5075, 3.0015, 4.01]
    lags = own_lags(due, sent, spans)
    expected = [
        0.0005,  # nothing read meanwhile: all its own
        0.011 - 0.003 - 0.004,  # behind the rest of one read and a whole other
        0.0095 - 0.003 - 0.004,
        0.0075,  # reads before it was due do not count
        0.002 - 0.001,  # a read that began and ended within its lag
        0.01,  # after every read
    ]
    assert lags == pytest.approx(expected, abs=1e-9)
    assert own_lags([1.0], [1.002], [0.9, 1.003]) == [0.0]  # lag wholly inside one read: none its own
    assert own_lags([1.0], [1.002], []) == pytest.approx([0.002])
