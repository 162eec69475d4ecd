"""This worker's inbox: the requests of other workers it answers, and the cluster's notices.

Workers talk through the hub: each has an inbox topic (``worker:{name}``) for requests and
answers, which travel in order with the group frames of the same worker. A member's frames go
to the group's worker as requests (:meth:`Answers.answer` runs them here, in order, and sends
the answer back); a request for a group whose claim is under way here waits for the claim. The
cluster's topic brings the notices of groups ``taken`` and ``released``; a topic whose frames
may be lost has its subscribers here start over (:meth:`Answers._resync`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import orjson

from ..hub import group_of
from ..hub.redis import RedisHub
from .requests import Requests

if TYPE_CHECKING:
    from ..routing import LiveGroups

log = logging.getLogger("synclab.cluster")


class Answers:
    """The requests this worker answers for others (a part of :class:`server.cluster.node.Node`)."""

    # what it reads and sets of the node's state (see server.cluster.node.Node.__init__)
    worker: str
    hub: RedisHub
    router: LiveGroups | None
    requests: Requests
    _claims: dict[int, asyncio.Future[str]]
    _waiting: dict[int, list[dict[str, Any]]]
    _draining: bool

    if TYPE_CHECKING:  # (server.cluster.node.Node)
        async def owner(self, group_id: int, *, here: bool = False) -> str: ...

        def unknown(self, group_id: int) -> None: ...

        def taken(self, group_id: int, worker: str) -> None: ...

    def answer(self, message: dict[str, Any]) -> None:
        """A request from another worker: run it here, send the answer back (when it is ready)."""
        assert self.router is not None
        op, body = message["op"], message["body"]
        if op == "close":
            self.router.close_member(self.worker, body["k"], int(body["code"]), str(body["reason"]))
            return
        if op != "take":
            group_id = int(body["g"])
            waiting = self._waiting.get(group_id)
            claiming = self._claims.get(group_id)
            if waiting is None and claiming is not None:
                # the lease is ours, the group not loaded yet: its members' frames wait for it
                waiting = self._waiting[group_id] = []
                claiming.add_done_callback(lambda _: self._claimed(group_id))
            if waiting is not None:
                waiting.append(message)
                return
        self._answer(message)

    def _claimed(self, group_id: int) -> None:
        """The claim of a group ended: the requests that waited for it run, in order."""
        for message in self._waiting.pop(group_id, []):
            self._answer(message)

    def _answer(self, message: dict[str, Any]) -> None:
        assert self.router is not None
        op, body, rid, asker = message["op"], message["body"], message.get("id"), message["from"]
        try:
            result = (
                asyncio.ensure_future(self.owner(int(body["g"]), here=True)) if op == "take" else self.router.handle(op, body)
            )
        except BaseException as exc:
            self.requests.reply(asker, rid, None, exc)
            return
        if isinstance(result, asyncio.Future):
            result.add_done_callback(lambda f: self.requests.reply(asker, rid, None if f.exception() else f.result(), f.exception()))
        else:
            self.requests.reply(asker, rid, result, None)

    def _released(self, group_id: int) -> None:
        """Another worker handed a group over: take it at once if members of it are here."""
        assert self.router is not None
        self.unknown(group_id)
        view = self.router.views.get(group_id)
        if view is not None and view.current and not self._draining:
            self.router.spawn(self.owner(group_id))

    def _resync(self, topic: str) -> None:
        """Frames of ``topic`` may be lost: group members here get the whole state; monitors start over."""
        assert self.router is not None
        group_id = group_of(topic)
        if group_id is not None:
            view = self.router.views.get(group_id)
            if view is not None:
                view.resync()
        elif topic.startswith(("monitor:", "presence:")):
            for subscriber in self.hub.subscribers(topic):
                lost = getattr(subscriber, "lost", None)
                if lost is not None:
                    lost()


class Inbox:
    """The hub subscriber of this worker's inbox and of the cluster's topic."""

    def __init__(self, node: Answers) -> None:
        self._node = node

    def deliver(self, to: frozenset[str] | None, data: str) -> None:
        message = orjson.loads(data)
        if message["op"] == "reply":
            self._node.requests.answered(message)
        elif message["op"] == "released":
            self._node._released(int(message["g"]))
        elif message["op"] == "taken":
            self._node.taken(int(message["g"]), str(message["w"]))
        else:
            try:
                self._node.answer(message)
            except Exception:
                log.exception("cluster: a request failed: %r", message.get("op"))
