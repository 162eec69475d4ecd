"""The Starlette application: routes, the lifespan that owns every resource, error mapping.

``uvicorn server.app:app`` serves it with settings from the environment; tests and the CLI
build their own with :func:`create_app`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import orjson
from sqlalchemy.exc import OperationalError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket

from groups import UnknownGame, load_game

from . import api, export, join, openapi, redaction
from .accounts import Authenticate
from .bodies import BoundedBodies
from .connection import REDWOOD, SYNCLAB, serve
from .exceptions import ApiError, NotPersisted, one_line_refusal
from .headers import SecurityHeaders
from .monitor import monitor_socket
from .runtime import Runtime
from .scheduling import short_slice
from .settings import Settings
from .storage import ApplyFailed, load_seat, participant_game, period_history
from .viewfiles import view_file

STATIC = Path(__file__).resolve().parent / "static"


UNKNOWN_LINK = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>synclab: unknown link</title><link rel="icon" href="data:,"></head>
<body style="font: 16px/1.4 system-ui, sans-serif; max-width: 40rem; margin: 2rem auto; padding: 0 1rem">
<h1>This link is not known</h1>
<p>Check the address you were given, or ask the experimenter for your link.</p>
</body></html>
"""


async def participant_page(request: Request) -> Response:
    """The participant page; an unknown code gets a 404 page that says so."""
    rt: Runtime = request.app.state.runtime
    if await rt.database.read(participant_game, str(request.path_params["code"])) is None:
        return HTMLResponse(UNKNOWN_LINK, status_code=404)
    return FileResponse(STATIC / "participant.html", headers={"Cache-Control": "no-cache"})


async def participant_view(request: Request) -> Response:
    """``/p/{code}/view.js``: the ES module that draws this participant's game."""
    rt: Runtime = request.app.state.runtime
    game = await rt.database.read(participant_game, str(request.path_params["code"]))
    if game is None:
        return PlainTextResponse("unknown participant code", status_code=404)
    try:
        path = view_file(load_game(game))
    except UnknownGame as exc:
        return PlainTextResponse(str(exc), status_code=404)
    if not path.is_file():  # refused at creation (server.viewfiles): a file removed since
        return PlainTextResponse(f"the view of game {game!r} is missing: {path.name}", status_code=404)
    return FileResponse(path, media_type="text/javascript", headers={"Cache-Control": "no-cache"})


async def participant_history(request: Request) -> Response:
    """``/p/{code}/history``: the participant's group's period so far, for the page's charts after a
    reload (the code is the participant's own key, as for the page itself)."""
    rt: Runtime = request.app.state.runtime
    seat = await rt.database.read(load_seat, str(request.path_params["code"]), time.time())
    if seat is None:
        return PlainTextResponse("unknown participant code", status_code=404)
    raw = request.query_params.get("upto_seq", "")
    # ASCII digits only: str.isdigit() also takes '²', which int() refuses
    upto_seq = int(raw) if raw.isascii() and raw.isdigit() and len(raw) < 19 else None
    body = await rt.database.read(period_history, seat.group_id, upto_seq)
    return Response(orjson.dumps(body), media_type="application/json", headers={"Cache-Control": "no-store"})


async def monitor_page(request: Request) -> Response:
    return FileResponse(STATIC / "monitor.html")


async def root_page(request: Request) -> Response:
    """The address ``serve`` listens on, opened as it is: the experimenter's page (it was a 404)."""
    return RedirectResponse("/monitor", status_code=303)


async def participant_socket(websocket: WebSocket) -> None:
    rt: Runtime = websocket.app.state.runtime
    await serve(websocket, rt.groups, rt.settings, SYNCLAB)


async def redwood_socket(websocket: WebSocket) -> None:
    rt: Runtime = websocket.app.state.runtime
    await serve(websocket, rt.groups, rt.settings, REDWOOD)


def create_app(settings: Settings | None = None) -> Starlette:
    """An app; its settings are read from the environment at start unless given."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        redaction.install()
        short_slice()  # before any thread of the server starts: they inherit it (server/scheduling.py)
        rt = await Runtime.open(settings or Settings.from_env())
        app.state.runtime = rt
        try:
            yield
        finally:
            await rt.close()

    routes = [
        *api.routes,
        *export.routes,
        *openapi.routes,
        *api.action_routes,
        *join.routes,
        Route("/p/{code}", participant_page),
        Route("/p/{code}/view.js", participant_view),
        Route("/p/{code}/history", participant_history),
        Route("/monitor", monitor_page),
        Route("/", root_page),
        WebSocketRoute("/ws/p/{code}", participant_socket),
        WebSocketRoute("/ws/monitor/{code}", monitor_socket),
        WebSocketRoute("/redwood/app-name/{app}/group/{group}/participant/{code}/", redwood_socket),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    return Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[Middleware(SecurityHeaders), Middleware(Authenticate), Middleware(BoundedBodies)],
        exception_handlers={ApiError: api.api_error, NotPersisted: api.api_error, OperationalError: api.database_error,
                            ApplyFailed: api.storage_halted, 404: api.http_error, 405: api.http_error},
    )


# every process that serves the app (``synclab serve``, each worker of ``--workers N``, plain
# ``uvicorn server.app:app``) logs a refusal at its startup in one line, not as a traceback
logging.getLogger("uvicorn.error").addFilter(one_line_refusal)
app = create_app()
