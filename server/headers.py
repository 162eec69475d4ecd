"""Response headers every page and answer gets: no sniffing, no referrer, no framing but the participant's.

The monitor holds the experimenter's controls (pause, end) and reads its token from the browser's
storage: another site must not frame it and trick a click (``frame-ancestors 'none'``, and
``X-Frame-Options`` for older browsers). A participant's page (``/p/…``, reached through
``/join/…``) may be framed by a lab's own pages, an oTree page say, so it is left framable. No
page sends a referrer: a participant's code, in their page's address, never reaches the
platform they go back to.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

_EVERYWHERE = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]
_NOT_FRAMED = [(b"x-frame-options", b"DENY"), (b"content-security-policy", b"frame-ancestors 'none'")]
#: the paths a lab's own page may frame: the participant's page and the way there
FRAMABLE = ("/p/", "/join/")


class SecurityHeaders:
    """ASGI middleware: adds the headers above to every HTTP response that does not set them itself."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = _EVERYWHERE if str(scope.get("path", "")).startswith(FRAMABLE) else _EVERYWHERE + _NOT_FRAMED

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {bytes(name).lower() for name, _ in headers}
                headers += [(name, value) for name, value in extra if name not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)
