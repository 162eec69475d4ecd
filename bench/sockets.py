"""The participants' sockets of the load generator: each text frame stamped with when its bytes
were read, and frames read and written whole where ``websockets``' bookkeeping would cost the
schedule its time.

:func:`open_socket` opens every participant's socket as a :class:`StampedConnection`;
:func:`masked_text_frame` makes the frames it writes at once. What is done with each frame read
(:class:`bench.record.Peer`) and when each frame is written (:mod:`bench.schedule`) is theirs:
this module knows the WebSocket protocol, not the benchmark.
"""

from __future__ import annotations

import contextlib
import time
from array import array
from collections import deque
from collections.abc import Callable
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.speedups import apply_mask
from websockets.streams import StreamReader

OPEN_TIMEOUT = 30.0
#: a socket's first frame (a participant's hello, the monitor's snapshot) comes within this
HELLO_TIMEOUT = 30.0
WS_MAX_SIZE = 1024 * 1024


class StampedConnection(ClientConnection):
    """A client socket that notes when the bytes of each text frame were read off the socket.

    A burst of frames read at once all get the time of that read, so the time the generator
    spends handling the first frames of a burst is not counted as latency of the last ones.

    Once it takes frames as they are read (:attr:`on_text`) and ``websockets``' parser stands
    between two frames, the socket reads the frames itself (:meth:`_take_frames`): a whole,
    unmasked, unfragmented text frame goes to :attr:`on_text` at once, and any other frame (a
    close, a ping, a fragment, one over the size limit or not UTF-8) whole to ``websockets``, which
    so only ever sees whole frames and handles those as before. ``websockets``' parsing and its
    connection's bookkeeping were a third of the generator's CPU at 3,000 decisions a second
    (py-spy), where the generator lagged its schedule by over 2 ms at p99 on a slow machine.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stamps: deque[float] = deque()
        self._read_at = 0.0
        #: takes each whole text frame as it is read, with its stamp, once set (after the hello):
        #: no message assembled and no reader task woken per frame, so the generator keeps its
        #: schedule at 3,000 decisions a second. While frames queued before are still unread,
        #: what comes queues behind them: the order holds.
        self.on_text: Callable[[str, float], None] | None = None
        #: bytes read and not yet a whole frame, once the socket reads frames itself (else ``None``)
        self._unparsed: bytearray | None = None
        #: text frames the socket read itself, and frames it passed whole to ``websockets``
        self.direct = 0
        self.passed = 0
        #: when set, every read's handling is noted here as its start and end (perf_counter
        #: seconds, flat): the time the generator spent on what the target sent (see
        #: :func:`.measures.own_lags`); the run's sockets share one
        self.spans: array[float] | None = None

    def data_received(self, data: bytes) -> None:
        self._read_at = start = time.perf_counter()
        try:
            self._received(data)
        finally:
            if self.spans is not None:
                self.spans.append(start)
                self.spans.append(time.perf_counter())

    def _received(self, data: bytes) -> None:
        if self._unparsed is None:
            if not self._between_frames():
                super().data_received(data)
                return
            self._unparsed = bytearray()
        self._unparsed += data
        self._take_frames()

    def eof_received(self) -> None:
        if self._unparsed:  # a frame cut short: websockets says so as it would have
            self._pass(bytes(self._unparsed))
            self._unparsed.clear()
        super().eof_received()

    def _between_frames(self) -> bool:
        """Whether the socket may read frames itself from now on: frames are taken as they are
        read, none is queued, and ``websockets``' parser waits for the first byte of a frame (it
        holds no bytes, and waits in :meth:`StreamReader.at_eof`, where its loop begins a frame)."""
        protocol = self.protocol
        if (
            self.on_text is None
            or self.stamps
            or protocol.state is not State.OPEN
            or protocol.current_size is not None
            or protocol.reader.buffer
        ):
            return False
        waiting: Any = protocol.parser
        while getattr(waiting, "gi_yieldfrom", None) is not None:
            waiting = waiting.gi_yieldfrom
        return getattr(waiting, "gi_code", None) is StreamReader.at_eof.__code__

    def _take_frames(self) -> None:
        """Every whole frame read so far: text to :attr:`on_text`, the rest to ``websockets``."""
        assert self._unparsed is not None
        buffer, at = self._unparsed, 0
        size = len(buffer)
        while size - at >= 2:
            head1, head2 = buffer[at], buffer[at + 1]
            length, start = head2 & 0x7F, at + 2
            if length == 126:
                if size - start < 2:
                    break
                length, start = int.from_bytes(buffer[start:start + 2], "big"), start + 2
            elif length == 127:
                if size - start < 8:
                    break
                length, start = int.from_bytes(buffer[start:start + 8], "big"), start + 8
            if head2 & 0x80 or length > WS_MAX_SIZE:
                # a masked frame from a server, or one over the limit: websockets fails the
                # connection as it would have; whatever follows is its to read, too
                self._pass(bytes(buffer[at:]))
                buffer.clear()
                return
            end = start + length
            if end > size:
                break
            text = None
            on_text = self.on_text
            if head1 == 0x81 and on_text is not None and not self.stamps and self.protocol.current_size is None:
                with contextlib.suppress(UnicodeDecodeError):
                    text = buffer[start:end].decode()
            if text is not None:
                assert on_text is not None
                self.direct += 1
                on_text(text, self._read_at)
            else:
                self._pass(bytes(buffer[at:end]))
            at = end
        del buffer[:at]

    def _pass(self, data: bytes) -> None:
        self.passed += 1
        super().data_received(data)

    def process_event(self, event: Any) -> None:
        if isinstance(event, Frame) and event.opcode is Opcode.TEXT:
            on_text = self.on_text
            if on_text is not None and event.fin and not self.stamps:
                on_text(bytes(event.data).decode(), self._read_at)
                return
            self.stamps.append(self._read_at)
        super().process_event(event)

    def write_frame(self, frame: bytes) -> bool:
        """Write a whole, masked client frame (:func:`masked_text_frame`) to the socket at once;
        ``False`` (nothing written) when it must go the ordinary way: the socket is not open, a
        fragmented message is being sent, or the transport still holds unsent bytes."""
        transport = self.transport
        if (
            self.protocol.state is not State.OPEN
            or self.protocol.expect_continuation_frame
            or transport.is_closing()
            or transport.get_write_buffer_size()
        ):
            return False
        transport.write(frame)
        return True


def masked_text_frame(payload: bytes, key: bytes) -> bytes:
    """A whole client text frame of ``payload`` masked with the 4 bytes of ``key`` (RFC 6455 5.2)."""
    length = len(payload)
    if length < 126:
        head = bytes((0x81, 0x80 | length))
    elif length < 1 << 16:
        head = bytes((0x81, 0x80 | 126)) + length.to_bytes(2, "big")
    else:
        head = bytes((0x81, 0x80 | 127)) + length.to_bytes(8, "big")
    return head + key + apply_mask(payload, key)


async def open_socket(url: str) -> StampedConnection:
    """A participant's socket at ``url``, its frames stamped, nothing compressed, never a full queue."""
    ws = await connect(
        url,
        create_connection=StampedConnection,
        max_size=WS_MAX_SIZE,
        max_queue=None,  # never stop reading: a backed-up reader would look like server latency
        compression=None,
        open_timeout=OPEN_TIMEOUT,
        close_timeout=2.0,
    )
    assert isinstance(ws, StampedConnection)
    return ws
