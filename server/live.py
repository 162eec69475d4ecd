"""Live groups: the one place where each group's state changes, in order (the group's authority).

A :class:`LiveGroup` wraps a pure :class:`groups.DecisionGroup`. Every action runs the core
synchronously on the event loop (so actions of one group are ordered), hands the events to the
writer, and publishes them to the group's topic only from the writer's commit callback. It keeps
the *committed* state beside the core's: ``hello`` is built from it, so a participant never sees
anything that is not stored, and a failed commit rolls the core back to it. Each group's next
deadline is one ``loop.call_at`` on the absolute time the core names.

A group has one authority at a time: in one process, that process; in a cluster, the worker
that holds its lease (``server.cluster``), whose writes carry the lease's fencing epoch. The
members' connections may be anywhere: a group knows each member's current connection only by
its worker and id (to close the older one when the participant connects again), and the
connections get its frames through the hub (``server.views``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from math import floor
from time import perf_counter
from typing import Any

import orjson

from groups import RESULT, STATE, DecisionGroup, Event, GroupState, Timing

from .clientids import MAYBE, ClientIds
from .control import Control
from .exceptions import NotAuthority, NotPersisted, Unstorable
from .futures import consume, own_event
from .hooks import SLOW_ACTION, Greeting, HookWatch
from .hub import Hub, group_topic, monitor_presence_topic, monitor_topic
from .lookups import Held, LookUps
from .presence import CloseMember, Presence, Seats
from .storage import ConnectionChange, GroupSpec, GroupUpdate, NewEvent, NewResult, NewTick, Write
from .ticks import RETRY_AFTER, Clock, Ticks
from .wire import encode, event_frame, ms

log = logging.getLogger("synclab.live")

#: told (experiment id, participant ids) once the last block's period has ended and is stored
RunEnded = Callable[[int, list[int]], None]


class LiveGroup(Ticks, Presence, Control, LookUps, Greeting):
    """One group's authority in this process: its state, and the whole path of a decision, kept in
    this class (``receive``, ``act``, ``_write``, the commit callbacks, ``_to_monitors``,
    ``_reschedule``). Its other parts share that state, a module each: the clock (``server.ticks``),
    the members coming and going (``server.presence``), the experimenter's actions
    (``server.control``), old client ids looked up (``server.lookups``), what a new connection sees
    (``server.hooks``)."""

    def __init__(
        self,
        spec: GroupSpec,
        game: type[DecisionGroup],
        writer: Any,
        hub: Hub,
        clock: Clock,
        *,
        epoch: int | None = None,
        close_member: CloseMember | None = None,
        fenced: Callable[[int], None] | None = None,
        run_ended: RunEnded | None = None,
        lookup: Callable[[int, str], Coroutine[Any, Any, int | None]] | None = None,
        stored_ids: Callable[[int], Coroutine[Any, Any, list[tuple[str, int]]]] | None = None,
    ) -> None:
        self.spec = spec
        self.id = spec.group_id
        self.experiment_id = spec.experiment_id
        self.experiment_code = spec.experiment_code
        self.game = spec.game
        self.block_index = spec.block_index
        self.member_ids = dict(spec.member_ids)
        self.session_ids = dict(spec.session_ids)
        self.topic = group_topic(self.id)
        #: the experiment's monitor feeds (made once: looked up at every write)
        self._monitor_topic = monitor_topic(self.experiment_id)
        self._presence_topic = monitor_presence_topic(self.experiment_id)
        timing = Timing(spec.period_length, spec.num_subperiods, spec.rate_limit)
        self.core = game(spec.members, timing=timing, config=spec.config, state=spec.state())
        self.committed = self.core.state.copy()
        #: what the participant page calls the game: its ``title``, or its name in words
        self.title = game.title or (game.name or game.__name__).replace("_", " ").capitalize()
        self.last_seq: int = int(spec.group["last_seq"] or 0)
        #: the last ``state`` event: ``{"seq", "ts", "value"}``, repeated to every new connection
        self.last_state = spec.last_state
        #: per member: client frame id -> its seq, or the future of a frame still being stored
        #: (older ids kept compactly, a repeat of one looked up with ``lookup``: see :mod:`.clientids`)
        self.client_ids: dict[str, ClientIds] = {}
        #: ``lookup(participant id, client id)``: the stored frame's ``seq`` (``None``: none; without
        #: it every id is kept as it is); ``stored_ids(participant id)``: their ids, read once they are here
        self._lookup, self._stored_ids = lookup, stored_ids
        #: the look-ups and reads of client ids under way (``server.lookups``), referenced until they end
        self._looking: set[asyncio.Task[Any]] = set()
        #: per member whose ids are read or frame looked up: its frames since, received in order after it
        self._held: dict[str, list[Held]] = {}
        #: per member: its current connection's worker and id (the newest replaces the older)
        self.connections: dict[str, tuple[str, str]] = {}
        #: the fencing epoch of this authority's lease (``None`` in one process: nothing to check)
        self.epoch = epoch
        #: set once another worker may have taken the group over: nothing is computed any more
        self.retired = False
        self._close_member = close_member
        #: the server-side bots of its seats (set by the router); told who comes and goes
        self.standins: Seats | None = None
        #: told (with the group's id) when a write was fenced: another worker serves the group
        self._fenced = fenced
        self._run_ended = run_ended
        self._writer = writer
        self._hub = hub
        # stored times have microseconds: a frame's ts must equal what a restart reads back
        self._clock: Clock = lambda: floor(clock() * 1e6 + 0.5) / 1e6  # (to_microseconds written out: a call less)
        self._timer: asyncio.TimerHandle | None = None
        self._deadline: float | None = None
        #: the loop the group runs on, once known (``asyncio.get_running_loop`` asks the kernel
        #: for the pid on every call in Python 3.11: a few per decision added up)
        self._loop: asyncio.AbstractEventLoop | None = None
        #: after a failed write, not before this: the clock's next try (see :data:`RETRY_AFTER`)
        self._retry_at: float | None = None
        #: ticks in a row the game failed on (see :meth:`server.ticks.Ticks._tick`)
        self._tick_failures = 0
        #: where the game held the loop too long, where it failed in a hook the server calls alone
        self.watch = HookWatch(self.id, type(self.core).__name__, self.game)
        #: set at shutdown: no timer is set any more, so nothing new is computed
        self._closed = False
        #: writes submitted and not stored (or failed) yet
        self._pending = 0
        #: a first-block group of an online experiment: its members wait in a lobby that counts them
        self.has_lobby = spec.online is not None and spec.block_index == 0
        #: told after each member's arrival (``server.lobby`` arms the lobby's timeout from it)
        self.on_arrival: Callable[[LiveGroup], None] | None = None
        self._reschedule()

    def act(
        self,
        action: Callable[..., list[Event]],
        *args: Any,
        client_id: str | None = None,
        connection: ConnectionChange | None = None,
        bot: bool = False,
        settled: Callable[[list[int] | None], None] | None = None,
    ) -> asyncio.Future[list[int]]:
        """Run ``action(*args)`` on the core, store its events, publish them once stored.

        Raises what the core raises (a refused action changes nothing). The future resolves
        to the events' ``seq``s after the commit, or fails with :class:`NotPersisted` (with
        :class:`NotAuthority` once this process no longer acts for the group). With a
        ``client_id`` it resolves to the ``seq`` of that client's own event alone: the write may
        begin with ticks that fell due before it (applied first, see the core's ``carried``); or
        to the stored one's, when the database refused the write for holding that id already.

        ``settled`` is called at once when a future returned pending is settled: with its
        ``seq``s, or ``None`` when it failed (a future's own callbacks wait for a turn of the loop).
        """
        if self.retired:
            refused: asyncio.Future[list[int]] = self._running_loop().create_future()
            refused.set_exception(NotAuthority(f"group {self.id} is served by another worker now"))
            return refused
        began = perf_counter()  # the one cost of watching for slow games: a pair per action
        try:
            events = action(*args)
        except BaseException:
            took = perf_counter() - began
            if took > SLOW_ACTION:
                self.watch.slow(took)
            if self.core.carried:  # what fell due before the refusal is stored all the same
                self.act(self.core.take_carried).add_done_callback(consume)
            else:
                self._reschedule()
            raise
        took = perf_counter() - began
        if took > SLOW_ACTION:
            self.watch.slow(took)
        future: asyncio.Future[list[int]] = self._running_loop().create_future()
        if not events and connection is None:
            future.set_result([])
            self._reschedule()
            return future
        now = self.core.now
        snapshot = self.core.state.copy()
        write = self._write(events, now, snapshot, client_id, connection, bot)

        def committed(stored: Write) -> None:
            self._pending -= 1
            self.committed = snapshot
            for due in stored.ticks:  # a tick stored: the game's failures in a row start from 0 again
                self._tick_failures = 0
                if due.late:  # (once stored: a tick tried again is not reported at each try)
                    log.warning("group %s: %s %d ran %.3f s late", self.id, due.kind, due.index, due.actual_at - due.scheduled_at)
            if not self._tick_failures:  # (a failing game's wait is kept, whatever else is stored)
                self._retry_at = None
            prev, ended = self.last_seq, False
            for ev, seq in zip(events, stored.seqs, strict=True):
                self.last_seq = seq
                if ev.channel == STATE:
                    self.last_state = {"seq": seq, "ts": now, "value": ev.payload}
                    ended = ended or ev.payload == "period_end"
                if ev.to is None or ev.to:  # NOBODY (empty): recorded, not sent
                    self._hub.publish(self.topic, event_frame(ev.channel, ev.payload, seq, now), ev.to, seq=seq, prev=prev)
                    prev = seq
            # with a client id, the client's own event: the only one the core stamps with it
            seqs = stored.seqs if client_id is None else [stored.seqs[own_event(events)]]
            if not future.done():  # (its awaiter may have been cancelled: the rest runs all the same)
                future.set_result(seqs)
            if settled is not None:
                settled(seqs)
            if connection is not None or self._hub.listening(self._monitor_topic):  # (nobody watches, mostly)
                self._to_monitors(events, stored, now, connection)
            if ended and self._run_ended is not None and self.spec.last_block:  # the members' runs are over: their scores go back
                self._run_ended(self.experiment_id, list(self.member_ids.values()))

        def failed(exc: NotPersisted) -> None:
            self._pending -= 1
            self.core.restore(self.committed)
            if isinstance(exc, NotAuthority):  # another worker took the group over: stop at once
                self.retire()
                if self._fenced is not None:
                    self._fenced(self.id)
            elif isinstance(exc, Unstorable):  # the game's fault, not the database's: not tried at once
                if client_id is not None and connection is None:  # unless its frame was stored before
                    return self._stored_before(exc, events, client_id, future, settled)  # (server.lookups)
                self._unstorable(exc, any(ev.tick is not None for ev in events))
                if connection is not None and events:  # a member comes and goes all the same (see _present)
                    self.act(list, connection=connection).add_done_callback(consume)
            else:
                self._retry_at = self._clock() + RETRY_AFTER
                self._reschedule()
            if not future.done():
                future.set_exception(exc)
            if settled is not None:
                settled(None)

        self._pending += 1
        self._writer.submit(write, committed, failed)
        self._reschedule()
        return future

    def _to_monitors(self, events: list[Event], stored: Write, now: float, connection: ConnectionChange | None) -> None:
        """Tell the experiment's monitors what was stored: one frame per write, never awaited."""
        topic = self._monitor_topic
        if events and self._hub.listening(topic):
            at, lat = ms(now), round((self._clock() - now) * 1000, 3)
            rows = [
                {"seq": seq, "ts": at, "group": self.id, "participant": ev.participant, "channel": ev.channel, "value": ev.payload,
                 "latency": lat, "bot": new.bot, "recipient": ev.recipient}
                for ev, seq, new in zip(events, stored.seqs, stored.events, strict=True)
            ]
            self._hub.publish(topic, orjson.dumps(rows).decode())
        presence = self._presence_topic
        if connection is not None and self._hub.listening(presence):
            code = next((c for c, i in self.member_ids.items() if i == connection.participant_id), None)
            when = connection.opened if connection.opened is not None else connection.closed or now
            self._hub.publish(presence, encode("connection", {
                "participant": code,
                "group": self.id,
                # a replaced connection's close leaves the participant connected through the newer one
                "connected": connection.opened is not None or code in self.connections,
                "at": ms(when),
                "user_agent": connection.user_agent,
                "close_code": connection.close_code,
            }))

    def _write(
        self,
        events: list[Event],
        now: float,
        snapshot: GroupState,
        client_id: str | None,
        connection: ConnectionChange | None,
        bot: bool = False,
    ) -> Write:
        # one pass over the events (a write is made at every action): the rows, and the results
        # and ticks among them
        group_id, member_ids = self.id, self.member_ids
        stored: list[NewEvent] = []
        scored: list[NewResult] = []
        timed: list[NewTick] = []
        for i, ev in enumerate(events):
            if ev.participant is None:  # every field given, no keyword: the cheaper call (a decision's group_decisions)
                alone = None if ev.to is None else ev.recipient  # the one member it went to (`to` read first: the group's, mostly)
                stored.append(NewEvent(ev.channel, ev.payload, now, group_id, None, None, False, None if alone is None else member_ids[alone]))
                if ev.channel == RESULT and alone is not None:
                    p = ev.payload
                    scored.append(NewResult(i, self.session_ids[alone], p["subperiod"], p["decision"], float(p["score"])))
            else:
                stored.append(NewEvent(ev.channel, ev.payload, now, group_id, member_ids[ev.participant], client_id, bot))
            due = ev.tick
            if due is not None:
                snap = ev.payload["group_decisions"] if isinstance(ev.payload, dict) else dict(snapshot.decisions)
                timed.append(NewTick(group_id, due.kind, due.index, due.scheduled_at, due.actual_at, due.late, snap))
        group = GroupUpdate(
            self.id,
            snapshot.phase._value_,  # (an enum's `value` is a property that runs in Python: a write is made at every action)
            snapshot.started_at,
            snapshot.ends_at,
            snapshot.ended_at,
            snapshot.subperiod,
            snapshot.decisions,
            snapshot.vars,
            snapshot.clock(copied=False),  # the snapshot is this write's own
        )
        statuses = self.standins.statuses(events) if self.standins is not None else []
        return Write(self.experiment_id, stored, group, connection, scored, timed, statuses, epoch=self.epoch)

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
    ) -> asyncio.Future[list[int]]:
        """A client frame on a game channel (``bot``: a stand-in's); a repeated ``client_id`` is answered, not stored.

        ``new``: the database was asked, and holds no frame with ``client_id`` (see :meth:`_look_up`).

        ``answer`` is called once with the future when it is settled: at the commit itself (with
        the frames of the commit's batch, see :func:`server.frames.corked`), not a turn of the
        loop later as a future's own callbacks are; at once if it is settled already.
        """
        held = self._held.get(participant)
        if held is not None and not new:  # behind a look-up: a member's frames keep their order
            waiting: asyncio.Future[list[int]] = self._running_loop().create_future()
            if answer is not None:
                waiting.add_done_callback(answer)
            held.append((channel, payload, client_id, bot, waiting))
            return waiting
        ids: ClientIds | None = None
        known: int | asyncio.Future[Any] | object | None = None
        if client_id is not None:  # (a stand-in's frame has none and makes no ids)
            ids = self.client_ids.get(participant)
            if ids is None:  # their first frame here: their ids stored before are read first (server.lookups)
                self.ids_needed(participant)
                return self.receive(participant, channel, payload, client_id, bot=bot, answer=answer)
            known = None if new else ids.get(client_id)
            if known is MAYBE:  # an old id, or one the filter mistakes for it: the database knows
                return self._look_up(ids, participant, channel, payload, client_id, bot, answer)
        if known is not None and isinstance(known, asyncio.Future):  # (None, a new id, nearly always: not asked)
            if answer is not None:
                known.add_done_callback(answer)
            return known
        if known is not None and isinstance(known, int):
            done: asyncio.Future[list[int]] = self._running_loop().create_future()
            done.set_result([known])
            if answer is not None:
                answer(done)
            return done
        settle = None
        if client_id is not None or answer is not None:

            def settle(seqs: list[int] | None) -> None:
                if ids is not None and client_id is not None:
                    if seqs:
                        ids.stored(client_id, seqs[0])
                    else:
                        ids.forget(client_id)  # not stored: a retry may try again
                if answer is not None:
                    answer(future)

        future = self.act(
            self.core.receive, participant, channel, payload, self._clock(),  # (no lambda made per frame)
            client_id=client_id, bot=bot, settled=settle,
        )
        if future.done():  # settled without a write (nothing to store, or no longer this group's authority)
            if answer is not None:
                answer(future)
        elif ids is not None and client_id is not None:  # until settle() replaces it with the seq
            ids.under_way(client_id, future)
        return future

    def _reschedule(self) -> None:
        if self._closed:
            return
        deadline = self.core.next_deadline()
        if deadline is not None and self._retry_at is not None:
            # a write just failed (the database away): what fell due is tried again, not at once
            deadline = max(deadline, self._retry_at)
        if deadline == self._deadline:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._deadline = deadline
        if deadline is not None:
            loop = self._running_loop()
            # absolute: the wall-clock deadline mapped onto the loop's clock now, never chained
            self._timer = loop.call_at(loop.time() + max(0.0, deadline - self._clock()), self._due)

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop
