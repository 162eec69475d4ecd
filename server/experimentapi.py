"""The REST API's experiment endpoints: create, list, read and control experiments, and read what
they stored (events, sessions, results, deliveries, a group's period as its charts draw it).

Reading needs a ``watch`` token; creating and controlling need ``admin``. The participants'
endpoints, which a participant's own code may read too, are in :mod:`server.participantapi`.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response

from groups import shown

from .control import ACTIONS
from .exceptions import BadRequest, NotFound
from .experiments import parse_request, plan
from .online import settings
from .progress import Filter, progress_stats
from .queries import (
    JSON,
    MAX_QUERY_INT,
    as_integer,
    base_url,
    check_page,
    group_filter,
    page_params,
    paginated,
    path_experiment,
    query_bool,
    query_channel,
    query_int,
    query_value,
    require_admin,
    require_watch,
    runtime,
)
from .storage import (
    TIMING,
    count_deliveries,
    count_events,
    count_experiments,
    count_rows,
    experiment_participants,
    experiment_row,
    experiment_timing,
    insert_experiment,
    iso,
    list_deliveries,
    list_events,
    list_experiments,
    list_results,
    list_sessions,
    period_history,
)

#: the statuses an experiment goes through (``?status=`` filters by one)
STATUSES = ("pending", "running", "done", "cancelled", "failed")


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


def experiment_body(
    request: HTTPConnection, row: dict[str, Any], people: list[dict[str, Any]], timing: dict[str, Any]
) -> dict[str, Any]:
    """The experiment's detail: its summary, the timing its create request set for every block
    (``period_length``, ``num_subperiods``, ``rate_limit``, ``bonus_points``, ``matching``, as
    stored: :func:`server.storage.experiment_timing`) and its participants' links."""
    base = base_url(request)
    return {
        **_experiment_summary(request, row),
        **timing,
        "participants": [
            {"code": p["code"], "label": p["label"], "url": f"{base}/p/{p['code']}"} for p in people
        ],
    }


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
    timing = await db.read(experiment_timing, row["id"])
    return JSON(experiment_body(request, row, people, timing), status_code=201)


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
    check_page(page, count, page_size)
    rows = await db.read(list_experiments, status, (page - 1) * page_size, page_size)
    # each with the timing the detail gives (as its first block stored it: server.storage.list_experiments)
    listed = [{**_experiment_summary(request, r), **{name: r[name] for name in TIMING}} for r in rows]
    return JSON(paginated(request, count, page, page_size, listed))


async def experiment_detail(request: Request) -> Response:
    require_watch(request)
    row = await path_experiment(request)
    db = runtime(request).database
    people = await db.read(experiment_participants, row["id"])
    return JSON(experiment_body(request, row, people, await db.read(experiment_timing, row["id"])))


async def experiment_stats(request: Request) -> Response:
    """``mean_completion`` and ``mean_score`` with counts; ``?exclude_unfinished=``, ``?group=``."""
    require_watch(request)
    row = await path_experiment(request)
    exclude = query_bool(request, "exclude_unfinished")
    group = await group_filter(request, row)
    counts = await runtime(request).database.read(progress_stats, row["id"], Filter(None, group, exclude))
    return JSON({"experiment": row["code"], "status": row["status"], "group": group,
                 "last_seq": row["last_seq"], **counts})


async def experiment_action(request: Request) -> Response:
    """``start``, ``pause``, ``resume`` or ``end`` the experiment, or with ``?group=`` one of its groups.

    The ``control`` events store who did it: the token's name as ``by``.
    """
    account = require_admin(request, "controlling experiments")
    row = await path_experiment(request)
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


async def group_history(request: Request) -> Response:
    """The group's current (or last) period as its charts draw it: its decisions after each change."""
    require_watch(request)
    row = await path_experiment(request)
    upto_seq = query_int(request, "upto_seq", 0, 0) or None
    raw = str(request.path_params["group"])
    group = as_integer(raw)
    if group is None or not 0 <= group <= MAX_QUERY_INT:
        raise NotFound(f"no group {shown(raw)} in this experiment")
    try:
        body = await runtime(request).database.read(period_history, group, upto_seq, row["id"])
    except LookupError as exc:
        raise NotFound(str(exc)) from None
    return JSON(body)


async def events(request: Request) -> Response:
    require_watch(request)
    row = await path_experiment(request)
    after_seq = query_int(request, "after_seq", 0, 0)
    channel = query_channel(request)
    page, page_size = page_params(request)
    db = runtime(request).database
    count = await db.read(count_events, row["id"], after_seq, channel)
    check_page(page, count, page_size)
    results = await db.read(list_events, row["id"], after_seq, (page - 1) * page_size, page_size, channel)
    return JSON(paginated(request, count, page, page_size, results))


async def _listing(request: Request, table: str, lister: Any) -> Response:
    require_watch(request)
    row = await path_experiment(request)
    page, page_size = page_params(request)
    db = runtime(request).database
    count = await db.read(count_rows, table, row["id"])
    check_page(page, count, page_size)
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
    row = await path_experiment(request)
    page, page_size = page_params(request)
    db = runtime(request).database
    count = await db.read(count_deliveries, row["id"])
    check_page(page, count, page_size)
    results = await db.read(list_deliveries, row["id"], (page - 1) * page_size, page_size)
    return JSON(paginated(request, count, page, page_size, results))
