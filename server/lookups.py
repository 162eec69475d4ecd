"""A live group's look-ups of its members' old client ids in the database.

A member's frame whose id its :class:`server.clientids.ClientIds` may have seen long ago (the
filter's :data:`server.clientids.MAYBE`) is answered with the stored frame's ``seq`` if the
database holds it, else received as a new frame. The member's frames that come meanwhile wait
behind it, in order.

A member's ids stored before are loaded once, when they first join the group here or send it a
frame with an id (:meth:`LookUps.ids_needed`), not when the group is loaded: in a cluster a
worker may load a member's next group while they still play their block, and the frames they
store there meanwhile would be unknown here. Their frames wait behind the load, in order.

A frame whose write the database refused (the key of its ``client_ids``) is looked up too: the
ids here may not know a frame stored before (:meth:`LookUps._stored_before`), a last guard.

However a read or look-up ends (its answer, a failure, its task cancelled: the group retired, the
loop ending), what waits on it is answered and the member no longer held (:meth:`LookUps._start`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from groups import Event, RefusedAction

from .clientids import ClientIds
from .exceptions import GameFailed, NotAuthority, NotPersisted, Unstorable
from .futures import follow, own_event, refuse
from .hooks import HookWatch, frame_failed

#: a frame held behind a look-up: its channel, payload, client id, whether a bot sent it, its answer
Held = tuple[str, Any, str | None, bool, asyncio.Future[list[int]]]

T = TypeVar("T")


class LookUps:
    """Old client ids looked up (a part of :class:`server.live.LiveGroup`)."""

    # what it reads and sets of the group's state (see server.live.LiveGroup.__init__)
    id: int
    game: str
    retired: bool
    member_ids: dict[str, int]
    client_ids: dict[str, ClientIds]
    _lookup: Callable[[int, str], Coroutine[Any, Any, int | None]] | None
    _stored_ids: Callable[[int], Coroutine[Any, Any, list[tuple[str, int]]]] | None
    _looking: set[asyncio.Task[Any]]
    _held: dict[str, list[Held]]
    watch: HookWatch

    if TYPE_CHECKING:  # (server.live.LiveGroup)
        def receive(
            self,
            participant: str,
            channel: str,
            payload: Any,
            client_id: str | None,
            *,
            bot: bool = False,
            answer: Callable[[asyncio.Future[list[int]]], None] | None = None,
            new: bool = False,
        ) -> asyncio.Future[list[int]]: ...

        def _running_loop(self) -> asyncio.AbstractEventLoop: ...

        def _reschedule(self) -> None: ...

        def _unstorable(self, exc: Unstorable, tick: bool) -> None: ...

    def load_client_ids(self, participant: str, stored: list[tuple[str, int]]) -> None:
        """A member's ids stored before (oldest first), read once they are here, unless known already."""
        if participant not in self.client_ids:
            self.client_ids[participant] = ClientIds(stored, forgets=self._lookup is not None)

    def ids_needed(self, participant: str) -> None:
        """The member joins the group here, or sends it a frame with an id: their ids stored before
        are read now (unless known, or being read), and their frames meanwhile wait behind the read.

        Not when the group is loaded: with random matching a worker may load a member's next
        group (for a member whose block ended first) while they still play their block, and a
        frame of theirs stored after that and sent again here (its ack lost) was taken as new.
        Once they join here their earlier block's period has ended, its writes stored."""
        if participant in self.client_ids or participant in self._held:
            return
        load, member = self._stored_ids, self.member_ids.get(participant)
        if load is None or member is None:  # nothing to read (or no member: the game refuses the frame)
            self.client_ids[participant] = ClientIds(forgets=self._lookup is not None)
            return
        held: list[Held] = []
        self._held[participant] = held

        def read(task: asyncio.Task[list[tuple[str, int]]]) -> None:
            failed = self._unchecked(task)  # storage halted, the database gone: the client may retry
            try:
                if failed is None:
                    self.load_client_ids(participant, task.result())
            finally:
                del self._held[participant]
                for channel, payload, client_id, bot, waiting in held:  # in order, as after a look-up
                    if failed is not None and client_id is not None:  # (its id unchecked: not taken as new)
                        refuse(waiting, failed)
                    else:
                        self._received(waiting, participant, channel, payload, client_id, bot)

        self._start(load(member), read)

    def _look_up(
        self,
        ids: ClientIds,
        participant: str,
        channel: str,
        payload: Any,
        client_id: str,
        bot: bool,
        answer: Callable[[asyncio.Future[list[int]]], None] | None,
    ) -> asyncio.Future[list[int]]:
        """A frame whose id may be an old one's: answered with its ``seq`` if the database holds
        it, else received as a new frame. The member's frames meanwhile wait behind it, and are
        received in order after it: a new frame is never applied after a later one."""
        assert self._lookup is not None
        lookup = self._lookup
        future: asyncio.Future[list[int]] = self._running_loop().create_future()
        if answer is not None:
            future.add_done_callback(answer)
        held: list[Held] = []
        self._held[participant] = held

        def looked(task: asyncio.Task[int | None]) -> None:
            try:
                failed = self._unchecked(task)  # storage halted, the database gone: the client may retry
                if failed is not None:  # (its awaiter may have been cancelled: the rest runs all the same)
                    refuse(future, failed)
                elif (seq := task.result()) is not None:
                    ids.stored(client_id, seq)
                    if not future.done():
                        future.set_result([seq])
                else:
                    self._received(future, participant, channel, payload, client_id, bot, new=True)
            finally:
                del self._held[participant]
                for later_channel, later_payload, later_id, later_bot, waiting in held:  # in order; a
                    # later look-up holds the rest again
                    self._received(waiting, participant, later_channel, later_payload, later_id, later_bot)

        self._start(lookup(self.member_ids[participant], client_id), looked)
        return future

    def _start(self, reading: Coroutine[Any, Any, T], ended: Callable[[asyncio.Task[T]], None]) -> None:
        """``reading`` in a task of the group's, kept until it ends; ``ended`` gets the task however
        it ends. A done callback, not a ``finally`` in the coroutine: a task cancelled before it
        first runs (the loop ending, the group retired in the turn that started it) never enters
        its coroutine, and the frames held behind it were never answered, their member held for good."""
        task = self._running_loop().create_task(reading)
        self._looking.add(task)

        def done(task: asyncio.Task[T]) -> None:
            self._looking.discard(task)
            ended(task)

        task.add_done_callback(done)

    def _unchecked(self, task: asyncio.Task[Any]) -> NotPersisted | None:
        """Why a read or look-up gave no answer (``None``: it did), which a frame whose id it was to
        check is refused with, to be sent again: not taken as new, not as a repeat."""
        if task.cancelled():
            return self._stopped()
        exc = task.exception()
        return None if exc is None else NotPersisted(f"the frame's id could not be checked: {type(exc).__name__}")

    def _stopped(self) -> NotPersisted:
        """What a frame is refused with whose read or look-up was cancelled: at the group's retire
        (:meth:`server.ticks.Ticks.retire`: another worker serves it), or at the loop's end."""
        if self.retired:
            return NotAuthority(f"group {self.id} is served by another worker now")
        return NotPersisted("the frame's id could not be checked: the server is stopping")

    def _received(
        self,
        future: asyncio.Future[list[int]],
        participant: str,
        channel: str,
        payload: Any,
        client_id: str | None,
        bot: bool,
        *,
        new: bool = False,
    ) -> None:
        """A frame that waited for a look-up, received now: ``future`` settles as its answer does.
        What the group refuses it with (an invalid decision, a period ended meanwhile, a game that
        fails on it) is its answer, not the look-up task's: the frames after it are received all
        the same. A game that fails on it is answered and logged as when nothing holds the frame
        (:func:`server.hooks.frame_failed`, the same line and throttle): ``game_error``, not the
        game's own exception (which a connection answers ``internal``, the failure logged nowhere)."""
        try:
            answered = self.receive(participant, channel, payload, client_id, bot=bot, new=new)
        except RefusedAction as exc:
            refuse(future, exc)
            return
        except Exception as exc:  # a fault in a game's hook: logged as when nothing held the frame
            frame_failed(self.id, self.game, participant, exc)
            failed = GameFailed(f"the game failed on this frame: {type(exc).__name__}")
            refuse(future, failed)
            return
        follow(answered, future)

    def _stored_before(
        self,
        exc: Unstorable,
        events: list[Event],
        client_id: str,
        future: asyncio.Future[list[int]],
        settled: Callable[[list[int] | None], None] | None,
    ) -> None:
        """A member's frame whose write was refused alone (``exc``; the group is back at what is
        stored): if the database holds a frame of the member's with ``client_id``, this one repeats
        it and is answered with its ``seq``, as any repeated id is; else it is refused with ``exc``.

        A last guard: the ids here are read when the member first comes (:meth:`ids_needed`), and
        should they miss a frame stored before (stored, its ack lost, sent again here), the
        key of the database's ``client_ids`` refuses it. A look-up that gives no answer (cancelled, or the
        database gone) leaves that unknown: the frame is refused with :class:`NotPersisted`, to be
        sent again, as a frame whose read or look-up failed is (:meth:`_unchecked`)."""
        lookup, participant = self._lookup, events[own_event(events)].participant

        def refuse_it() -> None:  # (as server.live.LiveGroup.act's failed does)
            self._unstorable(exc, any(ev.tick is not None for ev in events))
            if not future.done():
                future.set_exception(exc)
            if settled is not None:
                settled(None)

        if lookup is None or participant is None:
            refuse_it()
            return

        def looked(task: asyncio.Task[int | None]) -> None:
            failed = self._unchecked(task)
            if failed is not None:  # not known (the group retired, the loop ending, the database
                # gone): refused to be sent again (not_persisted), not as unstorable (game_error)
                if not task.cancelled():  # what fell due before it, in its write, is applied again
                    self._reschedule()
                refuse(future, failed)
                if settled is not None:
                    settled(None)
                return
            seq = task.result()
            if seq is None:
                refuse_it()
                return
            self._reschedule()  # what fell due before it, in its write, is applied again now
            if not future.done():
                future.set_result([seq])
            if settled is not None:
                settled([seq])

        self._start(lookup(self.member_ids[participant], client_id), looked)
