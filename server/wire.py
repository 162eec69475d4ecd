"""Frames on the wire: ``{"channel", "payload"}`` JSON text, plus ``seq``/``ts`` and ``id``."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import orjson

from groups import shown

from .exceptions import FrameError

MAX_CLIENT_ID = 64
#: the deepest a frame's payload may nest: JSON deeper than the database's encoder writes (254
#: levels) could be taken by a game that accepts any value and then never be stored
MAX_DEPTH = 64


def ms(epoch: float) -> int:
    """Seconds since the epoch as whole milliseconds, the unit of every time in a frame."""
    return math.floor(epoch * 1000 + 0.5)


def encode(channel: str, payload: Any, *, seq: int | None = None, ts: float | None = None) -> str:
    """One server frame, encoded once and shared by every recipient."""
    frame: dict[str, Any] = {"channel": channel, "payload": payload}
    if seq is not None:
        frame["seq"] = seq
    if ts is not None:
        frame["ts"] = ms(ts)
    return orjson.dumps(frame).decode()


def event_frame(channel: str, payload: Any, seq: int, ts: float) -> str:
    """``encode(channel, payload, seq=seq, ts=ts)``, the same text: a stored event's frame, made at
    every decision's commit, without the keywords and the checks."""
    return orjson.dumps({"channel": channel, "payload": payload, "seq": seq, "ts": math.floor(ts * 1000 + 0.5)}).decode()


def redwood_ping(timestamp: Any) -> str:
    """otree-redwood's ping answer: the client's ``timestamp`` beside the channel."""
    return orjson.dumps({"channel": "ping", "timestamp": timestamp}).decode()


def error(code: str, message: str, frame_id: str | None = None) -> str:
    payload: dict[str, Any] = {"code": code, "message": message}
    if frame_id is not None:
        payload["id"] = frame_id
    return encode("error", payload)


class ClientFrame(NamedTuple):
    """A client's frame as :func:`parse` read it (a named tuple: one is made for every frame)."""

    channel: str
    payload: Any
    id: str | None
    #: otree-redwood's ping puts ``timestamp`` beside ``channel``, with no payload
    timestamp: Any = None


def parse(text: str, max_bytes: int) -> ClientFrame:
    """A client's text frame, or :class:`FrameError` saying what was expected."""
    size = len(text)
    if size > max_bytes or (size * 4 > max_bytes and len(text.encode()) > max_bytes):
        raise FrameError("too_large", f"expected a frame of at most {max_bytes} bytes, got {len(text.encode())}")
    try:
        frame = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise FrameError("bad_json", f"expected a JSON text frame, got invalid JSON: {exc}") from None
    if not isinstance(frame, dict):
        raise FrameError("bad_frame", f'expected an object {{"channel", "payload"}}, got {type(frame).__name__}')
    channel = frame.get("channel")
    if not isinstance(channel, str) or not channel:
        raise FrameError("bad_frame", f"expected a non-empty string 'channel', got {shown(channel)}")
    if "payload" not in frame and channel != "ping":
        raise FrameError("bad_frame", "expected a 'payload' member, got none")
    frame_id = frame.get("id")
    if frame_id is not None and (
        not isinstance(frame_id, str) or not 0 < len(frame_id) <= MAX_CLIENT_ID or "\x00" in frame_id
    ):  # (a NUL: PostgreSQL's text columns refuse one, which cost the writer a failed batch and its parts)
        raise FrameError(
            "bad_id", f"expected 'id' to be a string of 1 to {MAX_CLIENT_ID} characters without NUL, got {shown(frame_id)}"
        )
    payload = frame.get("payload")
    # a frame can only nest that deep with as many brackets (so characters), which str.count finds at C speed
    if size > MAX_DEPTH and text.count("[") + text.count("{") > MAX_DEPTH and nested_deeper(payload, MAX_DEPTH):
        raise FrameError("bad_frame", f"expected a payload nested at most {MAX_DEPTH} levels deep", frame_id)
    return ClientFrame(channel, payload, frame_id, frame.get("timestamp"))


def nested_deeper(value: Any, limit: int) -> bool:
    """Whether JSON ``value`` nests lists and objects more than ``limit`` levels deep (the value
    itself is level 1), walked without recursion."""
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            if level > limit:
                return True
            stack.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return False
