"""An experimenter's actions on a live group: ``start``, ``pause``, ``resume`` and ``end``.

Each is one action of the group (:meth:`server.live.LiveGroup.act`), recorded as a
:data:`CONTROL` event in the same write as what it caused. ``end`` ends the period whatever the
game does: one that fails on it is ended without the game (:meth:`server.ticks.Ticks._end_faulted`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from groups import NOBODY, DecisionGroup, Event

from .exceptions import Unstorable
from .futures import follow

ACTIONS = ("start", "pause", "resume", "end")
#: the channel of an experimenter's action, recorded (not sent) before what it caused
CONTROL = "control"


class Control:
    """The experimenter's actions on a live group (a part of :class:`server.live.LiveGroup`)."""

    # what it reads of the group's state (see server.live.LiveGroup.__init__)
    core: DecisionGroup
    _clock: Callable[[], float]

    if TYPE_CHECKING:  # (server.live.LiveGroup, server.ticks.Ticks)
        def act(self, action: Callable[[], list[Event]]) -> asyncio.Future[list[int]]: ...

        def _running_loop(self) -> asyncio.AbstractEventLoop: ...

        def _end_faulted(self, exc: Exception, during: str, now: float) -> list[Event]: ...

    def start(self) -> asyncio.Future[list[int]]:
        return self.act(lambda: self.core.start(self._clock()))

    def end(self) -> asyncio.Future[list[int]]:
        return self.act(lambda: self.core.end(self._clock()))

    def control(self, action: str, scope: str, by: str | None = None) -> asyncio.Future[list[int]]:
        """An experimenter's ``start``, ``pause``, ``resume`` or ``end``, stored as a ``control`` event.

        ``by``, the name of the token that asked, is stored in the event's value.

        The event is recorded with what the action caused, in the same transaction; a refused
        action (:class:`groups.InvalidState`) records nothing. ``end`` on a group whose game fails
        on it (the period's scoring raises, or makes a write that cannot be stored,
        :class:`~server.exceptions.Unstorable`) ends the period without the game all the same
        (:meth:`groups.DecisionGroup.end_faulted`, a ``game_fault`` event recorded, logged);
        another action the game fails on raises what it raised and changes nothing.
        """
        if action not in ACTIONS:
            raise ValueError(f"expected an action in {list(ACTIONS)}, got {action!r}")
        step: Callable[[float], list[Event]] = getattr(self.core, action)
        value = {"action": action, "scope": scope} if by is None else {"action": action, "scope": scope, "by": by}
        record = Event(CONTROL, value, None, NOBODY)
        if action != "end":
            return self.act(lambda: [record, *step(self._clock())])

        def end() -> list[Event]:
            now = self._clock()
            try:
                return [record, *self.core.end(now)]
            except Exception as exc:  # the game failed (its payoff, say): the period ends without it
                return [record, *self._end_faulted(exc, "end", now)]

        ending = self.act(end)
        if ending.done():
            return ending
        ended: asyncio.Future[list[int]] = self._running_loop().create_future()

        def stored(done: asyncio.Future[list[int]]) -> None:
            exc = None if done.cancelled() else done.exception()
            if not isinstance(exc, Unstorable):
                follow(done, ended)
                return
            now = self._clock()  # the game made the end's write unstorable: ended without it too
            try:
                follow(self.act(lambda: [record, *self._end_faulted(exc, "end", now)]), ended)
            except Exception as again:  # (it ended meanwhile, say)
                ended.set_exception(again)

        ending.add_done_callback(stored)
        return ended

    def pause(self) -> asyncio.Future[list[int]]:
        return self.act(lambda: self.core.pause(self._clock()))

    def resume(self) -> asyncio.Future[list[int]]:
        return self.act(lambda: self.core.resume(self._clock()))
