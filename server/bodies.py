"""Request bodies, bounded: no endpoint reads more than ``SYNCLAB_MAX_BODY_BYTES`` of one.

:class:`BoundedBodies` wraps the ASGI ``receive`` of every HTTP request, so whatever an endpoint
reads a body with (``request.body()``, ``.json()``, ``.form()``, ``.stream()``, today's and any
later one's) goes through it:

- a ``Content-Length`` past the limit is refused at the endpoint's first read, before any byte
  of the body is taken;
- a body without one (``Transfer-Encoding: chunked``) is counted as it comes and refused as soon
  as it grows past the limit; the endpoint never holds more than the limit and one chunk.

Either way the read raises :class:`~server.exceptions.PayloadTooLarge`, which the app answers
as every refusal, 413 with ``{"error"}``. The check waits for the endpoint's read, so an
endpoint still refuses a caller without a token (401) before anything of its body is read.

A refusal is only for the endpoint's read, never for its answer's. Under ASGI 2.3 (uvicorn's)
Starlette's streamed and file answers (``StreamingResponse``: the exports; ``FileResponse``: the
pages, ``view.js``, ``/static``) read the request while they send, only to hear of the client's
disconnect, starting one step before the answer's ``http.response.start``; a refusal raised there
cut a 200 off after its first chunk. So:

- a request declaring a body past the limit is passed on as ASGI 2.4, under which those answers
  do not read the request at all (they stop on a failed send instead; uvicorn drops the sends to
  a client gone, so such an answer runs to its end: bounded by what it sends);
- once ``http.response.start`` is sent no read raises: what is past the limit is dropped unseen
  and the read returns the disconnect when it comes (the server reports one once the answer is
  complete, and the connection is closed after it, see below).

A body left unread that may be larger than the limit (refused, declared larger, or chunked)
is never read: its answer (a 413, or a 401 before the read) says ``Connection: close`` and
uvicorn closes the connection after it, instead of reading and dropping the rest, which may
never end. A client that reads while it sends (curl, a browser) or once its send fails (httpx's
``Client``) gets the answer; one that reads only after sending all (httpx's ``AsyncClient``)
gets a reset connection.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .exceptions import PayloadTooLarge

#: the setting that moves the limit, named in every refusal
SETTING = "SYNCLAB_MAX_BODY_BYTES"
#: the ASGI spec version told to the app for a request declaring a body past the limit: from 2.4
#: on, Starlette's streamed and file answers do not read the request to hear of a disconnect
_UNREAD_SPEC = "2.4"


def _declared(scope: Scope) -> tuple[int | None, bool]:
    """The request's ``Content-Length`` (``None``: none, or none that reads as a length) and
    whether it has a body at all (either header)."""
    length: int | None = None
    body = False
    for name, value in scope["headers"]:
        key = bytes(name).lower()
        if key == b"content-length":
            body = True
            text = bytes(value).strip()
            length = int(text) if text.isdigit() else None
        elif key == b"transfer-encoding":
            body = True
    return length, body and length != 0


class BoundedBodies:
    """ASGI middleware: every HTTP request body read through a bound (see the module's docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit: int = scope["app"].state.runtime.settings.max_body_bytes
        declared, pending = _declared(scope)
        received = 0
        started = False

        def too_large(got: str) -> PayloadTooLarge:
            return PayloadTooLarge(f"expected a request body of at most {limit} bytes ({SETTING}), got {got}")

        async def bounded() -> Message:
            nonlocal received, pending
            while True:
                if declared is not None and declared > limit and not started:
                    raise too_large(f"Content-Length {declared}")
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    pending = pending and bool(message.get("more_body", False))
                    if received <= limit and (declared is None or declared <= limit):
                        return message
                    if not started:
                        raise too_large("more while it was read")
                    # The answer has started (a streamed one reads only to hear of the client's
                    # disconnect): a 413 can no longer be sent, and raising would cut the answer
                    # off. What is past the limit is dropped unseen, and the read waits on for the
                    # disconnect, which the server reports once the answer is complete.
                    continue
                if message["type"] == "http.disconnect":
                    pending = False
                return message

        async def closing(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if pending and (declared is None or declared > limit):
                    headers = [(k, v) for k, v in message.get("headers", []) if bytes(k).lower() != b"connection"]
                    message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        if declared is not None and declared > limit:
            scope = {**scope, "asgi": {**scope.get("asgi", {}), "spec_version": _UNREAD_SPEC}}
        await self.app(scope, bounded, closing)
