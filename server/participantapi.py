"""The REST API's participant endpoints: progress per participant, and one participant's progress
with its sessions and their results.

An experimenter reads them with a ``watch`` token (``?participant=`` is then a filter); without a
token, ``?participant=`` is a participant's own code, its only credential, and reads only that
participant, its completion code shown only once its run is over.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from .exceptions import Forbidden, NotFound, Unauthorized
from .progress import Filter, participant_id, participant_progress, participant_sessions
from .queries import (
    JSON,
    check_page,
    group_filter,
    page_params,
    paginated,
    path_experiment,
    query_bool,
    query_value,
    require_watch,
    runtime,
)
from .storage import ensure_completion_codes, missing_completion_codes, run_over


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
    row = await path_experiment(request)
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


async def participants_list(request: Request) -> Response:
    """Progress per participant; a participant's own code shows only itself."""
    row, only, by_participant = await _viewer(request)
    group = await group_filter(request, row)
    page, page_size = page_params(request)
    db = runtime(request).database
    if only is not None and await db.read(participant_id, row["id"], only) is None:
        raise NotFound(f"participant: no participant {only!r} in experiment {row['code']!r}")
    await completion_codes(db, row["id"])
    rows = await db.read(
        participant_progress, row["id"], Filter(only, group, query_bool(request, "exclude_unfinished"))
    )
    check_page(page, len(rows), page_size)
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
