"""A connection to Redis spoken to directly: the hub's two busy ones, the listener and the publisher.

Through redis-py every pub/sub message cost a ``get_message`` (a coroutine, a timeout context
with its timer, the message made into a dict) and every ``PUBLISH`` answer a ``read_response``
of the same kind: together about a fifth of a cluster worker's event loop at 1,000 decisions a
second (see bench/README.md). Here the socket is an :class:`asyncio.Protocol` whose bytes go to
hiredis' reader (its C parser, which redis-py used too) and every complete reply to a callback,
at once, on the loop: no task, no coroutine, no timer per message. Commands are packed by
hiredis and written together.

Only RESP2 and what a hub needs: the connection's address, ``AUTH``, ``SELECT`` and TLS come
from the same ``REDIS_URL`` as the rest of the cluster's commands (redis-py's pool, its
``connection_class`` and ``connection_kwargs``).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any, cast

import hiredis
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection

log = logging.getLogger("synclab.hub")
#: a reply as hiredis gives it: str, int, None, a list of replies, or a :class:`hiredis.ReplyError`
Reply = Any
#: what a connection gets unasked: every reply that no :meth:`RespConnection.call` waits for
OnReply = Callable[[Reply], None]
#: the TLS options of ``rediss://`` URLs honoured here; any other is refused at start
_TLS_OPTIONS = {"ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_check_hostname", "ssl_password"}
#: why a TLS connection without a client certificate may be closed by the server straight away
NO_CLIENT_CERTIFICATE = (
    "a Redis that authenticates its TLS clients (tls-auth-clients) closes the connection of one without a "
    "certificate: give ssl_certfile and ssl_keyfile in REDIS_URL"
)
_CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


class RespConnection(asyncio.Protocol):
    """One connection: :meth:`write` commands, each reply to ``on_reply`` in order (or to a :meth:`call`).

    ``lost`` is done, with the reason as its exception, once the connection is closed or broken;
    :attr:`heard` is the loop's time of the last bytes read.
    """

    def __init__(self, on_reply: OnReply) -> None:
        self._on_reply = on_reply
        self._reader = hiredis.Reader(encoding="utf-8")
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        #: the :meth:`call`s waiting for their replies, in the order their commands were written
        self._calls: deque[asyncio.Future[Reply]] = deque()
        self.lost: asyncio.Future[None] = self._loop.create_future()
        self.heard = self._loop.time()
        #: while the transport's buffer is over its high-water mark: done when it is below again
        self._paused: asyncio.Future[None] | None = None

    @classmethod
    async def open(cls, pool: Any, on_reply: OnReply, *, within: float = 2.0) -> RespConnection:
        """Connect to where ``pool`` (redis-py's, made from the URL) connects, log in as it would,
        and see that Redis answers."""
        kwargs: dict[str, Any] = pool.connection_kwargs
        loop = asyncio.get_running_loop()

        def made() -> RespConnection:
            return cls(on_reply)

        async def connect() -> RespConnection:
            if issubclass(pool.connection_class, UnixDomainSocketConnection):
                _, protocol = await loop.create_unix_connection(made, kwargs["path"])
            else:
                host, port = kwargs.get("host", "localhost"), int(kwargs.get("port", 6379))
                tls = _tls(kwargs) if issubclass(pool.connection_class, SSLConnection) else None
                _, protocol = await loop.create_connection(made, host, port, ssl=tls)
            return protocol

        connection = await asyncio.wait_for(connect(), within)
        anonymous = issubclass(pool.connection_class, SSLConnection) and not kwargs.get("ssl_certfile")
        try:
            password, username = kwargs.get("password"), kwargs.get("username")
            if password is not None or username is not None:
                await connection.ask(within, "AUTH", *((username, password or "") if username else (password,)))
            if int(kwargs.get("db") or 0):
                await connection.ask(within, "SELECT", int(kwargs["db"]))
            # answering, not only accepting: a stopped Redis's kernel still accepts, and with TLS 1.3
            # a server that wants a client certificate hangs up after the handshake, at the first reply
            await connection.ask(within, "PING")
        except ConnectionError as exc:
            closed_by_server = connection.lost.done()  # not an error reply: the server hung up
            connection.close()
            if anonymous and closed_by_server:
                raise ConnectionError(f"{exc} ({NO_CLIENT_CERTIFICATE})") from exc
            raise
        except BaseException:
            connection.close()
            raise
        return connection

    # ------------------------------------------------------------------ the caller's side

    def write(self, commands: Iterable[Sequence[Any]]) -> None:
        """Write the commands, packed, in one piece (nothing once the connection is lost)."""
        if self._transport is None or self.lost.done():
            raise ConnectionError("the connection to Redis is closed")
        self._transport.write(b"".join([hiredis.pack_command(tuple(c)) for c in commands]))

    async def call(self, *command: Any) -> Reply:
        """Write one command and wait for its reply (an error reply is returned, not raised)."""
        future: asyncio.Future[Reply] = self._loop.create_future()
        self._calls.append(future)
        self.write((command,))
        done, _ = await asyncio.wait((future, self.lost), return_when=asyncio.FIRST_COMPLETED)
        if future in done:
            return future.result()
        self.lost.result()  # raises why
        raise ConnectionError("the connection to Redis closed")

    async def ask(self, within: float, *command: Any) -> Reply:
        """:meth:`call` within ``within`` seconds, and an error reply raised as :class:`ConnectionError`."""
        reply = await asyncio.wait_for(self.call(*command), within)
        if isinstance(reply, hiredis.ReplyError):
            raise ConnectionError(f"Redis refused {command[0]}: {reply}")
        return reply

    async def drained(self) -> None:
        """Until the transport's buffer is below its high-water mark again (at once when it is)."""
        if self._paused is not None:
            await asyncio.wait((self._paused, self.lost), return_when=asyncio.FIRST_COMPLETED)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        self._lose(ConnectionError("closed here"))

    # ------------------------------------------------------------------ asyncio's side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport's subclasses

    def data_received(self, data: bytes) -> None:
        self.heard = self._loop.time()
        reader = self._reader
        reader.feed(data)
        try:
            reply = reader.gets()
            while reply is not False:
                calls = self._calls
                if calls:
                    future = calls.popleft()
                    if not future.done():
                        future.set_result(reply)
                else:
                    try:
                        self._on_reply(reply)
                    except Exception:  # the caller's fault: logged, and the connection read on
                        log.exception("hub: a reply from Redis could not be handled: %.200r", reply)
                reply = reader.gets()
        except (hiredis.ProtocolError, ValueError) as exc:  # not RESP, or not UTF-8: the stream is lost
            self._lose(ConnectionError(f"Redis's answer could not be parsed: {exc}"))
            if self._transport is not None:
                self._transport.close()

    def pause_writing(self) -> None:
        if self._paused is None:
            self._paused = self._loop.create_future()

    def resume_writing(self) -> None:
        paused, self._paused = self._paused, None
        if paused is not None and not paused.done():
            paused.set_result(None)

    def eof_received(self) -> bool:
        self._lose(ConnectionError("Redis closed the connection"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._lose(ConnectionError(f"the connection to Redis was lost: {exc}" if exc else "Redis closed the connection"))

    def _lose(self, exc: BaseException) -> None:
        if not self.lost.done():
            self.lost.set_exception(exc)
            self.lost.exception()  # retrieved: nobody need be waiting for it
        for future in self._calls:
            if not future.done():
                future.set_exception(exc)
                future.exception()
        self._calls.clear()
        self.resume_writing()


def _tls(kwargs: dict[str, Any]) -> ssl.SSLContext:
    """The TLS context of a ``rediss://`` URL's options."""
    unknown = sorted(k for k in kwargs if k.startswith("ssl_") and k not in _TLS_OPTIONS and kwargs[k] is not None)
    if unknown:
        raise ValueError(f"REDIS_URL: the hub's connections do not support {', '.join(unknown)}")
    context = ssl.create_default_context(cafile=kwargs.get("ssl_ca_certs"))
    if kwargs.get("ssl_certfile"):
        try:
            context.load_cert_chain(kwargs["ssl_certfile"], kwargs.get("ssl_keyfile"), kwargs.get("ssl_password"))
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(
                f"REDIS_URL: the client certificate (ssl_certfile={kwargs['ssl_certfile']}, "
                f"ssl_keyfile={kwargs.get('ssl_keyfile')}) could not be loaded: a missing or unreadable file, "
                f"not PEM, a key that is not the certificate's, or a wrong or missing ssl_password ({exc})"
            ) from exc
    reqs = kwargs.get("ssl_cert_reqs") or "required"
    if isinstance(reqs, str):
        if reqs.lower() not in _CERT_REQS:
            raise ValueError(f"REDIS_URL: ssl_cert_reqs={reqs!r} is none of {', '.join(_CERT_REQS)}")
        reqs = _CERT_REQS[reqs.lower()]
    check = kwargs.get("ssl_check_hostname")
    context.check_hostname = reqs != ssl.CERT_NONE and (check is None or bool(check))
    context.verify_mode = reqs
    return context
