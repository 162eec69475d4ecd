"""How people arrive and leave an online experiment: the settings of ``POST /api/experiments``'s ``online``.

An experiment created with ``online`` has a shared join link (``/join/{experiment}``): each
arrival takes the next free seat in participant order (so block 1's groups form in order of
arrival), keyed by the label it brings in the URL (``?label=``, or ``label_param``, such as a
recruiting platform's ``PROLIFIC_PID``). A participant still waiting for a group after
``lobby_timeout`` seconds is grouped with bots (``fill: "bots"``) or released (``"release"``); a
member of a running period disconnected for more than ``dropout_after`` seconds is played by a
server-side bot until they come back. At the end each participant is sent to ``completion_url``
(a template of ``{label}``, ``{code}``, ``{completion_code}``, ``{status}`` and ``{score}``), and,
with ``otree_url``, their score is posted to oTree's REST API with ``otree_rest_key``, which is kept
server-side and never shown. Without ``online`` an experiment has pre-made links only, as before.
"""

from __future__ import annotations

import string
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

from groups import shown

from .exceptions import BadRequest

FILLS = ("bots", "release")
#: what a ``completion_url`` template may name
COMPLETION_FIELDS = ("label", "code", "completion_code", "status", "score")
MAX_WAIT = 86_400.0
_FIELDS = {"label_param", "lobby_timeout", "fill", "dropout_after", "completion_url", "otree_url", "otree_rest_key"}


@dataclass(frozen=True, slots=True)
class OnlineSettings:
    #: the query parameter the join link takes the label from
    label_param: str = "label"
    #: seconds an arrival waits for a group before ``fill`` applies
    lobby_timeout: float = 300.0
    fill: str = "bots"
    #: seconds a member of a running period may be disconnected before a bot plays for them
    dropout_after: float = 30.0
    completion_url: str | None = None
    otree_url: str | None = None
    #: oTree's ``OTREE_REST_KEY``; stored, used by the server, never returned by the API
    otree_rest_key: str | None = None

    def stored(self) -> dict[str, Any]:
        """What ``experiments.online`` holds."""
        return asdict(self)

    def public(self) -> dict[str, Any]:
        """What the API shows: everything but the REST key (only whether one is set)."""
        shown = asdict(self)
        shown["otree_rest_key"] = None if self.otree_rest_key is None else "set"
        return shown


def settings(stored: dict[str, Any] | None) -> OnlineSettings | None:
    """The settings of an experiment's ``online`` column (``None``: not an online experiment)."""
    if stored is None:
        return None
    return OnlineSettings(**{k: v for k, v in stored.items() if k in _FIELDS})


def _seconds(body: dict[str, Any], name: str, default: float) -> float:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= MAX_WAIT:
        raise BadRequest(f"online.{name}: expected seconds above 0 and at most {MAX_WAIT:g}, got {shown(value)}", field=f"online.{name}")
    return float(value)


def _url(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 500 or urlsplit(value).scheme not in ("http", "https") or not urlsplit(value).netloc:
        raise BadRequest(f"online.{name}: expected an http(s) URL of at most 500 characters, got {shown(value)}", field=f"online.{name}")
    return value


def parse_online(value: Any) -> OnlineSettings | None:
    """Check ``POST /api/experiments``'s ``online`` object; a :class:`BadRequest` names the first bad field."""
    if value is None:
        return None
    if value is True:
        return OnlineSettings()
    if not isinstance(value, dict):
        raise BadRequest(f"online: expected an object (or true for the defaults), got {shown(value)}", field="online")
    unknown = sorted(set(value) - _FIELDS)
    if unknown:
        raise BadRequest(f"online.{unknown[0]}: unknown field; expected some of {sorted(_FIELDS)}", field=f"online.{unknown[0]}")
    label_param = value.get("label_param", "label")
    allowed = set(string.ascii_letters + string.digits + "_-.")
    if not isinstance(label_param, str) or not 0 < len(label_param) <= 64 or set(label_param) - allowed:
        raise BadRequest(
            f"online.label_param: expected a query parameter name (letters, digits, _ - .), got {shown(label_param)}",
            field="online.label_param",
        )
    fill = value.get("fill", "bots")
    if fill not in FILLS:
        raise BadRequest(f"online.fill: expected one of {list(FILLS)}, got {shown(fill)}", field="online.fill")
    completion_url = _url(value, "completion_url")
    if completion_url is not None:
        try:
            parsed = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(completion_url) if name is not None]
        except ValueError as exc:
            raise BadRequest(f"online.completion_url: not a template: {exc}", field="online.completion_url") from None
        fields = {name for name, _, _ in parsed}
        if any(spec or conv for _, spec, conv in parsed):  # the values are URL-encoded text: no format spec
            raise BadRequest(
                "online.completion_url: expected plain fields such as {score}, got a format spec or conversion",
                field="online.completion_url",
            )
        unknown_fields = sorted(fields - set(COMPLETION_FIELDS))
        if unknown_fields:
            raise BadRequest(
                f"online.completion_url: unknown field {{{unknown_fields[0]}}}; expected some of {list(COMPLETION_FIELDS)}",
                field="online.completion_url",
            )
    otree_url = _url(value, "otree_url")
    key = value.get("otree_rest_key")
    if key is not None and (not isinstance(key, str) or not 0 < len(key) <= 200):
        raise BadRequest("online.otree_rest_key: expected a string of at most 200 characters", field="online.otree_rest_key")
    if (otree_url is None) != (key is None):
        raise BadRequest("online.otree_url and online.otree_rest_key: expected both or neither", field="online.otree_url")
    return OnlineSettings(
        label_param=label_param,
        lobby_timeout=_seconds(value, "lobby_timeout", 300.0),
        fill=fill,
        dropout_after=_seconds(value, "dropout_after", 30.0),
        completion_url=completion_url,
        otree_url=otree_url.rstrip("/") if otree_url else None,
        otree_rest_key=key,
    )
