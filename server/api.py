"""The REST API: JSON over HTTP, experimenter endpoints behind a bearer token with a role.

``watch`` tokens read every endpoint; creating, controlling and exporting experiments needs
``admin`` (:func:`require_admin`); the token's account is resolved before the endpoint runs
(:class:`server.accounts.Authenticate`).
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any

import orjson
from redis.exceptions import RedisError
from sqlalchemy.exc import OperationalError
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response
from starlette.routing import Route

from groups import available_games, shown

from .accounts import SCOPE_KEY, Account, Refused
from .control import ACTIONS
from .exceptions import (
    ApiError,
    BadRequest,
    Forbidden,
    NotFound,
    NotPersisted,
    Unauthorized,
    Unavailable,
)
from .experiments import parse_request, plan
from .online import settings
from .progress import (
    Filter,
    group_in_experiment,
    participant_id,
    participant_progress,
    participant_sessions,
    stats,
)
from .runtime import Runtime
from .storage import (
    count_deliveries,
    count_events,
    count_experiments,
    count_rows,
    ensure_completion_codes,
    experiment_participants,
    experiment_row,
    insert_experiment,
    iso,
    list_deliveries,
    list_events,
    list_experiments,
    list_results,
    list_sessions,
    missing_completion_codes,
    period_history,
    run_over,
)
from .viewfiles import missing_view

#: the largest integer a query value may be: a 64-bit column holds it
MAX_QUERY_INT = 2**63 - 1
#: a query integer as written: ASCII digits, a sign only for a negative (``int()`` would also take
#: ``1_0``, ``+1``, `` 1`` and the digits of every script)
_QUERY_INT = re.compile(r"-?[0-9]+")
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100
STATUSES = ("pending", "running", "done", "cancelled", "failed")


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


def require_role(request: HTTPConnection, role: str, what: str | None = None) -> Account:
    """The caller's account if it has ``role``: 401 without a token, 403 for a wrong, revoked or too weak one.

    ``what`` names the act in the refusal ("creating experiments needs admin").
    """
    found = request.scope.get(SCOPE_KEY)
    if found is None:
        raise Unauthorized("expected 'Authorization: Bearer <an experimenter token>', got none")
    if isinstance(found, Refused):
        raise Forbidden(found.reason)
    assert isinstance(found, Account)
    if not found.may(role):
        doing = what or f"{request.scope.get('method', 'GET')} {request.url.path}"
        raise Forbidden(f"the token {found.name!r} has the role {found.role}; {doing} needs {role}")
    return found


def require_admin(request: HTTPConnection, what: str | None = None) -> Account:
    """The caller's account if it is an ``admin`` (creating, controlling, exporting)."""
    return require_role(request, "admin", what)


def require_watch(request: HTTPConnection) -> Account:
    """The caller's account if it may read (``watch`` or ``admin``)."""
    return require_role(request, "watch")


def query_value(request: Request, name: str) -> str | None:
    """The one value of query parameter ``name``; ``None`` when absent or empty, 400 when repeated.

    A repeated parameter is refused rather than resolved: ``?group=7&group=`` must never read as
    "no group" and widen an action to the whole experiment.
    """
    values = request.query_params.getlist(name)
    if len(values) > 1:
        raise BadRequest(f"{name}: expected one value, got {len(values)}: {values!r}", field=name)
    return values[0] if values and values[0] != "" else None


def _as_integer(raw: str) -> int | None:
    """``raw`` as an integer when written in the digits 0-9 (``-`` before a negative), else ``None``.

    More digits than :data:`MAX_QUERY_INT` has is out of any range, whatever they are: it comes
    back just past that bound (``int()`` of thousands of digits is slow)."""
    if _QUERY_INT.fullmatch(raw) is None:
        return None
    if len(raw.lstrip("-").lstrip("0")) <= 19:
        return int(raw)
    return -MAX_QUERY_INT - 1 if raw[0] == "-" else MAX_QUERY_INT + 1


def query_int(request: Request, name: str, default: int, low: int, high: int = MAX_QUERY_INT) -> int:
    raw = query_value(request, name)
    if raw is None:
        return default
    value = _as_integer(raw)
    if value is None:
        raise BadRequest(f"{name}: expected an integer of the digits 0-9, got {shown(raw)}", field=name)
    if not low <= value <= high:
        raise BadRequest(
            f"{name}: expected an integer from {low} to {high}, got {raw if len(raw) <= 20 else shown(raw)}", field=name
        )
    return value


def paginated(request: Request, count: int, page: int, page_size: int, results: list[Any]) -> dict[str, Any]:
    """The edx-style page: ``count, num_pages, current_page, next, previous, results``."""
    num_pages = max(1, math.ceil(count / page_size))

    def link(number: int) -> str | None:
        if not 1 <= number <= num_pages:
            return None
        return str(request.url.include_query_params(page=number, page_size=page_size))

    return {
        "count": count,
        "num_pages": num_pages,
        "current_page": page,
        "next": link(page + 1),
        "previous": link(page - 1),
        "results": results,
    }


def _check_page(page: int, count: int, page_size: int) -> None:
    last = max(1, math.ceil(count / page_size))
    if page > last:
        raise NotFound(f"page: expected a page from 1 to {last}, got {page}")


def page_params(request: Request) -> tuple[int, int]:
    page = query_int(request, "page", 1, 1)
    page_size = query_int(request, "page_size", DEFAULT_PAGE_SIZE, 1, MAX_PAGE_SIZE)
    return page, page_size


async def _experiment(request: Request) -> dict[str, Any]:
    code = request.path_params["code"]
    row = await runtime(request).database.read(experiment_row, code)
    if row is None:
        raise NotFound(f"no experiment with code {code!r}")
    return row


def base_url(request: HTTPConnection) -> str:
    """The server's address as the client reached it, as http(s) even for a WebSocket."""
    base = str(request.base_url).rstrip("/")
    return "http" + base[2:] if base.startswith("ws") else base


def experiment_fields(row: dict[str, Any]) -> dict[str, Any]:
    """An experiment row as the API gives it, without links (the exports use it too)."""
    return {
        "code": row["code"],
        "game": row["game"],
        "status": row["status"],
        "config": row["config"],
        "group_size": row["group_size"],
        "num_participants": row["num_participants"],
        "blocks": row["num_blocks"],
        "block_pause": row["block_pause"],
        "created_at": iso(row["created_at"]),
        "started_at": iso(row["started_at"]),
        "finished_at": iso(row["finished_at"]),
        "last_seq": row["last_seq"],
        # the shared join link's settings (``server.online``), oTree's REST key hidden
        "online": None if (online := settings(row.get("online"))) is None else online.public(),
    }


def _experiment_summary(request: HTTPConnection, row: dict[str, Any]) -> dict[str, Any]:
    base = base_url(request)
    return {
        **experiment_fields(row),
        "monitor_url": f"{base}/monitor?experiment={row['code']}",
        "join_url": None if row.get("online") is None else f"{base}/join/{row['code']}",
    }


def experiment_body(request: HTTPConnection, row: dict[str, Any], people: list[dict[str, Any]]) -> dict[str, Any]:
    base = base_url(request)
    return {
        **_experiment_summary(request, row),
        "participants": [
            {"code": p["code"], "label": p["label"], "url": f"{base}/p/{p['code']}"} for p in people
        ],
    }


def _credential(request: Request) -> str | None:
    """Check the caller before anything is looked up: the experimenter's token, or ``?participant=``.

    With the token, ``?participant=`` is only a filter. Without one, ``?participant=`` is a
    participant's own code, its only credential: returns it, to be checked by :func:`_viewer`.
    """
    code = query_value(request, "participant")
    if request.headers.get("authorization") is not None or code is None:
        if code is None and request.headers.get("authorization") is None:
            raise Unauthorized(
                "expected 'Authorization: Bearer <an experimenter token>', or a participant's own code as ?participant="
            )
        require_watch(request)
        return None
    return code


async def _viewer(request: Request, own: str | None = None) -> tuple[dict[str, Any], str | None, bool]:
    """The experiment, the participant the answer is limited to (``None``: the experimenter's),
    and whether the one asking is that participant (by its own code) rather than an experimenter.

    A participant's own code reads only itself: ``own`` is the participant a detail asks for.
    """
    credential = _credential(request)
    row = await _experiment(request)
    if credential is None:
        return row, query_value(request, "participant"), False
    if await runtime(request).database.read(participant_id, row["id"], credential) is None:
        raise Forbidden(f"participant: {credential!r} is not a participant of experiment {row['code']!r}")
    if own is not None and own != credential:
        raise Forbidden("participant: a participant may read only its own progress")
    return row, credential, True


def _own_view(row: dict[str, Any]) -> dict[str, Any]:
    """A participant's row as the participant reads it: its completion code only once its run is
    over (with the code a participant could go back to the platform without playing)."""
    if run_over(row["status"], row["completion"]["ratio"] >= 1.0):
        return row
    return {**row, "completion_code": None}


def query_bool(request: Request, name: str) -> bool:
    raw = query_value(request, name)
    if raw is None:
        return False
    value = raw.lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise BadRequest(f"{name}: expected true or false, got {raw!r}", field=name)


async def _group_filter(request: Request, row: dict[str, Any]) -> int | None:
    group = query_int(request, "group", 0, 1) or None
    if group is not None and not await runtime(request).database.read(group_in_experiment, row["id"], group):
        raise NotFound(f"group: no group {group} in experiment {row['code']!r}")
    return group


# --------------------------------------------------------------------------- endpoints


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


async def create_experiment(request: Request) -> Response:
    require_admin(request, "creating experiments")
    try:  # at most SYNCLAB_MAX_BODY_BYTES, or a 413 (server.bodies): checked only after the token
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"expected a JSON body, got invalid JSON: {exc}") from None
    spec = plan(parse_request(body))
    db = runtime(request).database
    # beside the decisions under way, which would otherwise wait for it (seconds for the largest)
    await db.write_aside(insert_experiment, spec)
    row = await db.read(experiment_row, spec.code)
    assert row is not None
    people = await db.read(experiment_participants, row["id"])
    return JSON(experiment_body(request, row, people), status_code=201)


async def experiments(request: Request) -> Response:
    """One route for the path, so a wrong method's 405 names both (``Allow: GET, HEAD, POST``)."""
    if request.method == "POST":
        return await create_experiment(request)
    return await experiments_list(request)


async def experiments_list(request: Request) -> Response:
    """Every experiment, the newest first; ``?status=`` filters."""
    require_watch(request)
    status = query_value(request, "status")
    if status is not None and status not in STATUSES:
        raise BadRequest(f"status: expected one of {list(STATUSES)}, got {status!r}", field="status")
    page, page_size = page_params(request)
    db = runtime(request).database
    count = await db.read(count_experiments, status)
    _check_page(page, count, page_size)
    rows = await db.read(list_experiments, status, (page - 1) * page_size, page_size)
    return JSON(paginated(request, count, page, page_size, [_experiment_summary(request, r) for r in rows]))


async def participants_list(request: Request) -> Response:
    """Progress per participant; a participant's own code shows only itself."""
    row, only, by_participant = await _viewer(request)
    group = await _group_filter(request, row)
    page, page_size = page_params(request)
    db = runtime(request).database
    if only is not None and await db.read(participant_id, row["id"], only) is None:
        raise NotFound(f"participant: no participant {only!r} in experiment {row['code']!r}")
    await completion_codes(db, row["id"])
    rows = await db.read(
        participant_progress, row["id"], Filter(only, group, query_bool(request, "exclude_unfinished"))
    )
    _check_page(page, len(rows), page_size)
    shown = rows[(page - 1) * page_size : page * page_size]
    if by_participant:
        shown = [_own_view(r) for r in shown]
    return JSON(paginated(request, len(rows), page, page_size, shown))


async def completion_codes(db: Any, experiment_id: int) -> None:
    """Give the participants of an experiment made before completion codes theirs, once."""
    if await db.read(missing_completion_codes, experiment_id):
        await db.write(ensure_completion_codes, experiment_id)


async def participant_detail(request: Request) -> Response:
    """One participant's progress and its sessions with their results."""
    code = request.path_params["participant"]
    row, _, by_participant = await _viewer(request, own=code)
    db = runtime(request).database
    pid = await db.read(participant_id, row["id"], code)
    if pid is None:
        raise NotFound(f"no participant {code!r} in experiment {row['code']!r}")
    await completion_codes(db, row["id"])
    found = await db.read(
        participant_progress, row["id"], Filter(code, None, query_bool(request, "exclude_unfinished"))
    )
    view = _own_view(found[0]) if by_participant else found[0]
    return JSON({**view, "sessions": await db.read(participant_sessions, pid)})


async def experiment_stats(request: Request) -> Response:
    """``mean_completion`` and ``mean_score`` with counts; ``?exclude_unfinished=``, ``?group=``."""
    require_watch(request)
    row = await _experiment(request)
    exclude = query_bool(request, "exclude_unfinished")
    group = await _group_filter(request, row)
    rows = await runtime(request).database.read(participant_progress, row["id"], Filter(None, group, exclude))
    return JSON({"experiment": row["code"], "status": row["status"], "group": group,
                 "last_seq": row["last_seq"], **stats(rows, exclude)})


async def experiment_detail(request: Request) -> Response:
    require_watch(request)
    row = await _experiment(request)
    people = await runtime(request).database.read(experiment_participants, row["id"])
    return JSON(experiment_body(request, row, people))


async def group_history(request: Request) -> Response:
    """The group's current (or last) period as its charts draw it: its decisions after each change."""
    require_watch(request)
    row = await _experiment(request)
    upto_seq = query_int(request, "upto_seq", 0, 0) or None
    raw = str(request.path_params["group"])
    group = _as_integer(raw)
    if group is None or not 0 <= group <= MAX_QUERY_INT:
        raise NotFound(f"no group {shown(raw)} in this experiment")
    try:
        body = await runtime(request).database.read(period_history, group, upto_seq, row["id"])
    except LookupError as exc:
        raise NotFound(str(exc)) from None
    return JSON(body)


async def events(request: Request) -> Response:
    require_watch(request)
    row = await _experiment(request)
    after_seq = query_int(request, "after_seq", 0, 0)
    page, page_size = page_params(request)
    db = runtime(request).database
    count = await db.read(count_events, row["id"], after_seq)
    _check_page(page, count, page_size)
    results = await db.read(list_events, row["id"], after_seq, (page - 1) * page_size, page_size)
    return JSON(paginated(request, count, page, page_size, results))


async def _listing(request: Request, table: str, lister: Any) -> Response:
    require_watch(request)
    row = await _experiment(request)
    page, page_size = page_params(request)
    db = runtime(request).database
    count = await db.read(count_rows, table, row["id"])
    _check_page(page, count, page_size)
    results = await db.read(lister, row["id"], (page - 1) * page_size, page_size)
    return JSON(paginated(request, count, page, page_size, results))


async def sessions(request: Request) -> Response:
    """Sessions: one per participant and block, planned at creation, finished with the period."""
    return await _listing(request, "sessions", list_sessions)


async def results(request: Request) -> Response:
    """Results in the order they were scored."""
    return await _listing(request, "results", list_results)


async def deliveries(request: Request) -> Response:
    """The scores on their way back to oTree (``server.deliveries``), in participant order; never the REST key."""
    require_watch(request)
    row = await _experiment(request)
    page, page_size = page_params(request)
    db = runtime(request).database
    count = await db.read(count_deliveries, row["id"])
    _check_page(page, count, page_size)
    results = await db.read(list_deliveries, row["id"], (page - 1) * page_size, page_size)
    return JSON(paginated(request, count, page, page_size, results))


async def experiment_action(request: Request) -> Response:
    """``start``, ``pause``, ``resume`` or ``end`` the experiment, or with ``?group=`` one of its groups.

    The ``control`` events store who did it: the token's name as ``by``.
    """
    account = require_admin(request, "controlling experiments")
    row = await _experiment(request)
    action = request.path_params["action"]
    if action not in ACTIONS:
        raise NotFound(f"no action {action!r}; expected one of {list(ACTIONS)}")
    group = query_int(request, "group", 0, 1) or None
    try:
        done = await runtime(request).groups.control(row["code"], action, group, by=account.name)
    except LookupError as exc:
        raise NotFound(str(exc)) from None
    after = await runtime(request).database.read(experiment_row, row["code"])
    assert after is not None
    return JSON({"action": action, "groups": done, "status": after["status"]})


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
