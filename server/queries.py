"""What the REST endpoints read of a request, and how they answer it.

The caller's role (:func:`require_role`: 401 without a token, 403 for a wrong, revoked or too weak
one; the token's account is resolved before the endpoint runs, see
:class:`server.accounts.Authenticate`), the query's values as one string, an integer of the digits
0-9 or a boolean (400 naming the parameter otherwise), the page asked for and the edx-style page
given, the experiment the path names (404 for an unknown one), and :class:`JSON`, the answer.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response

from groups import shown
from groups.messages import channel_problem

from .accounts import SCOPE_KEY, Account, Refused
from .exceptions import BadRequest, Forbidden, NotFound, Unauthorized
from .progress import group_in_experiment
from .storage import experiment_row

if TYPE_CHECKING:  # the app's runtime imports what serves (Redis's client…): `synclab export` needs none of it
    from .runtime import Runtime

#: the largest integer a query value may be: a 64-bit column holds it
MAX_QUERY_INT = 2**63 - 1
#: a query integer as written: ASCII digits, a sign only for a negative (``int()`` would also take
#: ``1_0``, ``+1``, `` 1`` and the digits of every script)
_QUERY_INT = re.compile(r"-?[0-9]+")
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100


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
        sent = "none" if not request.headers.get("authorization", "").strip() else (
            # what was sent is not shown: it may be the token itself, without the word Bearer
            "an Authorization header that is not 'Bearer <token>' (the word Bearer, a space, the token)"
        )
        raise Unauthorized(f"expected 'Authorization: Bearer <an experimenter token>', got {sent}")
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


def as_integer(raw: str) -> int | None:
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
    value = as_integer(raw)
    if value is None:
        raise BadRequest(f"{name}: expected an integer of the digits 0-9, got {shown(raw)}", field=name)
    if not low <= value <= high:
        raise BadRequest(
            f"{name}: expected an integer from {low} to {high}, got {raw if len(raw) <= 20 else shown(raw)}", field=name
        )
    return value


def query_channel(request: Request) -> str | None:
    """``?channel=``: the one channel asked for, or ``None`` for every channel; 400 for a name no
    channel can have (:func:`groups.channel_problem`)."""
    raw = query_value(request, "channel")
    if raw is not None and (problem := channel_problem(raw)) is not None:
        raise BadRequest(f"channel: {problem}", field="channel")
    return raw


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


def check_page(page: int, count: int, page_size: int) -> None:
    """404 for a page past the last of ``count`` rows."""
    last = max(1, math.ceil(count / page_size))
    if page > last:
        raise NotFound(f"page: expected a page from 1 to {last}, got {page}")


def page_params(request: Request) -> tuple[int, int]:
    page = query_int(request, "page", 1, 1)
    page_size = query_int(request, "page_size", DEFAULT_PAGE_SIZE, 1, MAX_PAGE_SIZE)
    return page, page_size


async def path_experiment(request: Request) -> dict[str, Any]:
    """The row of the experiment the path's ``{code}`` names; 404 for an unknown one."""
    code = request.path_params["code"]
    row = await runtime(request).database.read(experiment_row, code)
    if row is None:
        raise NotFound(f"no experiment with code {code!r}")
    return row


async def group_filter(request: Request, row: dict[str, Any]) -> int | None:
    """``?group=``: a group of the experiment ``row``, or ``None`` without it; 404 for a group not in it."""
    group = query_int(request, "group", 0, 1) or None
    if group is not None and not await runtime(request).database.read(group_in_experiment, row["id"], group):
        raise NotFound(f"group: no group {group} in experiment {row['code']!r}")
    return group


def base_url(request: HTTPConnection) -> str:
    """The server's address as the client reached it, as http(s) even for a WebSocket."""
    base = str(request.base_url).rstrip("/")
    return "http" + base[2:] if base.startswith("ws") else base
