"""Requests between workers: one to another worker's inbox topic, and the answer back to the asker's.

They travel through the hub, in order with the group frames of the same worker (one publisher
per worker, one listener): a member's frame reaches its group's worker after the member's join,
and its answer reaches the member's worker after the frames it caused. An answer carries a value
or the exception raised there (:func:`error_of`), raised again here (:func:`exception_of`): the
game's failure there is :class:`~server.exceptions.GameFailed`, logged there (``server.calls``). A
request not answered in :data:`REQUEST_TIMEOUT` seconds fails as ``unavailable``; one about a
group that another worker has taken meanwhile fails at once as ``moved`` (:meth:`Requests.moved`).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any

import orjson

from groups import InvalidState, RefusedAction

from ..exceptions import GameFailed, NotPersisted, Unavailable, Unstorable
from ..hub.redis import RedisHub

log = logging.getLogger("synclab.cluster")
#: seconds a request to another worker may take before it fails as ``unavailable``
REQUEST_TIMEOUT = 5.0


def inbox(worker: str) -> str:
    """The hub topic of a worker's requests and answers."""
    return f"worker:{worker}"


class Requests:
    """This worker's requests to the others, and its answers to theirs."""

    def __init__(self, hub: RedisHub, worker: str) -> None:
        self.hub = hub
        self.worker = worker
        #: requests awaiting an answer: their future, the worker asked, the group concerned
        self._pending: dict[str, tuple[asyncio.Future[Any], str, int | None]] = {}
        self._ids = itertools.count(1)

    async def request(self, worker: str, op: str, body: dict[str, Any]) -> Any:
        """``op`` at ``worker``: its answer, or the exception it raised; :class:`Unavailable` on silence."""
        if not self.hub.up:
            raise Unavailable(f"Redis is unreachable: {self.hub.reason}")
        rid = f"{next(self._ids)}"
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        group_id = body.get("g")
        self._pending[rid] = (future, worker, None if group_id is None else int(group_id))
        self.hub.publish(inbox(worker), dumps({"op": op, "id": rid, "from": self.worker, "body": body}))
        try:
            return await asyncio.wait_for(future, REQUEST_TIMEOUT)
        except TimeoutError:
            raise Unavailable(f"worker {worker} did not answer in {REQUEST_TIMEOUT:g} s") from None
        finally:
            self._pending.pop(rid, None)

    def send(self, worker: str, op: str, body: dict[str, Any]) -> None:
        """``op`` at ``worker``, no answer wanted."""
        self.hub.publish(inbox(worker), dumps({"op": op, "from": self.worker, "body": body}))

    def moved(self, group_id: int, worker: str) -> None:
        """``worker`` serves the group now: requests about it still waiting on another fail as
        ``moved`` (their caller asks again), instead of waiting for a worker that may be dead."""
        for future, asked, group in list(self._pending.values()):
            if group == group_id and asked != worker and not future.done():
                moved = Unavailable(f"group {group_id} moved to worker {worker}")
                moved.code = "moved"
                future.set_exception(moved)

    def answered(self, message: dict[str, Any]) -> None:
        pending = self._pending.get(message["id"])
        if pending is None or pending[0].done():
            return
        future = pending[0]
        if message["ok"]:
            future.set_result(message["value"])
        else:
            future.set_exception(exception_of(message["error"]))

    def reply(self, worker: str, rid: str | None, value: Any, exc: BaseException | None) -> None:
        if rid is None:
            return
        reply: dict[str, Any] = {"op": "reply", "id": rid, "ok": exc is None}
        if exc is None:
            reply["value"] = value
        else:
            reply["error"] = error_of(exc)
        self.hub.publish(inbox(worker), dumps(reply))

    def close(self) -> None:
        """Every request still waiting fails: this worker is stopping."""
        for future, _worker, _group in self._pending.values():
            if not future.done():
                future.set_exception(Unavailable("this worker is stopping"))
                future.exception()


def dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def error_of(exc: BaseException) -> dict[str, Any]:
    """An exception as an answer can carry it (see :func:`_exception`)."""
    if isinstance(exc, RefusedAction):
        return {"kind": "refused", "code": exc.code, "message": exc.message}
    if isinstance(exc, Unstorable):
        return {"kind": "persist", "code": exc.code, "message": str(exc), "reason": exc.reason}
    if isinstance(exc, NotPersisted):
        return {"kind": "persist", "code": exc.code, "message": str(exc)}
    if isinstance(exc, InvalidState):
        return {"kind": "state", "message": str(exc)}
    if isinstance(exc, LookupError):
        return {"kind": "lookup", "message": str(exc)}
    log.error("cluster: a request failed", exc_info=exc)
    return {"kind": "internal", "message": f"{type(exc).__name__}: {exc}"}


def exception_of(error: dict[str, Any]) -> BaseException:
    """The exception another worker's answer carries, raised here as it was raised there."""
    kind, message = error["kind"], error["message"]
    if kind == "refused":
        refused = GameFailed(message) if error["code"] == GameFailed.code else RefusedAction(message)
        refused.code = error["code"]
        return refused
    if kind == "persist":
        if error["code"] == "not_persisted":
            return NotPersisted(message)
        if error["code"] == Unstorable.code:
            return Unstorable(message, error.get("reason", ""))
        unavailable = Unavailable(message)
        unavailable.code = error["code"]
        return unavailable
    if kind == "state":
        return InvalidState(message)
    if kind == "lookup":
        return LookupError(message)
    return RuntimeError(message)
