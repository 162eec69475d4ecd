"""Frames made once per broadcast and written straight to the socket (server/frames.py).

The bytes are checked against ``websockets``' own frame parser (what every client runs), and
the direct way against a real server and real clients: a group's members get the same frame,
the way is offered on every participant socket, and it writes nothing (so that the ordinary,
waiting send takes over) while the socket's buffer is over its high-water mark or once the
socket is closed. ``test_slow_client`` covers the switch between the two ways under real back
pressure: every frame, in order, none twice."""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any

import orjson
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from server.connection import ClientConnection
from server.frames import FrameProtocol, corked, frame_of, text_frame
from tests.server.harness import Client, Harness, eventually, running_server


def parsed(data: bytes) -> Frame:
    """``data`` read as a client reads a frame from the server (unmasked), and nothing left over."""
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    parser = Frame.parse(reader.read_exact, mask=False)
    try:
        next(parser)
    except StopIteration as done:
        frame: Frame = done.value
    else:  # pragma: no cover - the parser wanted more bytes than the frame has
        raise AssertionError("the frame is shorter than its header says")
    assert reader.at_eof() is not False and not reader.buffer, "bytes left after the frame"
    return frame


@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 65_535, 65_536, 200_000])
def test_a_text_frame_of_any_length_is_what_websockets_reads(length: int) -> None:
    text = ("ü" * (length // 2)) + ("x" * (length % 2))  # two bytes a character: lengths around each bound
    frame = parsed(text_frame(text))
    assert frame.opcode is Opcode.TEXT and frame.fin
    assert not (frame.rsv1 or frame.rsv2 or frame.rsv3)
    assert bytes(frame.data).decode() == text
    assert len(frame.data) == len(text.encode())


def test_a_broadcast_is_framed_once_for_all_its_recipients() -> None:
    text = '{"channel":"group_decisions","payload":{"A":1}}'
    first = frame_of(text)
    assert frame_of(text) is first  # the same str, one after the other: the same bytes
    other = "".join(['{"channel":"group_decisions","payload":{"A":', "1}}"])  # equal, not the same object
    assert other is not text
    assert frame_of(other) == first
    assert frame_of("something else") == text_frame("something else")
    assert frame_of(text) == first


def server_side(server: Harness, code: str) -> ClientConnection:
    view = next(v for v in server.runtime.groups.views.values() if code in v.current)
    conn = view.current[code]
    assert isinstance(conn, ClientConnection)
    return conn


def protocol_of(conn: ClientConnection) -> FrameProtocol:
    assert conn._write is not None, "the participant socket has no direct way for frames"
    protocol = getattr(conn._write, "__self__", None)
    assert isinstance(protocol, FrameProtocol)
    return protocol


async def two_playing(server: Harness) -> tuple[list[str], Client, Client]:
    """A public goods group of two, both connected and past the period's start."""
    exp = await server.create(game="public_goods", participants=2, group_size=2)
    codes = [p["code"] for p in exp["participants"]]
    a = await server.connect(codes[0])
    b = await server.connect(codes[1])
    await a.expect("group_decisions")
    await b.expect("group_decisions")
    return [exp["code"], *codes], a, b


async def test_every_member_gets_the_broadcast_written_directly(server: Harness) -> None:
    exp = await server.create(game="public_goods", participants=3, group_size=3)
    codes = [p["code"] for p in exp["participants"]]
    clients = [await server.connect(code) for code in codes]
    for client in clients:
        await client.expect("group_decisions")
    written: list[bytes] = []

    def counting(write: Any) -> Any:
        def counted(frame: bytes) -> bool:
            written.append(frame)
            return bool(write(frame))
        return counted

    for code in codes:  # each socket's direct way, counted
        conn = server_side(server, code)
        conn._write = counting(protocol_of(conn).write_frame)
    await clients[0].send("decisions", 7, frame_id="d1")
    for client in clients:
        frame = await client.expect("group_decisions")
        assert frame["payload"][codes[0]] == 7
    ack = await clients[0].expect("ack")
    assert ack["payload"]["id"] == "d1"
    broadcasts = [f for f in written if b"group_decisions" in f]
    assert len(broadcasts) == 3 and len({id(f) for f in broadcasts}) == 1  # one frame, three sockets
    assert any(b'"ack"' in f for f in written)


async def test_the_direct_way_writes_nothing_while_the_buffer_is_full_or_once_the_socket_is_closed(
    server: Harness,
) -> None:
    (_, a_code, _), a, b = await two_playing(server)
    conn = server_side(server, a_code)
    protocol = protocol_of(conn)
    frame = text_frame('{"channel":"note","payload":1}')
    protocol.pause_writing()  # what the transport calls past its high-water mark
    try:
        assert protocol.write_frame(frame) is False
        conn.send('{"channel":"note","payload":"queued"}')  # the ordinary send waits meanwhile
        assert await a.silent(0.2)
    finally:
        protocol.resume_writing()
    assert (await a.expect("note"))["payload"] == "queued"
    assert protocol.write_frame(frame) is True
    assert (await a.expect("note"))["payload"] == 1
    await a.close()
    await eventually(lambda: protocol.disconnected or protocol.close_sent or protocol.transport.is_closing())
    assert protocol.write_frame(frame) is False
    with pytest.raises(ConnectionClosed):
        await a.ws.recv()
    await b.close()


class CountingTransport:
    """A socket's transport that counts its writes (and is the transport for everything else)."""

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self.transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


async def test_frames_written_while_corked_go_out_together_in_order(server: Harness) -> None:
    (_, a_code, b_code), a, b = await two_playing(server)
    a_side, b_side = server_side(server, a_code), server_side(server, b_code)
    a_protocol, b_protocol = protocol_of(a_side), protocol_of(b_side)
    counting = [CountingTransport(p.transport) for p in (a_protocol, b_protocol)]
    a_protocol.transport, b_protocol.transport = counting  # type: ignore[assignment]
    with corked():
        a_side.send('{"channel":"note","payload":1}')
        b_side.send('{"channel":"note","payload":"b"}')
        with corked():  # nested: the outermost writes
            a_side.send('{"channel":"note","payload":2}')
        assert counting[0].writes == [] and counting[1].writes == []
    assert len(counting[0].writes) == 1 and len(counting[1].writes) == 1
    assert counting[0].writes[0] == text_frame('{"channel":"note","payload":1}') + text_frame(
        '{"channel":"note","payload":2}'
    )
    assert [(await a.expect("note"))["payload"] for _ in range(2)] == [1, 2]
    assert (await b.expect("note"))["payload"] == "b"
    a_side.send('{"channel":"note","payload":3}')  # not corked: at once
    assert len(counting[0].writes) == 2
    assert (await a.expect("note"))["payload"] == 3


async def test_a_decision_and_its_ack_reach_the_sender_in_one_write(server: Harness) -> None:
    (_, a_code, _), a, b = await two_playing(server)
    a_protocol = protocol_of(server_side(server, a_code))
    counting = CountingTransport(a_protocol.transport)
    a_protocol.transport = counting  # type: ignore[assignment]
    await a.send("decisions", 3, frame_id="x")
    assert (await a.expect("group_decisions"))["payload"][a_code] == 3
    assert (await a.expect("ack"))["payload"]["id"] == "x"
    assert len(counting.writes) == 1 and b'"group_decisions"' in counting.writes[0] and b'"ack"' in counting.writes[0]
    await b.close()


async def test_text_frames_are_handled_as_they_are_read_and_the_rest_through_receive_in_order(
    server: Harness,
) -> None:
    """A whole text frame goes straight to the connection; a fragmented message, and whatever comes
    while it is queued, go through ``receive``; a binary frame is refused there; the order holds."""
    (experiment, a_code, _), a, b = await two_playing(server)
    protocol = protocol_of(server_side(server, a_code))
    assert protocol._on_text is not None, "text frames are not taken as they come"
    queued: list[Any] = []
    put = protocol.queue.put_nowait

    def counted(message: Any) -> None:
        queued.append(message)
        put(message)

    protocol.queue.put_nowait = counted  # type: ignore[method-assign]
    await a.send("decisions", 1, frame_id="d1")
    assert (await a.expect("ack"))["payload"]["id"] == "d1"
    assert queued == []  # straight to the connection
    fragments = ['{"channel": "decisions", ', '"payload": 2, "id": "d2"}']
    await a.ws.send(iter(fragments))  # one message in two frames
    await a.send("decisions", 3, frame_id="d3")
    await a.send_raw(b'{"channel": "decisions", "payload": 4, "id": "d4"}')
    await a.send("decisions", 5, frame_id="d5")
    acks, errors = [], []
    while len(acks) + len(errors) < 4:
        frame = await a.next()
        if frame["channel"] == "ack":
            acks.append(frame["payload"]["id"])
        elif frame["channel"] == "error":  # at once: the acks wait for their commits
            errors.append(frame["payload"]["code"])
    assert acks == ["d2", "d3", "d5"] and errors == ["bad_frame"]
    assert any(m.get("text") == "".join(fragments) for m in queued)
    stored = [e["value"] for e in await server.events(experiment) if e["channel"] == "decisions"]
    assert stored == [1, 2, 3, 5]
    await b.close()


def client_frame(text: str | bytes, opcode: Opcode = Opcode.TEXT) -> bytes:
    """A frame as a client sends it (masked), made by ``websockets``."""
    data = text.encode() if isinstance(text, str) else text
    return Frame(opcode, data).serialize(mask=True)


def parser_feeds(protocol: FrameProtocol) -> list[bytes]:
    """What the socket's ``websockets`` parser is fed from now on, each piece as it comes."""
    fed: list[bytes] = []
    receive_data = protocol.conn.receive_data

    def counted(data: bytes) -> None:
        fed.append(bytes(data))
        receive_data(data)

    protocol.conn.receive_data = counted  # type: ignore[method-assign]
    return fed


async def test_whole_text_frames_are_read_without_the_parser_and_the_rest_with_it(server: Harness) -> None:
    """A whole text frame is read here (``websockets``' parser is not fed); a ping still goes to
    the parser, and its pong comes back; decisions go on after it, read here again."""
    (experiment, a_code, _), a, b = await two_playing(server)
    fed = parser_feeds(protocol_of(server_side(server, a_code)))
    for n in range(3):
        await a.send("decisions", n, frame_id=f"w{n}")
        assert (await a.expect("ack"))["payload"]["id"] == f"w{n}"
    assert fed == []
    pong = await a.ws.ping(b"still there")
    await asyncio.wait_for(pong, 5)
    assert len(fed) == 1 and fed[0][0] == 0x89  # the ping alone (FIN, opcode 9)
    await a.send("decisions", 3, frame_id="w3")
    assert (await a.expect("ack"))["payload"]["id"] == "w3"
    assert len(fed) == 1
    stored = [e["value"] for e in await server.events(experiment) if e["channel"] == "decisions"]
    assert stored == [0, 1, 2, 3]
    await b.close()


async def test_frames_cut_anywhere_by_the_network_are_each_read_once_whole_and_in_order(server: Harness) -> None:
    """The bytes of twelve decisions (some with a 16-bit length) and a ping between them come in
    pieces of 1 to 300 bytes: each decision is stored and acknowledged once, in order; the parser
    reads the cut ones, and once it stands between two frames again, whole ones are read here."""
    (experiment, a_code, _), a, b = await two_playing(server)
    texts = [
        orjson.dumps({"channel": "decisions", "payload": n / 2, "id": f"c{n}"}).decode() + " " * (200 if n % 3 == 0 else 0)
        for n in range(1, 13)
    ]
    frames = [client_frame(t) for t in texts]
    assert {len(f) > 127 for f in frames} == {True, False}
    # two whole frames, then ten frames and a ping cut anywhere, then two whole frames
    middle = b"".join(frames[2:6]) + client_frame(b"p", Opcode.PING) + b"".join(frames[6:10])
    fed = parser_feeds(protocol_of(server_side(server, a_code)))
    transport: Any = a.ws.transport
    for whole in frames[:2]:
        transport.write(whole)
        await asyncio.sleep(0.002)
    sizes = itertools.cycle([1, 2, 3, 5, 8, 13, 64, 300, 6, 7])
    pos = 0
    while pos < len(middle):
        size = next(sizes)
        transport.write(middle[pos : pos + size])
        pos += size
        await asyncio.sleep(0.002)
    for whole in frames[10:]:
        transport.write(whole)
        await asyncio.sleep(0.002)
    acks = [(await a.expect("ack"))["payload"]["id"] for _ in texts]
    assert acks == [f"c{n}" for n in range(1, 13)]
    stored = [e["value"] for e in await server.events(experiment) if e["channel"] == "decisions"]
    assert stored == [n / 2 for n in range(1, 13)]
    assert sum(map(len, fed)) == len(middle), "the whole frames read here, the cut ones and the ping by the parser"
    await b.close()


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (client_frame(b'{"channel": "decisions", "payload": 1}\xff'), 1007),
        (bytes((0x81, 5)) + b"hello", 1002),  # not masked
        (bytes((0xC1, 0x80 | 2)) + b"\0\0\0\0" + b"{}", 1002),  # a reserved bit without an extension
    ],
    ids=["not-utf8", "unmasked", "rsv1"],
)
async def test_a_frame_the_fast_read_does_not_take_is_refused_as_websockets_refuses_it(
    server: Harness, frame: bytes, code: int
) -> None:
    _, a, b = await two_playing(server)
    await a.send("decisions", 1, frame_id="before")
    assert (await a.expect("ack"))["payload"]["id"] == "before"
    transport: Any = a.ws.transport
    transport.write(frame)
    with pytest.raises(ConnectionClosed) as closed:
        for _ in range(50):
            await a.next(wait=5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == code
    await b.close()


class RenamedProtocol(FrameProtocol):
    """FrameProtocol on a uvicorn that renamed something it reads (as a release might)."""

    USED = (*FrameProtocol.USED, "a_name_this_uvicorn_does_not_have")


@pytest.mark.parametrize("ws", [RenamedProtocol, "websockets-sansio"], ids=["renamed", "uvicorn"])
async def test_without_the_direct_way_every_frame_goes_the_ordinary_way(
    sqlite_url: str, ws: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A uvicorn protocol that lacks what the direct way reads, or uvicorn's own protocols: no
    extension is offered, and a group still gets every broadcast, ack and error, in order."""
    caplog.set_level(logging.WARNING, logger="synclab.frames")
    async with running_server(sqlite_url, ws=ws) as server:
        (exp_code, a_code, b_code), a, b = await two_playing(server)
        for code in (a_code, b_code):
            conn = server_side(server, code)
            assert conn._write is None
            assert "synclab.frames" not in (conn.websocket.scope.get("extensions") or {})
        for n in range(5):
            await a.send("decisions", n, frame_id=f"a{n}")
        await b.send_raw("not JSON")
        for n in range(5):
            assert (await a.expect("ack"))["payload"]["id"] == f"a{n}"
        seen: list[Any] = []
        refused: list[str] = []
        while len(seen) < 5 or not refused:
            frame = await b.next()
            if frame["channel"] == "group_decisions" and frame["payload"].get(a_code) is not None:
                seen.append(frame["payload"][a_code])
            elif frame["channel"] == "error":
                refused.append(frame["payload"]["code"])
        assert seen == list(range(5)) and refused == ["bad_json"]
        rows = await server.events(exp_code)
        assert [r["value"] for r in rows if r["channel"] == "decisions"] == list(range(5))
    warnings = [r for r in caplog.records if r.name == "synclab.frames"]
    if ws is RenamedProtocol:
        assert len(warnings) == 1 and "a_name_this_uvicorn_does_not_have" in warnings[0].getMessage()
    else:
        assert not warnings


class UnreadProtocol(FrameProtocol):
    """FrameProtocol on a websockets that renamed something its read of whole frames uses."""

    PARSER_USED = (*FrameProtocol.PARSER_USED, "reader.a_name_this_websockets_does_not_have")


async def test_without_what_the_read_uses_every_frame_goes_through_the_parser(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="synclab.frames")
    async with running_server(sqlite_url, ws=UnreadProtocol) as server:
        (_, a_code, _), a, b = await two_playing(server)
        protocol = protocol_of(server_side(server, a_code))  # frames still written directly
        assert protocol._on_text is not None and not protocol._reads
        fed = parser_feeds(protocol)
        for n in range(3):
            await a.send("decisions", n, frame_id=f"u{n}")
            assert (await a.expect("ack"))["payload"]["id"] == f"u{n}"
        assert len(fed) == 3
        assert "a_name_this_websockets_does_not_have" in caplog.text
        await b.close()


def test_a_cork_flushes_every_socket_at_its_outermost_end_though_one_fails() -> None:
    """Nested corks hold until the outermost ends; a socket whose flush fails does not keep the others' frames."""
    from server import frames

    class Socket:
        def __init__(self, fails: bool) -> None:
            self.fails, self.flushed = fails, 0

        def flush(self) -> None:
            self.flushed += 1
            if self.fails:
                raise OSError("gone")

    sockets = [Socket(fails=False), Socket(fails=True), Socket(fails=False)]
    with corked():
        holding = frames._cork.holding
        assert holding == []
        with corked():
            assert frames._cork.holding is holding  # nested: the same cork
            holding.extend(sockets)  # type: ignore[arg-type]
        assert [s.flushed for s in sockets] == [0, 0, 0]
    assert [s.flushed for s in sockets] == [1, 1, 1]
    assert frames._cork.holding is None
    with pytest.raises(ValueError), corked():  # ended by an exception: flushed all the same
        frames._cork.holding.append(sockets[0])  # type: ignore[union-attr, arg-type]
        raise ValueError
    assert sockets[0].flushed == 2 and frames._cork.holding is None
