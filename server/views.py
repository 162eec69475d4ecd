"""Group views: a group as this process's connections see it.

A :class:`GroupView` holds the members of one group whose sockets are in this process, gets the
group's frames from the hub (one subscription for all of them) and hands each member its copy;
it sends their frames, their arrivals and their departures to the group's authority (a
:class:`server.live.LiveGroup`): in this process a call, in a cluster perhaps a request to
another worker (``server.routing``). When the group's period ends it has the router move them on
to their next block.

A member that joins gets ``hello`` and the replayed state from the authority's committed state,
then every frame after it: here both happen in one turn of the loop; from another worker the
member holds the frames that arrive before the answer and drops those the answer already holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

import orjson

from .exceptions import WS_1013_TRY_AGAIN_LATER, WS_4000_REPLACED, NotPersisted
from .hub import Hub, group_topic
from .live import LiveGroup
from .storage import ConnectionChange
from .wire import encode

log = logging.getLogger("synclab.views")
#: how a stored ``period_end`` frame starts (see :func:`server.wire.encode`)
PERIOD_END = '{"channel":"state","payload":"period_end"'


class Member(Protocol):
    """A participant's connection as a group view sees it (see :class:`server.connection.ClientConnection`)."""

    id: str
    group: GroupView
    route: str
    close_code: int | None

    def send(self, data: str) -> None: ...

    def close(self, code: int, reason: str = "") -> None: ...

    def deliver(self, to: frozenset[str] | None, data: str) -> None: ...

    def hold(self) -> None:
        """Keep the group's frames until :meth:`release` (the answer to a join is on its way)."""

    def release(self, after: int) -> None:
        """Send the frames kept since :meth:`hold` whose ``seq`` is above ``after``; stop keeping."""


class Router(Protocol):
    """What a view needs of the process's router (:class:`server.routing.LiveGroups`)."""

    worker: str
    hub: Hub
    connections: dict[str, Member]

    def local(self, group_id: int) -> LiveGroup | None: ...

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None: ...

    async def ready(self, topic: str) -> None: ...

    def mark(self, topic: str, seq: int) -> None: ...

    async def call(self, group_id: int, op: str, body: dict[str, Any]) -> Any: ...

    def period_ended(self, view: GroupView, ended_at: float) -> None: ...


class GroupView:
    """The members of group ``group_id`` connected to this process."""

    def __init__(self, group_id: int, router: Router) -> None:
        self.id = group_id
        self.topic = group_topic(group_id)
        #: per participant code: its connection here (the newest replaces the older)
        self.current: dict[str, Member] = {}
        #: what moving the members on needs, from the last ``hello``: experiment, block, num_blocks, block_pause
        self.info: dict[str, Any] = {}
        self._router = router

    # ------------------------------------------------------------------ the hub's frames

    def deliver(self, to: frozenset[str] | None, data: str) -> None:
        if data.startswith(PERIOD_END):
            self._router.period_ended(self, orjson.loads(data)["ts"] / 1000)
        for member in list(self.current.values()):
            member.deliver(to, data)

    def resync(self) -> None:
        """Frames may have been lost (a gap, a reconnect to Redis): every member here joins again."""
        for participant, member in list(self.current.items()):
            self._router.spawn(self._rejoin(participant, member))

    def register(self) -> None:
        """A worker (another, or this one) has just taken the group: after a failover or a
        hand-over, or the first time. Tell it who is connected here: it loaded the group from the
        database, which keeps no sockets, and would count these members as away (a bot would
        play for them after ``dropout_after``, a period paused for a disconnect would not
        resume). Nothing is stored: the connections are the ones stored when they opened."""
        for participant, member in list(self.current.items()):
            self._router.spawn(self._register(participant, member))

    async def _register(self, participant: str, member: Member) -> None:
        if self.current.get(participant) is not member or member.close_code is not None:
            return  # gone meanwhile: its departure was told
        body = {"p": participant, "w": self._router.worker, "k": member.id, "c": None}
        try:
            await self._router.call(self.id, "join", body)
        except NotPersisted as exc:  # the next authority is told again; meanwhile the member may be counted away
            log.warning("group %s: %s could not be registered with its new authority: %s", self.id, participant, exc)
            return
        if self.current.get(participant) is not member:  # it left meanwhile: its leave may have gone first
            with contextlib.suppress(NotPersisted):
                await self._router.call(self.id, "leave", body)

    # ------------------------------------------------------------------ members

    def attach(self, participant: str, member: Member, change: ConnectionChange | None, *, hello: bool) -> None:
        """Make ``member`` the participant's connection to this group and bring it up to date."""
        older = self.current.get(participant)
        self.current[participant] = member
        member.group = self
        self._router.connections[member.id] = member
        if older is not None and older is not member:
            older.close(WS_4000_REPLACED, "replaced by a newer connection of the same participant")
        if len(self.current) == 1 and older is None:
            self._router.hub.subscribe(self.topic, self)
        live = self._router.local(self.id)
        if live is not None:  # the authority is here: the state and the subscription start together
            self._greet(member, hello, live.hello(participant), live.replay())
            live.connect(participant, change, worker=self._router.worker, conn=member.id).add_done_callback(_consume)
            return
        member.hold()
        self._router.spawn(self._join(participant, member, change, hello))

    async def _join(self, participant: str, member: Member, change: ConnectionChange | None, hello: bool) -> None:
        try:
            await self._router.ready(self.topic)
            answer = await self._router.call(self.id, "join", {
                "p": participant, "w": self._router.worker, "k": member.id, "c": _change(change),
            })
        except NotPersisted as exc:
            log.warning("group %s: %s could not join: %s", self.id, participant, exc)
            member.close(WS_1013_TRY_AGAIN_LATER, f"try again later: {exc}")
            return
        self._router.mark(self.topic, answer["last_seq"])
        if self.current.get(participant) is not member or member.close_code is not None:
            return  # replaced or gone meanwhile: its departure tells the authority
        self._greet(member, hello, answer["hello"], answer["replay"])
        member.release(answer["last_seq"])

    async def _rejoin(self, participant: str, member: Member) -> None:
        """Resend the whole state to a member after frames may have been lost."""
        member.hold()
        try:
            answer = await self._router.call(self.id, "hello", {"p": participant})
        except NotPersisted as exc:
            member.close(WS_1013_TRY_AGAIN_LATER, f"try again later: {exc}")
            return
        self._router.mark(self.topic, answer["last_seq"])
        if self.current.get(participant) is member:
            self._greet(member, member.route == "synclab", answer["hello"], answer["replay"])
        member.release(answer["last_seq"])

    def _greet(self, member: Member, hello: bool, payload: dict[str, Any], replay: list[str]) -> None:
        self.info = {k: payload[k] for k in ("experiment", "block", "num_blocks", "block_pause")}
        if hello:
            member.send(encode("hello", payload))
        for frame in replay:
            member.send(frame)
        period = payload.get("period") or {}
        if payload["phase"] == "ended" and period.get("ended_at") is not None:
            self._router.period_ended(self, period["ended_at"] / 1000)

    def detach(self, participant: str, member: Member, change: ConnectionChange | None) -> None:
        """``member`` leaves this group (closed, or moved on to the next block)."""
        self._router.connections.pop(member.id, None)
        if self.current.get(participant) is member:
            del self.current[participant]
            if not self.current:
                self._router.hub.unsubscribe(self.topic, self)
        live = self._router.local(self.id)
        if live is not None:
            live.disconnect(participant, change, worker=self._router.worker, conn=member.id).add_done_callback(_consume)
            return
        body = {"p": participant, "w": self._router.worker, "k": member.id, "c": _change(change)}
        self._router.spawn(self._router.call(self.id, "leave", body))

    # ------------------------------------------------------------------ what members send

    def receive(
        self,
        participant: str,
        channel: str,
        payload: Any,
        client_id: str | None,
        answer: Callable[[asyncio.Future[Any]], None],
    ) -> None:
        """A member's frame, to the authority; ``answer`` gets the future of its stored ``seq``s once
        settled (it fails as it would there): here, at the commit (see :meth:`LiveGroup.receive`)."""
        live = self._router.local(self.id)
        if live is not None:
            live.receive(participant, channel, payload, client_id, answer=answer)
            return
        body = {"p": participant, "ch": channel, "v": payload, "i": client_id}
        asyncio.ensure_future(self._router.call(self.id, "receive", body)).add_done_callback(answer)


def _change(change: ConnectionChange | None) -> dict[str, Any] | None:
    if change is None:
        return None
    return {
        "id": change.id, "participant_id": change.participant_id, "experiment_id": change.experiment_id,
        "opened": change.opened, "closed": change.closed, "user_agent": change.user_agent,
        "address": change.address, "route": change.route, "close_code": change.close_code, "worker": change.worker,
    }


def change_from(body: dict[str, Any] | None) -> ConnectionChange | None:
    """A connection change sent by another worker (see :func:`_change`)."""
    return None if body is None else ConnectionChange(**body)


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
