"""Members coming and going at a live group: their connections, the lobby's count, their stand-ins.

A member's current connection is known by its worker and id; a newer one replaces the older,
which is closed (4000). Arrivals and departures are the core's ``connect`` and ``disconnect``,
stored with the connection's row; a first-block group of an online experiment counts its
waiting members live (:data:`LOBBY`), and the group's stand-ins (:class:`Seats`) are told who
comes and goes. Once nobody is here and nothing is on its way, a finished group rests
(:attr:`Presence.resting`): it may leave memory.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from groups import DecisionGroup, Event, GroupState, InvalidState, Phase, RefusedAction

from .exceptions import WS_4000_REPLACED
from .hub import Hub
from .storage import ConnectionChange
from .wire import encode

# the group's logger: these lines are about the group, wherever their code lives
log = logging.getLogger("synclab.live")
#: the channel of the lobby's count (``{"present", "needed"}``, not stored) and of its release (stored)
LOBBY = "lobby"

#: close a participant's connection ``conn`` on ``worker`` with ``code`` and ``reason``
CloseMember = Callable[[str, str, int, str], None]


class Seats(Protocol):
    """Who plays each seat besides its human (``server.standins``), as the group tells it."""

    def connected(self, participant: str) -> None: ...

    def disconnected(self, participant: str) -> None: ...

    def statuses(self, events: list[Event]) -> list[tuple[int, str]]: ...

    def stop(self) -> None: ...

    def idle(self) -> bool:
        """Whether no bot plays or is about to (the group may leave memory)."""


class Presence:
    """A live group's members as they come and go (a part of :class:`server.live.LiveGroup`)."""

    # what it reads and sets of the group's state (see server.live.LiveGroup.__init__)
    id: int
    topic: str
    core: DecisionGroup
    committed: GroupState
    connections: dict[str, tuple[str, str]]
    retired: bool
    _pending: int
    standins: Seats | None
    has_lobby: bool
    on_arrival: Callable[[Any], None] | None
    _close_member: CloseMember | None
    _hub: Hub
    _clock: Callable[[], float]

    if TYPE_CHECKING:  # (server.live.LiveGroup)
        def act(
            self, action: Callable[[], list[Event]], *, connection: ConnectionChange | None = None
        ) -> asyncio.Future[list[int]]: ...

        def ids_needed(self, participant: str) -> None: ...

    def connect(
        self, participant: str, connection: ConnectionChange | None, *, worker: str = "", conn: str = ""
    ) -> asyncio.Future[list[int]]:
        """The participant's connection ``conn`` on ``worker`` is its current one; an older one is closed."""
        self.ids_needed(participant)  # their client ids stored before, read once (server.lookups)
        older = self.connections.get(participant)
        self.connections[participant] = (worker, conn)
        if older is not None and older != (worker, conn) and self._close_member is not None:
            self._close_member(*older, WS_4000_REPLACED, "replaced by a newer connection of the same participant")
        future = self._present(participant, connection, arriving=True)
        if self.has_lobby:
            future.add_done_callback(self._lobby_changed)
            if self.on_arrival is not None:
                self.on_arrival(self)
        if self.standins is not None:
            self.standins.connected(participant)
        return future

    def disconnect(
        self, participant: str, connection: ConnectionChange | None, *, worker: str = "", conn: str = ""
    ) -> asyncio.Future[list[int]]:
        """The connection ``conn`` closed: the participant is gone, unless a newer one replaced it."""
        if self.connections.get(participant) == (worker, conn):
            del self.connections[participant]
            future = self._present(participant, connection, arriving=False)
            if self.has_lobby:
                future.add_done_callback(self._lobby_changed)
            if self.standins is not None:
                self.standins.disconnected(participant)
            return future
        return self.act(list, connection=connection)  # replaced: only the close is stored

    def _present(self, participant: str, connection: ConnectionChange | None, *, arriving: bool) -> asyncio.Future[list[int]]:
        """The member arrives (or leaves): the core's ``connect`` (``disconnect``), stored with the connection.

        A member comes and goes even when the game fails on what fell due before (a tick whose
        payoff raises, which the clock tries again) or on its own hook: the core counts them
        present (absent) all the same, the rest of what it would have made undone (a period
        not started: :meth:`groups.DecisionGroup.connect`), and the connection is stored. Its
        socket was closed with 1011 and its page came back again and again, its close not stored."""
        step = self.core.connect if arriving else self.core.disconnect
        try:
            return self.act(lambda: step(participant, self._clock()), connection=connection)
        except (RefusedAction, InvalidState):
            raise
        except Exception as exc:  # (the core counted them all the same)
            log.warning("group %s: the game %s failed when %s %s (%s: %s); counted all the same",
                        self.id, type(self.core).__name__, participant, "arrived" if arriving else "left",
                        type(exc).__name__, exc)
            return self.act(list, connection=connection)

    def lobby(self, arriving: str | None = None) -> dict[str, int] | None:
        """While a lobby waits for its members: how many are here (with ``arriving``) and how many are needed."""
        if not self.has_lobby or self.committed.phase is not Phase.WAITING:
            return None
        here = self.core.connected | ({arriving} if arriving is not None else set())
        return {"present": len(here & set(self.core.members)), "needed": len(self.core.members)}

    def _lobby_changed(self, stored: asyncio.Future[list[int]]) -> None:
        """After a member's arrival or departure is stored: the waiting members' count, live (not stored)."""
        if stored.cancelled() or stored.exception() is not None or self.retired:
            return
        lobby = self.lobby()
        if lobby is not None:
            self._hub.publish(self.topic, encode(LOBBY, lobby))

    @property
    def resting(self) -> bool:
        """Whether nothing keeps the group in memory: its period is over and stored, nobody is
        connected, no write is on its way and no bot plays (see :meth:`server.routing.LiveGroups.sweep`)."""
        return (
            self.committed.phase is Phase.ENDED
            and self.core.state.phase is Phase.ENDED
            and not self.connections
            and not self._pending
            and (self.standins is None or self.standins.idle())
        )
