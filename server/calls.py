"""The way to a group's authority, wherever it is: a call in one process, a request to the worker
that serves the group in a cluster.

:meth:`Calls.call` runs an operation (a member's arrival, departure or frame, the experimenter's
action, a stand-in's start) at the group's authority; :meth:`Calls.handle` answers one for a group
this process serves, whoever asked. A group that moved to another worker meanwhile is asked
there. :class:`Node` is what the router uses of this worker in a cluster.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, Protocol

from groups import InvalidState, RefusedAction

from .exceptions import GameFailed, NotPersisted, Unavailable
from .futures import consume
from .hooks import frame_failed, in_control
from .live import LiveGroup
from .standins import REASONS, StandIns
from .views import Member, change_from

#: the operations that run the game's code, whose failure the asker gets as :class:`GameFailed`
RUNS_THE_GAME = ("receive", "control", "standin")


class Node(Protocol):
    """This worker in a cluster, as the router uses it (see :class:`server.cluster.node.Node`)."""

    worker: str

    def holds(self, group_id: int) -> bool: ...

    async def owner(self, group_id: int) -> str: ...

    async def request(self, worker: str, op: str, body: dict[str, Any]) -> Any: ...

    def send(self, worker: str, op: str, body: dict[str, Any]) -> None: ...

    def forget(self, group_id: int) -> None: ...

    def let_go(self, group_id: int) -> None: ...

    def unknown(self, group_id: int) -> None: ...

    async def ready(self, topic: str) -> None: ...

    def mark(self, topic: str, seq: int) -> None: ...


class Calls:
    """Operations at a group's authority, here or at another worker (a part of
    :class:`server.routing.LiveGroups`)."""

    # what it reads of the router's state (see server.routing.LiveGroups.__init__)
    node: Node | None
    worker: str
    groups: dict[int, LiveGroup]
    connections: dict[str, Member]

    if TYPE_CHECKING:  # (server.routing.LiveGroups)
        async def group(self, group_id: int, epoch: int | None = None) -> LiveGroup: ...

        def local(self, group_id: int) -> LiveGroup | None: ...

        def retire(self, group_id: int) -> None: ...

    def close_member(self, worker: str, conn: str, code: int, reason: str) -> None:
        """Close a participant's connection ``conn`` (the group's authority replaced it), wherever it is."""
        if worker == self.worker:
            member = self.connections.get(conn)
            if member is not None:
                member.close(code, reason)
        elif self.node is not None:
            self.node.send(worker, "close", {"k": conn, "code": code, "reason": reason})

    async def ready(self, topic: str) -> None:
        if self.node is not None:
            await self.node.ready(topic)

    def mark(self, topic: str, seq: int) -> None:
        if self.node is not None:
            self.node.mark(topic, seq)

    async def call(self, group_id: int, op: str, body: dict[str, Any]) -> Any:
        """``op`` at the group's authority, here or at the worker that serves the group."""
        if self.node is None:
            if group_id not in self.groups:  # dropped as finished, wanted again: loaded as after a restart
                await self.group(group_id)
            return await _awaited(self.handle(op, {**body, "g": group_id}))
        for attempt in range(3):
            owner = await self.node.owner(group_id)
            if owner == self.worker:
                if self.local(group_id) is None:  # ours by its lease, but fenced meanwhile: ask again
                    self.retire(group_id)
                    continue
                return await _awaited(self.handle(op, {**body, "g": group_id}))
            try:
                return await self.node.request(owner, op, {**body, "g": group_id})
            except Unavailable as exc:
                self.node.unknown(group_id)
                if exc.code != "moved":
                    raise
                if attempt == 2 or (op == "receive" and body.get("i") is None):
                    # "moved" is the workers' word: the client hears "unavailable" and sends the
                    # frame again (a page drops a frame refused with a code it does not know)
                    raise Unavailable(str(exc)) from exc
                # another worker serves the group now: ask there. A frame with an id is stored once
                # whoever runs it (the member's ids stored are read there first); one without an id
                # might have been stored by the old worker before it went, so it is not sent twice
        raise Unavailable(f"group {group_id} could not be reached")

    def handle(self, op: str, body: dict[str, Any]) -> Any:
        """A request for a group this process serves: a value, or an awaitable of one."""
        group_id = int(body["g"])
        live = self.local(group_id)
        if live is None:
            if self.node is None:
                raise LookupError(f"group {group_id} is not loaded")
            moved = Unavailable(f"group {group_id} is not served here")
            moved.code = "moved"
            raise moved
        if op == "hello":
            return {"hello": live.hello(body["p"]), "replay": live.replay(), "last_seq": live.last_seq}
        if op == "join":
            answer = {"hello": live.hello(body["p"]), "replay": live.replay(), "last_seq": live.last_seq}
            live.connect(body["p"], change_from(body["c"]), worker=body["w"], conn=body["k"]).add_done_callback(consume)
            return answer
        if op == "leave":
            return live.disconnect(body["p"], change_from(body["c"]), worker=body["w"], conn=body["k"])
        if op in RUNS_THE_GAME:
            try:
                return _run(live, op, body)
            except (RefusedAction, InvalidState, NotPersisted):
                raise  # the core's refusals, the database's and the cluster's: the asker's to answer
            except Exception as exc:
                if op == "standin":  # not a member, not a reason, or a fault of ours: the game's own
                    raise  # failure never comes here (the seat is taken all the same: server.standins)
                raise _game_failed(live, op, body, exc) from None  # the game's code raised: logged here
        raise ValueError(f"unknown request {op!r}")

    async def stand_in(self, group_id: int, participant: str, reason: str) -> None:
        """A server-side bot plays ``participant``'s seat in the group, at its authority (:mod:`server.standins`).

        ``reason`` ``"fill"``: the seat has no human (the lobby's fill); the bot counts as
        connected and plays this block and the participant's later ones. ``"dropout"``: the
        human was away too long; the bot plays until they connect again. Returns once the bot's
        arrival is stored. Raises :class:`LookupError` for an unknown group or a participant not
        in it, :class:`ValueError` for an unknown reason. An arrival the game fails on (the
        period's start it makes, say) takes the seat all the same, logged where the game ran
        (:meth:`server.standins.StandIns.start`): it is not refused.
        """
        if reason not in REASONS:
            raise ValueError(f"expected a reason in {list(REASONS)}, got {reason!r}")
        if self.node is None:
            await self.group(group_id)
        await self.call(group_id, "standin", {"p": participant, "r": reason})


def _run(live: LiveGroup, op: str, body: dict[str, Any]) -> Any:
    """A request that runs the game's code (:data:`RUNS_THE_GAME`): what it answers."""
    if op == "receive":
        return live.receive(body["p"], body["ch"], body["v"], body["i"])
    if op == "control":
        return live.control(body["a"], body["s"], body.get("b"))
    if not isinstance(live.standins, StandIns):
        raise ValueError(f"unknown request {op!r}")
    return live.standins.start(body["p"], body["r"])


def _game_failed(live: LiveGroup, op: str, body: dict[str, Any], exc: Exception) -> GameFailed:
    """The game failed with ``exc`` on ``op`` at the group's authority: logged here as one process
    logs it, once, with its traceback (not as a request that failed: ``server.cluster.requests``),
    and what the asker gets, here or on another worker. A member's frame is refused with
    ``game_error`` (``server.connection``: its page does not send it again); the experimenter's
    action leaves the group as it was (``server.course``). (A stand-in's arrival the game fails on
    is counted all the same and logged where it ran, :meth:`server.standins.StandIns.start`.)
    The experimenter's action is logged as a hook the game fails in outside a frame
    (:meth:`server.hooks.HookWatch.hook_failed`: the game's name, the action, the exception),
    and the experimenter's call answers 500 (:class:`server.exceptions.ActionFailed`)."""
    kind = type(exc).__name__
    if op == "receive":
        frame_failed(live.id, live.game, body["p"], exc)
        return GameFailed(f"the game failed on this frame: {kind}")
    live.watch.hook_failed(exc, in_control(body["a"]), "the group is left as it was")
    live.record_fault(exc, body["a"])  # stored as a tick's failure is; nothing else of the action
    return GameFailed(f"the game failed on the experimenter's {body['a']}: {kind}")


async def _awaited(value: Any) -> Any:
    """``value``, or what it resolves to when it is awaitable (a request answered later)."""
    if isinstance(value, Awaitable):
        return await value
    return value
