"""WebSocket frames made once per broadcast and written straight to each recipient's socket.

A group's frame goes to every member: through the ASGI ``send`` each recipient costs a message
dict, Starlette's and uvicorn's checks, a coroutine, the text encoded to UTF-8 and framed by
``websockets`` again, and the pieces joined: about a tenth of the server's CPU per decision at
2,000 decisions a second (see bench/README.md). Here the frame's bytes are made once
(:func:`frame_of`) and each recipient's transport is written to directly.

The direct way is an ASGI extension of our own, ``synclab.frames``, that :class:`FrameProtocol`
(uvicorn's sans-I/O ``websockets`` protocol, used by ``synclab serve``) puts in every
WebSocket's scope: ``scope["extensions"]["synclab.frames"]["write"](frame)`` writes a complete
frame and returns ``True``, or writes nothing and returns ``False`` when the frame has to wait
or cannot go (the transport's buffer is over its high-water mark, the socket is closing or
closed): the caller then sends it the ordinary way, which waits for the buffer or raises, and
queues what comes after it (:meth:`server.connection.ClientConnection.send`). Under another
server the extension is absent and every frame goes the ordinary way.

While :class:`corked` is in force (the callbacks of one committed batch of writes, see
:class:`server.storage.EventWriter`), frames written this way are kept per socket and written
together when it ends: a decision's sender gets the group's frame and its ``ack`` in one system
call, not two.

The other way round, ``take_texts`` hands each text message to the app as it is read (see
:meth:`FrameProtocol.take_texts`), not through the queue behind ``receive``: no task is woken
and no ``receive`` runs for a participant's frame. A whole text frame that arrives where
``websockets``' parser stands between two frames is read here too (:meth:`FrameProtocol._take_frames`:
its header, its mask and its UTF-8, a tenth of the parser's cost); anything else (control frames,
fragments, a frame cut by the network, whatever follows them) goes through the parser as before.

A frame written here is one unfragmented, uncompressed text frame, which is valid whatever
extensions the handshake agreed (per-message deflate is off anyway); ``websockets``' own state
is not involved, as it tracks only fragmented messages and the closing handshake.

:class:`FrameProtocol` reads attributes of uvicorn's protocol that are not a public API
(:attr:`FrameProtocol.USED`). Each socket's protocol is checked for them before the extension is offered: a
uvicorn that renamed one serves every socket the ordinary way, with one warning in the log, rather
than failing on a broadcast; a uvicorn without the sans-I/O protocol at all gets its own default.
"""

from __future__ import annotations

import logging
import struct
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, cast

from websockets.protocol import State
from websockets.streams import StreamReader

try:  # websockets' own C unmasking, as its parser uses
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - a build without its C extension
    from websockets.utils import apply_mask

#: whether this uvicorn has the sans-I/O protocol that :class:`FrameProtocol` builds on
SANSIO: bool
if TYPE_CHECKING:
    from uvicorn.protocols.websockets.websockets_sansio_impl import (
        WebSocketsSansIOProtocol as _Base,
    )
else:
    try:
        from uvicorn.protocols.websockets.websockets_sansio_impl import (
            WebSocketsSansIOProtocol as _Base,
        )
        SANSIO = True
    except ImportError:  # pragma: no cover - a uvicorn without it: its own default (WEBSOCKET_OPTIONS)
        _Base, SANSIO = object, False

log = logging.getLogger("synclab.frames")

#: where ``websockets``' parser waits between two frames (:meth:`FrameProtocol._between_frames`)
_AT_EOF = StreamReader.at_eof.__code__

#: the ASGI scope's extension: ``{"write": Callable[[bytes], bool], "take_texts": Callable[[Callable[[str], None] | None], None],
#: "lost_code": Callable[[], int | None]}``
EXTENSION = "synclab.frames"
#: the largest frame a client may send: uvicorn closes a socket with 1009 past this; below it our
#: own limit (``max_frame_bytes``) answers with an error frame
WS_MAX_SIZE = 1024 * 1024

#: a final text frame (FIN and opcode 1), the first byte of every frame made here
_TEXT = 0x81


class _Cork(threading.local):
    """This thread's cork (:class:`corked`)."""

    #: the sockets holding frames, or ``None`` when frames go at once
    holding: list[FrameProtocol] | None = None


_cork = _Cork()


class FrameProtocol(_Base):
    """uvicorn's sans-I/O WebSocket protocol, with a way to write a ready frame and to take text
    messages as they come: :data:`EXTENSION`."""

    #: what the class reads of uvicorn's protocol (its state, its transport, its queue of messages
    #: for the app) beyond the methods it overrides
    USED: ClassVar[tuple[str, ...]] = (
        "disconnected", "close_sent", "handshake_complete", "initial_response", "transport", "queue", "logger", "conn",
    )
    #: what :meth:`_take_frames` reads of ``websockets``' protocol (``conn``) and of its reader
    PARSER_USED: ClassVar[tuple[str, ...]] = (
        "parser", "state", "parser_exc", "current_size", "extensions", "max_message_size", "reader.buffer",
    )
    #: whether this class's sockets have all of :attr:`USED` (unset: not looked at yet; see :meth:`_fits`)
    _fit: ClassVar[bool | None] = None
    #: whether whole text frames are read here (:meth:`_take_frames`): the sockets have all of
    #: :attr:`PARSER_USED` (set with :attr:`_fit`; ``False``: every byte goes to the parser)
    _reads: ClassVar[bool] = False
    #: frames kept while corked, written by :meth:`flush`
    _held: list[bytes] | None = None
    #: the app's taker of text messages (:meth:`take_texts`), or ``None``: every message is queued
    _on_text: Callable[[str], None] | None = None
    #: a fragmented message is being received: it, and what follows it, go through the queue
    _fragmented = False
    #: the transport's buffer is past its high-water mark (:meth:`pause_writing`, as uvicorn's ``writable``
    #: cleared): an attribute, read at every frame (``writable.is_set()``, a call of Python, ~160 instructions)
    _paused = False

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)  # absent when the handshake was refused
        if scope is not None and self._fits():
            scope["extensions"][EXTENSION] = {
                "write": self.write_frame, "take_texts": self.take_texts, "lost_code": self.lost_code,
            }

    def _fits(self) -> bool:
        """Whether this socket has what the class reads; a warning, once per class, if not."""
        cls = type(self)
        fit: bool | None = cls.__dict__.get("_fit")  # the class's own: a subclass is looked at apart
        if fit is None:
            missing = [name for name in cls.USED if not hasattr(self, name)]
            cls._fit = fit = not missing
            if missing:
                log.warning(
                    "this uvicorn's WebSocket protocol has no %s: frames go through ASGI's send and "
                    "messages through receive (slower, nothing lost); synclab may need a newer release",
                    ", ".join(missing),
                )
            unread = [name for name in cls.PARSER_USED if not _has(getattr(self, "conn", None), name)]
            cls._reads = fit and not unread
            if fit and unread:
                log.warning(
                    "this websockets' protocol has no %s: every frame goes through its parser (slower, "
                    "nothing lost); synclab may need a newer release", ", ".join(unread),
                )
        return fit

    def lost_code(self) -> int | None:
        """The close code of a socket that ended without the client's close frame: the code of the
        close this side sent (uvicorn's keepalive timeout: 1011), else 1006 (lost, RFC 6455 7.1.5);
        ``None`` once the client's close frame came (its own code, or 1005 for none, is right).

        uvicorn tells the app 1005 ("no status received") for a lost connection too."""
        conn = getattr(self, "conn", None)
        if conn is None or conn.close_rcvd is not None:
            return None
        return int(conn.close_sent.code) if conn.close_sent is not None else 1006

    def take_texts(self, on_text: Callable[[str], None] | None) -> None:
        """Hand each text message that comes from now on to ``on_text``, at once, instead of queueing
        it for the app's ``receive`` (``None``: queue them again).

        Only a whole message in one frame that nothing queued is ahead of goes this way; anything
        else (a binary or fragmented message, text that is not UTF-8, whatever came before, the
        disconnect) still goes through ``receive``, in order: the app takes a message from there
        and handles it before the loop reads the socket again. ``on_text`` must not raise.
        After a close was sent nothing reaches the app either way.
        """
        self._on_text = on_text

    def data_received(self, data: bytes) -> None:
        taken = self._take_frames(data) if self._on_text is not None and self._reads else 0
        if taken < len(data):
            super().data_received(data[taken:] if taken else data)

    def _take_frames(self, data: bytes) -> int:
        """Hand ``data``'s leading whole text frames to the app's taker at once; how many bytes they took.

        What ``websockets``' parser and :meth:`handle_text` would do with them, without the
        parser's generators, its ``Frame`` objects and uvicorn's events (a seventh of the loop's
        work for a decision, bench/README.md). Only a final, unfragmented, masked text frame
        (first byte ``0x81``: no reserved bit, no extension) with a 7- or 16-bit length within the
        protocol's limit, whose text is UTF-8, read where the parser stands between two frames
        with nothing buffered, while :meth:`handle_text` would take it too; the first that is
        not (a ping, a close, a binary or fragmented message, a frame cut by the read) and
        everything after it go to the parser, which then reads from a frame's start as before.
        """
        pos, end = 0, len(data)
        while self._between_frames():
            if end - pos < 6 or data[pos] != _TEXT:
                return pos
            length = data[pos + 1] - 0x80  # the mask bit set, as from every client
            if length < 0:
                return pos
            head = pos + 2
            if length == 126:
                if end - pos < 8:
                    return pos
                length = (data[pos + 2] << 8) | data[pos + 3]
                head = pos + 4
            elif length == 127:
                return pos
            limit = self.conn.max_message_size
            stop = head + 4 + length
            if stop > end or (limit is not None and length > limit):
                return pos
            try:
                text = apply_mask(data[head + 4 : stop], data[head : head + 4]).decode()
            except UnicodeDecodeError:  # the parser's way: the socket is closed with 1007
                return pos
            pos = stop
            on_text = self._on_text
            assert on_text is not None  # _between_frames
            try:
                on_text(text)
            except Exception:  # the app's fault: logged, the socket served on (as a task's would be)
                self.logger.exception("the app failed on a text message")
        return pos

    def _between_frames(self) -> bool:
        """Whether the next bytes start a frame that :meth:`handle_text` would hand to the taker."""
        conn = self.conn
        return (
            self._on_text is not None
            and not self._fragmented
            and not self.close_sent
            and conn.state is State.OPEN
            and conn.parser_exc is None
            and conn.current_size is None
            and not conn.extensions
            and not conn.reader.buffer
            and _waits_in(conn.parser) is _AT_EOF  # the parser's loop, before a frame's first byte
            and self.queue.empty()
        )

    def handle_text(self, event: Any) -> None:
        on_text = self._on_text
        if on_text is None or not event.fin or self._fragmented or self.close_sent or not self.queue.empty():
            self._fragmented = not event.fin
            super().handle_text(event)
            return
        try:
            text = bytes(event.data).decode()
        except UnicodeDecodeError:  # uvicorn's own way: the socket is closed with 1007
            super().handle_text(event)
            return
        try:
            on_text(text)
        except Exception:  # the app's fault: logged, the socket served on (as a task's would be)
            self.logger.exception("the app failed on a text message")

    def handle_bytes(self, event: Any) -> None:
        self._fragmented = not event.fin
        super().handle_bytes(event)

    def handle_cont(self, event: Any) -> None:
        if event.fin:
            self._fragmented = False
        super().handle_cont(event)

    def write_frame(self, frame: bytes) -> bool:
        """Write ``frame`` now if it can go at once; ``False`` (nothing written) when it has to wait for the
        buffer to drain, or the socket is not open for data (before the handshake's end, after a close)."""
        if (self.disconnected or self.close_sent or not self.handshake_complete or self.initial_response is not None
                or self._paused or self.transport.is_closing()):
            return False
        holding = _cork.holding
        if holding is None:
            self.transport.write(frame)
        elif self._held is None:
            self._held = [frame]
            holding.append(self)
        else:
            self._held.append(frame)
        return True

    def pause_writing(self) -> None:
        self._paused = True
        super().pause_writing()

    def resume_writing(self) -> None:
        self._paused = False
        super().resume_writing()

    def flush(self) -> None:
        """Write the frames kept while corked, in one piece (nothing if the socket closed meanwhile)."""
        held, self._held = self._held, None
        if held and not self.transport.is_closing():
            self.transport.write(held[0] if len(held) == 1 else b"".join(held))


class corked:
    """Frames written the direct way meanwhile (on this thread) go out at the end, one write per socket.

    Nothing that could make a socket's frame wait (its own writes) happens while they are kept,
    so each socket's frames stay in order with whatever it sends after. Nested: the outermost ends it.
    (A class: a ``contextlib.contextmanager``'s generator and objects were two fifths of a batch's callback.)
    """

    __slots__ = ("_outer",)

    def __enter__(self) -> None:
        self._outer = _cork.holding is None
        if self._outer:
            _cork.holding = []

    def __exit__(self, *_: object) -> None:
        if not self._outer:
            return
        holding, _cork.holding = _cork.holding, None
        for protocol in holding or ():
            try:  # noqa: SIM105  (no contextlib.suppress: three calls of Python per socket)
                protocol.flush()
            except Exception:  # a socket gone meanwhile: its frames go with it, the others go on
                pass


#: uvicorn's WebSocket options of ``synclab serve`` (and of the tests' servers and the bench's relay)
WEBSOCKET_OPTIONS: dict[str, Any] = {
    "ws": FrameProtocol if SANSIO else "auto",
    "ws_max_size": WS_MAX_SIZE,
    "ws_per_message_deflate": False,
}


def text_frame(text: str) -> bytes:
    """``text`` as one server-to-client text frame (RFC 6455 5.2: unmasked, the length in 7, 16 or 64 bits)."""
    data = text.encode()
    n = len(data)
    if n < 126:
        return bytes((_TEXT, n)) + data
    if n < 1 << 16:
        return struct.pack("!BBH", _TEXT, 126, n) + data
    return struct.pack("!BBQ", _TEXT, 127, n) + data


#: the last text framed and its frame: a broadcast's members are written one after the other
#: with the same ``str``. One tuple, replaced whole: a loop in another thread (tests run servers
#: side by side) never pairs one text with another's frame.
_last: tuple[str | None, bytes] = (None, b"")


def frame_of(text: str) -> bytes:
    """:func:`text_frame` of ``text``, made once for the recipients of one broadcast."""
    global _last
    last = _last
    if last[0] is text:
        return last[1]
    frame = text_frame(text)
    _last = (text, frame)
    return frame


def _waits_in(generator: Any) -> Any:
    """The code where a suspended generator (``websockets``' parser) waits: the innermost of
    what it yields from (a few levels: the server's parse, the protocol's, the reader's)."""
    for _ in range(8):
        inner = getattr(generator, "gi_yieldfrom", None)
        if inner is None:
            break
        generator = inner
    return getattr(generator, "gi_code", None)


def _has(obj: Any, dotted: str) -> bool:
    """Whether ``obj`` has the attribute path ``dotted`` (``"reader.buffer"``)."""
    for name in dotted.split("."):
        if not hasattr(obj, name):
            return False
        obj = getattr(obj, name)
    return True


def _offered(scope: Any, name: str) -> Any:
    """``name`` of the socket's :data:`EXTENSION` in its ASGI scope, or ``None`` when the server offers none."""
    return ((scope.get("extensions") or {}).get(EXTENSION) or {}).get(name)


def frame_writer(scope: Any) -> Callable[[bytes], bool] | None:
    """The socket's direct writer (:meth:`FrameProtocol.write_frame`), if the server offers it."""
    return cast("Callable[[bytes], bool] | None", _offered(scope, "write"))


def lost_code(scope: Any) -> int | None:
    """The close code of a socket that ended without the client's close frame (:meth:`FrameProtocol.lost_code`);
    ``None`` when its frame came or the server offers no way to tell."""
    code: Callable[[], int | None] | None = _offered(scope, "lost_code")
    return None if code is None else code()


def frame_taker(scope: Any) -> Callable[[Callable[[str], None] | None], None] | None:
    """The socket's :meth:`FrameProtocol.take_texts`, if the server offers it."""
    return cast("Callable[[Callable[[str], None] | None], None] | None", _offered(scope, "take_texts"))
