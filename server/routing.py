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

This module holds the router's state and the loading of groups and views; its other parts share
that state, a module each: the way to a group's authority (``server.calls``), the sweep
(``server.sweeper``), the blocks one after another and the experimenter's actions
(``server.course``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Coroutine
from typing import Any

from groups import load_game

from .calls import Calls, Node
from .course import Course
from .exceptions import GameFailed, NotPersisted
from .hub import Hub
from .live import LiveGroup, RunEnded
from .lobby import Lobbies
from .standins import StandIns
from .storage import (
    Database,
    Seat,
    client_ids,
    client_seq,
    live_group_ids,
    load_group,
    load_seat,
)
from .sweeper import GRACE, Sweeper
from .ticks import Clock
from .views import GroupView, Member

log = logging.getLogger("synclab.routing")


class LiveGroups(Calls, Sweeper, Course):
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
                    stored_ids=functools.partial(self.database.read, client_ids),  # (read as each member comes)
                )
                group.on_arrival = self.lobbies.arrived
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

    # ------------------------------------------------------------------ tasks and shutdown

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            if not isinstance(exc, (NotPersisted, GameFailed)):  # (the game's failure: logged where it ran)
                log.error("a background task failed", exc_info=exc)

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
