"""An experiment's course over its groups: its members moved on to their next block, the
experimenter's actions on the whole experiment, and the notice that it is over.

When a period ends, :meth:`Course.period_ended` moves the members connected here on to their
next block's group after the experiment's ``block_pause`` (nobody moves on once the experiment
was cancelled or failed). :meth:`Course.control` is the Python API for the experimenter's
``start``, ``pause``, ``resume`` and ``end``; an ended experiment tells every member at once
(:data:`EXPERIMENT`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from groups import InvalidState, Phase, current_block

from .calls import Node
from .control import ACTIONS
from .exceptions import ActionFailed, GameFailed, NotPersisted, Unstorable
from .hub import Hub, group_topic
from .live import LiveGroup
from .storage import (
    Database,
    GroupPlace,
    Seat,
    experiment_groups,
    experiment_row,
    set_experiment_status,
)
from .ticks import Clock
from .views import GroupView
from .wire import encode

# the router's logger: these lines are about the router, wherever their code lives
log = logging.getLogger("synclab.routing")
#: experiment statuses after which nobody moves on to a next block (``done`` moves them to the last one)
STOPPED = ("cancelled", "failed")
#: the channel of the notice that the experiment is over (``{"status"}``, not stored): the members'
#: pages show their final screen, whatever block they were in (see :meth:`LiveGroups.control`)
EXPERIMENT = "experiment"


class Course:
    """Blocks one after another, and the experimenter's actions (a part of :class:`server.routing.LiveGroups`)."""

    # what it reads and sets of the router's state (see server.routing.LiveGroups.__init__)
    database: Database
    hub: Hub
    clock: Clock
    node: Node | None
    _moves: dict[int, asyncio.TimerHandle]
    _closed: bool

    if TYPE_CHECKING:  # (server.routing.LiveGroups)
        async def group(self, group_id: int, epoch: int | None = None) -> LiveGroup: ...

        async def seat(self, code: str, now: float | None = None) -> tuple[Seat, GroupView] | None: ...

        def spawn(self, coro: Coroutine[Any, Any, Any]) -> None: ...

        async def call(self, group_id: int, op: str, body: dict[str, Any]) -> Any: ...

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
        a group whose game fails on another action (its payoff raises, say) is left as it was,
        logged where the game ran, and the others are acted on; then :class:`ActionFailed`
        (the REST call's 500) names the groups acted on and those the game failed on. Raises
        :class:`LookupError` for an unknown experiment or group and :class:`ValueError` for an
        unknown action.
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
        failed: dict[int, str] = {}
        for place in targets:
            if self.node is None:
                await self.group(place.group_id)
            try:
                await self.call(place.group_id, "control", {"a": action, "s": scope, "b": by})
            except InvalidState:
                continue  # it changed since we looked: nothing to do for it
            except (GameFailed, Unstorable) as exc:  # the game failed on it (its payoff, say; or made a
                # write that cannot be stored), logged where it ran (server.calls, the group): left as it
                failed[place.group_id] = str(exc)  # was, and the other groups go on all the same
                continue
            except (NotPersisted, LookupError):
                raise  # the database or the cluster: the whole action may be tried again
            except Exception:  # (another worker's failure that is not the game's: answered "internal")
                log.exception("group %s: the experimenter's %s failed; the group is left as it was",
                              place.group_id, action)
                continue
            done.append(place.group_id)
        if action == "end" and group_id is None:
            self._tell_over(every, "cancelled" if row["status"] in ("pending", "running") else row["status"])
        if failed:
            said = "; ".join(f"group {g}: {why}" for g, why in failed.items())
            raise ActionFailed(f"{action} failed in {len(failed)} of {len(targets)} groups, each left as it was: {said}",
                               action=action, done=done, failed=list(failed))
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
