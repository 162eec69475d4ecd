"""The router: every group this process acts for, every group view it has members in, and the way between.

:class:`LiveGroups` loads a group's authority (:class:`server.live.LiveGroup`) where the group
is served, and a :class:`server.views.GroupView` where its members' sockets are. In one process
both are here and every call is a call. In a cluster (``node``, see ``server.cluster``) a group
is served by the worker that holds its lease; a view here sends what its members do there as
requests (:meth:`LiveGroups.call`), and this process answers the requests of other workers for
the groups it serves (:meth:`LiveGroups.handle`). At start-up in one process it reloads every
running period, so a deadline missed while the server was down is applied at once (and recorded
late). When a period ends it moves the members here on to their next block's group after the
experiment's ``block_pause``. Its :meth:`LiveGroups.control` is the Python API for the
experimenter's ``start``, ``pause``, ``resume`` and ``end``.

Finished groups leave memory: :meth:`LiveGroups.sweep` runs every half ``grace`` and drops a
group whose period is over and stored with nobody connected, no write on its way and no bot
playing (:attr:`server.live.LiveGroup.resting`), and a view without members here, once each has
been so for ``grace`` seconds; whoever connects to one later loads it again from the database,
as after a restart. In a cluster the node gives finished groups up (``server.cluster.node``) and
the sweep drops the views.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Coroutine
from typing import Any, Protocol

from groups import InvalidState, Phase, current_block, load_game

from .control import ACTIONS
from .exceptions import NotPersisted, Unavailable, Unstorable
from .futures import consume
from .hub import Hub, group_topic
from .live import LiveGroup, RunEnded
from .lobby import Lobbies
from .standins import REASONS, StandIns
from .storage import (
    Database,
    GroupPlace,
    Seat,
    client_ids,
    client_seq,
    experiment_groups,
    experiment_row,
    live_group_ids,
    load_group,
    load_seat,
    set_experiment_status,
)
from .ticks import Clock
from .views import GroupView, Member, change_from
from .wire import encode

log = logging.getLogger("synclab.routing")
#: seconds a finished group stays in memory by default (``SYNCLAB_GROUP_GRACE``)
GRACE = 2.0
#: the shortest interval between two sweeps
MIN_SWEEP = 0.05
#: experiment statuses after which nobody moves on to a next block (``done`` moves them to the last one)
STOPPED = ("cancelled", "failed")
#: the channel of the notice that the experiment is over (``{"status"}``, not stored): the members'
#: pages show their final screen, whatever block they were in (see :meth:`LiveGroups.control`)
EXPERIMENT = "experiment"


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


class LiveGroups:
    """Every live group and group view of this process (and, in a cluster, the way to the others)."""

    def __init__(
        self,
        database: Database,
        writer: Any,
        hub: Hub,
        clock: Clock = time.time,
        *,
        node: Node | None = None,
        run_ended: RunEnded | None = None,
        grace: float = GRACE,
    ) -> None:
        self.database = database
        self.writer = writer
        self.hub = hub
        self.clock = clock
        self.node = node
        #: told when a group's last period ended and is stored (``server.deliveries``)
        self.run_ended = run_ended
        #: this worker's name in a cluster ('' in one process)
        self.worker = node.worker if node is not None else ""
        #: the groups this process acts for, by id
        self.groups: dict[int, LiveGroup] = {}
        #: the groups this process has members in, by id
        self.views: dict[int, GroupView] = {}
        #: every member connection here, by its id (to close one the group's authority replaced)
        self.connections: dict[str, Member] = {}
        self._loading: dict[int, asyncio.Lock] = {}
        self._moves: dict[int, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        #: set at shutdown: no block change is planned any more
        self._closed = False
        #: the lobby timeouts of the online experiments' first-block groups served here
        self.lobbies = Lobbies(self)
        #: seconds a finished group, or a view without members, stays in memory before it is dropped
        self.grace = grace
        #: since when (the loop's clock) each group, and each view, has been seen resting
        self._quiet: dict[int, float] = {}
        self._quiet_views: dict[int, float] = {}
        self._sweeper: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------ authorities here

    async def resume_all(self) -> int:
        """Load every group whose period runs or is paused; their timers apply what is overdue.

        In a cluster the node claims them instead, each by one worker.
        """
        if self.node is not None:
            return 0
        ids = await self.database.read(live_group_ids)
        loaded = [await self.group(group_id) for group_id in ids]
        # what fell due while the process was down is stored before anyone can connect
        await asyncio.gather(*(group.catch_up() for group in loaded))
        return len(ids)

    async def group(self, group_id: int, epoch: int | None = None) -> LiveGroup:
        """The live group ``group_id`` acted for here, loaded once (in a cluster, under ``epoch``)."""
        group = self.groups.get(group_id)
        if group is not None and not group.retired:
            self._quiet.pop(group_id, None)  # wanted again: its grace starts over
            return group
        self._sweeping()
        lock = self._loading.setdefault(group_id, asyncio.Lock())
        async with lock:
            group = self.groups.get(group_id)
            if group is None or group.retired:
                spec = await self.database.read(load_group, group_id)
                if spec is None:
                    raise LookupError(f"no group {group_id}")
                game = load_game(spec.game)
                group = LiveGroup(
                    spec, game, self.writer, self.hub, self.clock, epoch=epoch, close_member=self.close_member,
                    fenced=self.retire, run_ended=self.run_ended, lookup=self._client_seq,
                )
                group.on_arrival = self.lobbies.arrived
                if self.node is not None:  # every member's ids: a frame from anywhere is stored once
                    for code, pid in spec.member_ids.items():
                        group.load_client_ids(code, await self.database.read(client_ids, pid))
                self.groups[group_id] = group
                group.standins = standins = StandIns(group, self)
                standins.begin()
        self._loading.pop(group_id, None)
        return group

    async def _client_seq(self, participant_id: int, client_id: str) -> int | None:
        """The ``seq`` of a participant's stored frame with ``client_id`` (``None``: none is stored)."""
        return await self.database.read(client_seq, participant_id, client_id)

    def local(self, group_id: int) -> LiveGroup | None:
        """The group's authority if this process acts for it now, else ``None``."""
        group = self.groups.get(group_id)
        if group is None or group.retired:
            return None
        if self.node is not None and not self.node.holds(group_id):
            return None
        return group

    def retire(self, group_id: int) -> None:
        """Stop acting for the group (its lease is gone or given up, or a write of it was fenced)."""
        group = self.groups.pop(group_id, None)
        self.lobbies.forget(group_id)
        if group is not None:
            group.retire()
        if self.node is not None:
            self.node.forget(group_id)

    # ------------------------------------------------------------------ members here

    def view(self, group_id: int) -> GroupView:
        view = self.views.get(group_id)
        if view is None:
            self._sweeping()
            view = self.views[group_id] = GroupView(group_id, self)
        else:
            self._quiet_views.pop(group_id, None)
        return view

    # ------------------------------------------------------------------ memory

    def _sweeping(self) -> None:
        """Sweep every half ``grace`` from now on (started by the first group or view loaded)."""
        if self._sweeper is None and not self._closed:
            loop = asyncio.get_running_loop()
            self._sweeper = loop.call_later(max(MIN_SWEEP, self.grace / 2), self._sweep_again)

    def _sweep_again(self) -> None:
        self._sweeper = None
        try:
            self.sweep()
        except Exception:
            log.exception("sweeping finished groups failed")
        if self.groups or self.views:
            self._sweeping()

    def sweep(self, now: float | None = None) -> int:
        """Drop what has rested ``grace`` seconds: finished groups served here, views without members.

        Returns how many groups and views were dropped. A group or view seen resting for the
        first time is only marked; one no longer resting loses its mark.
        """
        now = asyncio.get_running_loop().time() if now is None else now
        dropped = 0
        for group_id, group in list(self.groups.items()):
            # a view here with no member for ``grace`` yet may be about to get one (a socket
            # between its seat's lookup and its attach): the group waits for the view
            if not group.resting or group_id in self._moves or group_id in self._loading or (
                group_id in self.views and now - self._quiet_views.get(group_id, now) < self.grace
            ):
                self._quiet.pop(group_id, None)
            elif now - self._quiet.setdefault(group_id, now) >= self.grace:
                self._quiet.pop(group_id, None)
                if self.node is not None:  # in a cluster its lease goes too
                    self.node.let_go(group_id)
                else:
                    self.groups.pop(group_id, None)
                    self.lobbies.forget(group_id)
                    group.retire()  # its clock and bots stop; a stale reference is refused
                dropped += 1
        for group_id in [g for g in self._quiet if g not in self.groups]:
            del self._quiet[group_id]
        for group_id, view in list(self.views.items()):
            if view.current or group_id in self._moves:
                self._quiet_views.pop(group_id, None)
            elif now - self._quiet_views.setdefault(group_id, now) >= self.grace:
                self._quiet_views.pop(group_id, None)
                del self.views[group_id]
                if self.node is not None and group_id not in self.groups:
                    self.node.unknown(group_id)  # who serves it is asked again if it is wanted again
                dropped += 1
        for group_id in [g for g in self._quiet_views if g not in self.views]:
            del self._quiet_views[group_id]
        return dropped

    async def seat(self, code: str, now: float | None = None) -> tuple[Seat, GroupView] | None:
        """The participant's seat and the view of its group, or ``None`` for an unknown code.

        In one process the group is loaded here; in a cluster somebody acts for it from now on.
        """
        seat = await self.database.read(load_seat, code, self.clock() if now is None else now)
        if seat is None:
            return None
        if self.node is None:
            group = await self.group(seat.group_id)
            if code not in group.client_ids:
                group.load_client_ids(code, await self.database.read(client_ids, seat.participant_id))
        else:
            await self.node.owner(seat.group_id)
        return seat, self.view(seat.group_id)

    def close_member(self, worker: str, conn: str, code: int, reason: str) -> None:
        """Close a participant's connection ``conn`` (the group's authority replaced it), wherever it is."""
        if worker == self.worker:
            member = self.connections.get(conn)
            if member is not None:
                member.close(code, reason)
        elif self.node is not None:
            self.node.send(worker, "close", {"k": conn, "code": code, "reason": reason})

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            if not isinstance(exc, NotPersisted):
                log.error("a background task failed", exc_info=exc)

    async def ready(self, topic: str) -> None:
        if self.node is not None:
            await self.node.ready(topic)

    def mark(self, topic: str, seq: int) -> None:
        if self.node is not None:
            self.node.mark(topic, seq)

    # ------------------------------------------------------------------ requests to a group's authority

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
                # whoever runs it (the ids stored are loaded with the group); one without an id
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
        if op == "receive":
            return live.receive(body["p"], body["ch"], body["v"], body["i"])
        if op == "control":
            return live.control(body["a"], body["s"], body.get("b"))
        if op == "standin" and isinstance(live.standins, StandIns):
            return live.standins.start(body["p"], body["r"])
        raise ValueError(f"unknown request {op!r}")

    async def stand_in(self, group_id: int, participant: str, reason: str) -> None:
        """A server-side bot plays ``participant``'s seat in the group, at its authority (:mod:`server.standins`).

        ``reason`` ``"fill"``: the seat has no human (the lobby's fill); the bot counts as
        connected and plays this block and the participant's later ones. ``"dropout"``: the
        human was away too long; the bot plays until they connect again. Returns once the bot's
        arrival is stored. Raises :class:`LookupError` for an unknown group or a participant not
        in it, :class:`ValueError` for an unknown reason.
        """
        if reason not in REASONS:
            raise ValueError(f"expected a reason in {list(REASONS)}, got {reason!r}")
        if self.node is None:
            await self.group(group_id)
        await self.call(group_id, "standin", {"p": participant, "r": reason})

    # ------------------------------------------------------------------ blocks

    def period_ended(self, view: GroupView, ended_at: float) -> None:
        """A period ended: after the pause, move whoever is connected here on to the next block."""
        info = view.info
        if self._closed or not info or info["block"] >= info["num_blocks"] - 1 or view.id in self._moves:
            return
        due = ended_at + float(info["block_pause"] or 0.0)
        loop = asyncio.get_running_loop()
        self._moves[view.id] = loop.call_at(
            loop.time() + max(0.0, due - self.clock()), lambda: self.spawn(self._move_on(view, due))
        )

    async def _move_on(self, view: GroupView, due: float) -> None:
        self._moves.pop(view.id, None)
        try:
            row = await self.database.read(experiment_row, view.info["experiment"])
            if row is None:
                return
            if row["status"] in STOPPED:  # nobody moves on: whoever is still here hears why (the
                # notice of the end may have gone out while a member was between its seat and here)
                notice = encode(EXPERIMENT, {"status": row["status"]})
                for member in list(view.current.values()):
                    member.send(notice)
                return
            for code, member in list(view.current.items()):
                seated = await self.seat(code, max(self.clock(), due))
                if seated is None or seated[1] is view:
                    continue
                if view.current.get(code) is not member or member.close_code is not None:
                    continue  # gone or replaced while we looked the next group up
                view.detach(code, member, None)
                seated[1].attach(code, member, None, hello=member.route == "synclab")
        except Exception:
            log.exception("group %s: moving members to the next block failed", view.id)

    # ------------------------------------------------------------------ the experimenter

    async def control(
        self, experiment_code: str, action: str, group_id: int | None = None, *, by: str | None = None
    ) -> list[int]:
        """``start``, ``pause``, ``resume`` or ``end`` an experiment (or one of its groups).

        ``by`` (the experimenter token's name) is stored in each ``control`` event.

        ``start`` forces the waiting groups that are every member's current group; ``pause``
        and ``resume`` take the running and paused ones; ``end`` ends every period not ended
        (a whole experiment ended this way is ``cancelled``). Returns the groups acted on,
        once their events are stored. ``end`` ends a group whose game fails on it all the same,
        without the game (:meth:`server.live.LiveGroup.control`: recorded as a ``game_fault``);
        a group whose game fails on another action (its payoff raises, say) is left as it was
        and out of the list, logged, and the others are acted on. Raises :class:`LookupError`
        for an unknown experiment or group and :class:`ValueError` for an unknown action.
        """
        if action not in ACTIONS:
            raise ValueError(f"expected an action in {list(ACTIONS)}, got {action!r}")
        row = await self.database.read(experiment_row, experiment_code)
        if row is None:
            raise LookupError(f"no experiment with code {experiment_code!r}")
        every = await self.database.read(experiment_groups, row["id"])
        places = every if group_id is None else [p for p in every if p.group_id == group_id]
        if not places:
            raise LookupError(f"no group {group_id} in experiment {experiment_code!r}")
        now = self.clock()
        if action == "start":
            here: dict[int, list[Any]] = {}
            for p in every:
                for member in p.members:
                    here.setdefault(member, []).append(p)
            # during the pause after a block the members are still in its group (seeing its
            # results): the next block's group is not theirs yet, and is not started before they move in
            pause = float(row["block_pause"] or 0.0)
            current = {m: gs[current_block([(g.phase, g.ended_at) for g in gs], now, pause)].group_id
                       for m, gs in here.items()}
            targets = [p for p in places if p.phase is Phase.WAITING and all(current[m] == p.group_id for m in p.members)]
        elif action == "pause":
            targets = [p for p in places if p.phase is Phase.RUNNING]
        elif action == "resume":
            targets = [p for p in places if p.phase is Phase.PAUSED]
        else:
            targets = [p for p in places if p.phase is not Phase.ENDED]
            if group_id is None and row["status"] in ("pending", "running"):
                await self.database.write(set_experiment_status, row["id"], "cancelled", now)
        scope = "experiment" if group_id is None else "group"
        done: list[int] = []
        for place in targets:
            if self.node is None:
                await self.group(place.group_id)
            try:
                await self.call(place.group_id, "control", {"a": action, "s": scope, "b": by})
            except InvalidState:
                continue  # it changed since we looked: nothing to do for it
            except Unstorable:  # the game made a write that cannot be stored (logged by the group)
                continue
            except (NotPersisted, LookupError):
                raise  # the database or the cluster: the whole action may be tried again
            except Exception:  # the game failed on it (its payoff, say): the other groups go on all the same
                log.exception("group %s: the game failed on the experimenter's %s; the group is left as it was",
                              place.group_id, action)
                continue
            done.append(place.group_id)
        if action == "end" and group_id is None:
            self._tell_over(every, "cancelled" if row["status"] in ("pending", "running") else row["status"])
        return done

    def _tell_over(self, places: list[GroupPlace], status: str) -> None:
        """Tell every member of the experiment that it is over, whatever block they are in.

        Through each of its groups' topics, after their ``period_end``s are stored: members
        playing, waiting for their group or between blocks (whom nobody moves on any more) hear
        it on any worker, and their pages show the final screen at once. Not stored: a page
        that connects later is seated in its last group, ended, and shows the final screen too.
        """
        notice = encode(EXPERIMENT, {"status": status})
        for place in places:
            self.hub.publish(group_topic(place.group_id), notice)

    def close(self) -> None:
        """At shutdown: stop every group's clock and every planned block change.

        The writes the groups have submitted stay queued: the writer stores them, and their
        outcome still reaches the groups (see :meth:`server.runtime.Runtime.close`).
        """
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self.lobbies.close()
        for handle in self._moves.values():
            handle.cancel()
        for task in self._tasks:
            task.cancel()
        for group in self.groups.values():
            group.close()


async def _awaited(value: Any) -> Any:
    """``value``, or what it resolves to when it is awaitable (a request answered later)."""
    if isinstance(value, Awaitable):
        return await value
    return value

