"""Secrets kept out of the server's own log: query values that are credentials are masked.

synclab sends no secret in a URL (the monitor's token goes in its socket's first frame, API
calls carry a bearer header, the printed monitor link keeps the token in the fragment, which a
browser never sends). An old bookmark or script may still put ``?token=`` in a URL; uvicorn
writes every request line to its access log, so this filter masks such values
(:data:`SECRET_PARAMS`) in uvicorn's access and error loggers before they are written.
Participant codes stay in their paths: they are the participant's own key, as in oTree.
"""

from __future__ import annotations

import logging
import re
from typing import Any

#: query parameters whose values are credentials
SECRET_PARAMS = ("token", "ticket", "otree_rest_key", "access_token")
#: the loggers uvicorn writes request lines to
LOGGERS = ("uvicorn.access", "uvicorn.error")
MASK = "[redacted]"


def _spelled(name: str) -> str:
    """A pattern of ``name`` however a URL may spell it: each character as it is or percent-encoded
    (``%74oken`` is ``token`` to the server that reads the query, so it must be to the mask too)."""
    return "".join(f"(?:{re.escape(c)}|%{ord(c.lower()):02x}|%{ord(c.upper()):02x})" for c in name)


_NAMES = "|".join(_spelled(name) for name in SECRET_PARAMS)
#: ``?token=…`` in a request line
_PATTERN = re.compile(r"([?&](?:" + _NAMES + r")=)[^&#\s\"']*", re.IGNORECASE)
#: ``"token": "…"`` in a frame or a body a debug log writes out (as text, or inside its repr)
_JSON = re.compile(r'(\\*"(?:' + "|".join(SECRET_PARAMS) + r')\\*"\s*:\s*\\*")[^"\\]*', re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with the value of every secret query parameter, and of every secret JSON member
    (the monitor's first frame, which uvicorn logs at ``debug``), replaced by :data:`MASK`."""
    return _JSON.sub(lambda m: m.group(1) + MASK, _PATTERN.sub(lambda m: m.group(1) + MASK, text))


class Redact(logging.Filter):
    """Masks secret query values in a record's message and arguments (keeping their number and kinds)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_masked(a) for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: _masked(v) for k, v in record.args.items()}
        return True


def _masked(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, int | float | bytes) or value is None:
        return value
    # an object the message formats (a WebSocket frame, logged at debug): its text, if masked
    text = str(value)
    masked = redact(text)
    return masked if masked != text else value


def install() -> None:
    """Add the filter to uvicorn's loggers of this process, once."""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, Redact) for f in logger.filters):
            logger.addFilter(Redact())
