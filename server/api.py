"""The REST API: JSON over HTTP, experimenter endpoints behind a bearer token with a role.

``watch`` tokens read every endpoint; creating, controlling and exporting experiments needs
``admin`` (:func:`server.queries.require_admin`); the token's account is resolved before the
endpoint runs (:class:`server.accounts.Authenticate`).

This module holds the API's routes (:data:`routes`, :data:`action_routes`), the endpoints about
the server itself (health, status, the caller, the games) and the exception handlers that turn
a refusal or a database that could not answer into its status and JSON body. The experiments'
endpoints are in :mod:`server.experimentapi`, the participants' in :mod:`server.participantapi`,
what they read of a request in :mod:`server.queries`, the exports in :mod:`server.export`.
"""

from __future__ import annotations

import logging
from typing import Any

from redis.exceptions import RedisError
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from groups import available_games, shown

from .control import ACTIONS
from .exceptions import ApiError, NotPersisted, Unauthorized, Unavailable
from .experimentapi import (
    deliveries,
    events,
    experiment_action,
    experiment_detail,
    experiment_stats,
    experiments,
    group_history,
    results,
    sessions,
)
from .export import TABLES
from .participantapi import participant_detail, participants_list
from .queries import JSON, require_watch, runtime
from .viewfiles import missing_view


async def healthz(request: Request) -> Response:
    """200 ``{"status": "ok"}``; 503 with the reason while storage is halted (the journal's apply
    failing), while the database does not answer, and, in a cluster, while Redis is unreachable."""
    rt = runtime(request)
    journaled = rt.database.journaled
    if journaled is not None and journaled.failed is not None:
        reason = f"storage halted: the journal could not be applied ({journaled.failed})"
        return JSON({"status": "unavailable", "reason": reason}, status_code=503)
    away = await rt.database.unreachable()
    if away is not None:
        return JSON({"status": "unavailable", "reason": f"the database is unreachable: {away}"}, status_code=503)
    node = rt.node
    if node is not None and not node.hub.up:
        return JSON({"status": "unavailable", "reason": f"Redis is unreachable: {node.hub.reason}"}, status_code=503)
    return JSON({"status": "ok"})


async def server_status(request: Request) -> Response:
    """This process since it started: the writer's batches, writes, events and commit times, live groups, sockets."""
    require_watch(request)
    rt = runtime(request)
    body: dict[str, Any] = {
        "writer": {"batches": rt.writer.batches, "writes": rt.writer.writes, "events": rt.writer.committed,
                   "fenced": rt.writer.fenced, "log_restarts": rt.writer.log_restarts,
                   "commit_ms": rt.writer.commit_ms()},
        "durability": rt.settings.durability,
        "journal": rt.settings.journaled,
        "live_groups": len(rt.groups.groups),
        "connections": len(rt.groups.connections),
    }
    if rt.node is not None:
        try:
            workers = await rt.node.workers()
        except (RedisError, OSError) as exc:  # the heartbeats are in Redis
            raise Unavailable(f"the cluster's workers cannot be listed: Redis: {exc}") from exc
        body["worker"] = rt.node.worker
        body["cluster"] = {
            "name": rt.settings.cluster_name,
            "workers": workers,
            "groups": sum(w["groups"] for w in workers),
            "sockets": sum(w["sockets"] for w in workers),
            "events": sum(w["writer"]["events"] for w in workers),
        }
    return JSON(body)


async def caller(request: Request) -> Response:
    """The account of the caller's token: ``{"name", "role"}`` (any role; the monitor hides what it may not do)."""
    account = require_watch(request)
    return JSON({"name": account.name, "role": account.role})


async def games(request: Request) -> Response:
    return JSON(
        {
            "results": [
                {
                    "name": name,
                    "group_sizes": list(game.group_sizes),
                    "channels": sorted({"decisions", *game.channels}),
                    "config_schema": game.config_schema,
                    "default_config": game.default_config,
                    "doc": (game.__doc__ or "").strip(),
                    # why the game cannot be played (its view file is missing), or null
                    "view_missing": missing_view(game, name),
                }
                for name, game in sorted(available_games().items())
            ]
        }
    )


#: PostgreSQL's ``lock_not_available``: a lock waited for past ``lock_timeout`` (SYNCLAB_LOCK_TIMEOUT)
LOCK_NOT_AVAILABLE = "55P03"
#: seconds a client is asked to wait before it tries a request the database could not answer
RETRY_AFTER = 5
log = logging.getLogger("synclab.api")


def database_error(request: Request, exc: Exception) -> Response:
    """503 for a request the database could not answer now: a table locked past
    ``SYNCLAB_LOCK_TIMEOUT`` (DDL, a migration), the database unreachable or SQLite's file locked
    past its busy timeout. The client may try again (``Retry-After``); the log gets the driver's
    message (not the statement or its parameters)."""
    assert isinstance(exc, OperationalError)
    if getattr(exc.orig, "sqlstate", None) == LOCK_NOT_AVAILABLE or "database is locked" in str(exc.orig):
        message = "the database is busy: a table it needs stayed locked past the server's lock timeout; try again"
    else:
        message = "the database did not answer; try again"
    log.warning("%s %s: 503, the database could not answer: %s", request.method, request.url.path, str(exc.orig).strip())
    return JSON({"error": message}, status_code=503, headers={"Retry-After": str(RETRY_AFTER)})


def storage_halted(request: Request, exc: Exception) -> Response:
    """503 while the journal cannot be applied (:class:`~server.storage.journaled.ApplyFailed`):
    nothing is read or stored until it can, which the apply tries every second."""
    log.warning("%s %s: 503, %s", request.method, request.url.path, exc)
    return JSON({"error": f"{exc}; try again"}, status_code=503, headers={"Retry-After": str(RETRY_AFTER)})


def api_error(request: Request, exc: Exception) -> Response:
    """A refused request (:class:`ApiError`) or write (:class:`NotPersisted`): its status and body."""
    assert isinstance(exc, ApiError | NotPersisted)
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
    return JSON(exc.body(), status_code=exc.status, headers=headers)


def http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404 (no route) and 405 (not this method): under ``/api/`` a JSON error as
    the API's others (``{"error": …}``), the ``Allow`` header kept; elsewhere plain text as before.

    ``/api/experiments/{code}/{name}`` with a name that is no action matched only the actions'
    route (POST), so a GET of ``export.xml`` was a 405: it is a 404 that names what there is.
    """
    assert isinstance(exc, HTTPException)
    path = request.url.path
    if not path.startswith("/api/"):
        return PlainTextResponse(exc.detail, status_code=exc.status_code, headers=exc.headers)
    parts, allowed = path.split("/"), (exc.headers or {}).get("Allow", "none")
    if (exc.status_code == 405 and allowed == "POST" and len(parts) == 5 and parts[2] == "experiments"
            and parts[4] not in ACTIONS):  # only the actions' route matched
        message = (f"no address {shown(parts[4])} under an experiment: its exports are export.csv and export.json "
                   f"(GET, ?table= one of {', '.join(TABLES)}), its actions {', '.join(ACTIONS)} (POST)")
        return JSON({"error": message}, status_code=404)
    if exc.status_code == 404:
        message = f"no such address in the API: {shown(path)} (see /api/openapi.json)"
    elif exc.status_code == 405:
        message = f"{request.method} is not allowed here; allowed: {allowed}"
    else:
        message = exc.detail
    return JSON({"error": message}, status_code=exc.status_code, headers=exc.headers)


routes = [
    Route("/healthz", healthz),
    Route("/api/games", games),
    Route("/api/server", server_status),
    Route("/api/me", caller),
    Route("/api/experiments", experiments, methods=["GET", "POST"]),
    Route("/api/experiments/{code}", experiment_detail),
    Route("/api/experiments/{code}/participants", participants_list),
    Route("/api/experiments/{code}/participants/{participant}", participant_detail),
    Route("/api/experiments/{code}/stats", experiment_stats),
    Route("/api/experiments/{code}/events", events),
    Route("/api/experiments/{code}/groups/{group}/history", group_history),
    Route("/api/experiments/{code}/sessions", sessions),
    Route("/api/experiments/{code}/results", results),
    Route("/api/experiments/{code}/deliveries", deliveries),
]
#: last of all the app's routes: ``{action}`` would match any other path of an experiment
action_routes = [Route("/api/experiments/{code}/{action}", experiment_action, methods=["POST"])]
