"""The router's memory: finished groups and views without members leave it.

:meth:`Sweeper.sweep` runs every half ``grace`` once a group or a view is loaded and drops a
group whose period is over and stored with nobody connected, no write on its way and no bot
playing (:attr:`server.live.LiveGroup.resting`), and a view without members here, once each has
been so for ``grace`` seconds; whoever connects to one later loads it again from the database,
as after a restart. In a cluster the node gives finished groups up (``server.cluster.node``) and
the sweep drops the views.
"""

from __future__ import annotations

import asyncio
import logging

from .calls import Node
from .live import LiveGroup
from .lobby import Lobbies
from .views import GroupView

# the router's logger: these lines are about the router, wherever their code lives
log = logging.getLogger("synclab.routing")
#: seconds a finished group stays in memory by default (``SYNCLAB_GROUP_GRACE``)
GRACE = 2.0
#: the shortest interval between two sweeps
MIN_SWEEP = 0.05


class Sweeper:
    """Finished groups and empty views dropped from memory (a part of :class:`server.routing.LiveGroups`)."""

    # what it reads and sets of the router's state (see server.routing.LiveGroups.__init__)
    node: Node | None
    groups: dict[int, LiveGroup]
    views: dict[int, GroupView]
    lobbies: Lobbies
    grace: float
    _loading: dict[int, asyncio.Lock]
    _moves: dict[int, asyncio.TimerHandle]
    _quiet: dict[int, float]
    _quiet_views: dict[int, float]
    _sweeper: asyncio.TimerHandle | None
    _closed: bool

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
