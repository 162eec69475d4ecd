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
import math
from collections.abc import Awaitable, Callable
from time import perf_counter
from typing import Any, Protocol

import orjson

from groups import (
    GAME_FAULT,
    NOBODY,
    RESULT,
    STATE,
    DecisionGroup,
    Event,
    GameFault,
    GroupState,
    InvalidState,
    Phase,
    RefusedAction,
    Timing,
    describe_fault,
    shown,
)

from .clientids import MAYBE, ClientIds
from .exceptions import WS_4000_REPLACED, NotAuthority, NotPersisted, Unstorable
from .hub import Hub, group_topic, monitor_presence_topic, monitor_topic
from .storage import (
    ConnectionChange,
    GroupSpec,
    GroupUpdate,
    NewEvent,
    NewResult,
    NewTick,
    Write,
    to_epoch,
)
from .throttle import LogThrottle
from .wire import encode, ms

log = logging.getLogger("synclab.live")
Clock = Callable[[], float]
ACTIONS = ("start", "pause", "resume", "end")
#: the channel of an experimenter's action, recorded (not sent) before what it caused
CONTROL = "control"
#: the channel of the notice that the experiment is over (``{"status"}``, not stored): the members'
#: pages show their final screen, whatever block they were in (see ``LiveGroups.control``)
EXPERIMENT = "experiment"
#: the channel of the lobby's count (``{"present", "needed"}``, not stored) and of its release (stored)
LOBBY = "lobby"
#: seconds before a tick whose write failed (the database away) is tried again
RETRY_AFTER = 0.5
#: the longest wait between tries of a tick the game failed on (each wait twice the last, from
#: :data:`RETRY_AFTER`): a game that raises on every tick is not run in a loop
GAME_RETRY_MAX = 10.0
#: seconds past its period's end after which a group whose game still fails on its tick is ended
#: without the game (:meth:`groups.DecisionGroup.end_faulted`), as the experimenter's ``end`` does
GAME_FAULT_END_AFTER = 30.0
#: seconds one action of a group may hold the event loop (the game's hooks, mostly) before it is
#: logged: every group of the process waits meanwhile
SLOW_ACTION = 0.05
#: seconds between two such logs of one group and kind (the slow ones between are counted in the next)
SLOW_LOG_EVERY = 5.0
#: the kinds of those logs: where the game held the loop. An action runs several hooks (not told
#: apart: timing each would cost at every decision); the others, one hook the server calls alone
IN_ACTION = "one action"
IN_BOT_DECISION = "bot_decision (a stand-in's decision)"
IN_HELLO_PAYOFF = "payoff (the score so far of a hello)"
IN_ROLE = "role (a member's role in a hello)"
#: seconds between two log lines of one group's game failing in one such hook the server calls
#: alone, in one way (the failures between are counted in the next line)
HOOK_FAULTS_LOG_EVERY = 5.0
#: the (hook, exception type) pairs of a group kept at most; past it the oldest is forgotten (logged anew)
HOOK_FAULTS_KEPT = 16


#: close a participant's connection ``conn`` on ``worker`` with ``code`` and ``reason``
CloseMember = Callable[[str, str, int, str], None]
#: told (experiment id, participant ids) once the last block's period has ended and is stored
RunEnded = Callable[[int, list[int]], None]


class Seats(Protocol):
    """Who plays each seat besides its human (``server.standins``), as the group tells it."""

    def connected(self, participant: str) -> None: ...

    def disconnected(self, participant: str) -> None: ...

    def statuses(self, events: list[Event]) -> list[tuple[int, str]]: ...

    def stop(self) -> None: ...

    def idle(self) -> bool:
        """Whether no bot plays or is about to (the group may leave memory)."""


def _state_from_row(row: dict[str, Any]) -> GroupState:
    state = GroupState(
        phase=Phase(row["phase"]),
        decisions=dict(row["decisions"] or {}),
        started_at=to_epoch(row["started_at"]),
        ends_at=to_epoch(row["ends_at"]),
        ended_at=to_epoch(row["ended_at"]),
        subperiod=int(row["subperiod"] or 0),
        vars=dict(row["vars"] or {}),
    )
    state.set_clock(row.get("clock"))
    return state


class LiveGroup:
    """One group's authority in this process."""

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
        lookup: Callable[[int, str], Awaitable[int | None]] | None = None,
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
        self.core = game(
            spec.members,
            timing=Timing(spec.period_length, spec.num_subperiods, spec.rate_limit),
            config=spec.config,
            state=_state_from_row(spec.group),
        )
        self.committed = self.core.state.copy()
        #: what the participant page calls the game: its ``title``, or its name in words
        self.title = game.title or (game.name or game.__name__).replace("_", " ").capitalize()
        self.last_seq: int = int(spec.group["last_seq"] or 0)
        #: the last ``state`` event: ``{"seq", "ts", "value"}``, repeated to every new connection
        self.last_state = spec.last_state
        #: per member: client frame id -> its seq, or the future of a frame still being stored
        #: (older ids kept compactly, a repeat of one looked up with ``lookup``: see :mod:`.clientids`)
        self.client_ids: dict[str, ClientIds] = {}
        #: ``lookup(participant id, client id)``: the stored frame's ``seq`` (``None``: none);
        #: without it every id is kept as it is
        self._lookup = lookup
        #: the look-ups of repeated old ids under way (kept referenced until they end)
        self._looking: set[asyncio.Task[None]] = set()
        #: per member whose frame is being looked up: its frames since, received in order after it
        self._held: dict[str, list[_Held]] = {}
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
        self._clock: Clock = lambda: to_microseconds(clock())
        self._timer: asyncio.TimerHandle | None = None
        self._deadline: float | None = None
        #: the loop the group runs on, once known (``asyncio.get_running_loop`` asks the kernel
        #: for the pid on every call in Python 3.11: a few per decision added up)
        self._loop: asyncio.AbstractEventLoop | None = None
        #: after a failed write, not before this: the clock's next try (see :data:`RETRY_AFTER`)
        self._retry_at: float | None = None
        #: ticks in a row the game failed on (see :meth:`_tick`)
        self._tick_failures = 0
        #: per kind (``IN_…``): when (``perf_counter``) the game was last logged slow, and how many
        #: slow ones were not logged since
        self._slow_hooks = LogThrottle(SLOW_LOG_EVERY, 4)
        #: per hook the server calls alone and exception type: the game's failures there, logged
        #: as :meth:`hook_failed` says
        self._hook_faults = LogThrottle(HOOK_FAULTS_LOG_EVERY, HOOK_FAULTS_KEPT)
        #: set at shutdown: no timer is set any more, so nothing new is computed
        self._closed = False
        #: writes submitted and not stored (or failed) yet
        self._pending = 0
        #: a first-block group of an online experiment: its members wait in a lobby that counts them
        self.has_lobby = spec.online is not None and spec.block_index == 0
        #: told after each member's arrival (``server.lobby`` arms the lobby's timeout from it)
        self.on_arrival: Callable[[LiveGroup], None] | None = None
        self._reschedule()

    # ------------------------------------------------------------------ actions

    def act(
        self,
        action: Callable[[], list[Event]],
        *,
        client_id: str | None = None,
        connection: ConnectionChange | None = None,
        bot: bool = False,
        settled: Callable[[list[int] | None], None] | None = None,
    ) -> asyncio.Future[list[int]]:
        """Run ``action`` on the core, store its events, publish them once stored.

        Raises what the core raises (a refused action changes nothing). The future resolves
        to the events' ``seq``s after the commit, or fails with :class:`NotPersisted` (with
        :class:`NotAuthority` once this process no longer acts for the group). With a
        ``client_id`` it resolves to the ``seq`` of that client's own event alone: the write may
        begin with ticks that fell due before it (applied first, see the core's ``carried``).

        ``settled`` is called at once when a future returned pending is settled: with its
        ``seq``s, or ``None`` when it failed (a future's own callbacks wait for a turn of the loop).
        """
        if self.retired:
            refused: asyncio.Future[list[int]] = self._running_loop().create_future()
            refused.set_exception(NotAuthority(f"group {self.id} is served by another worker now"))
            return refused
        began = perf_counter()  # the one cost of watching for slow games: a pair per action
        try:
            events = action()
        except BaseException:
            took = perf_counter() - began
            if took > SLOW_ACTION:
                self._slow(took)
            if self.core.carried:  # what fell due before the refusal is stored all the same
                self.act(self.core.take_carried).add_done_callback(consume)
            else:
                self._reschedule()
            raise
        took = perf_counter() - began
        if took > SLOW_ACTION:
            self._slow(took)
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
            prev = self.last_seq
            for ev, seq in zip(events, stored.seqs, strict=True):
                self.last_seq = seq
                if ev.channel == STATE:
                    self.last_state = {"seq": seq, "ts": now, "value": ev.payload}
                if ev.to is None or ev.to:  # NOBODY (empty): recorded, not sent
                    frame = encode(ev.channel, ev.payload, seq=seq, ts=now)
                    self._hub.publish(self.topic, frame, ev.to, seq=seq, prev=prev)
                    prev = seq
            # with a client id, the client's own event: the only one the core stamps with it
            seqs = stored.seqs if client_id is None else [stored.seqs[_own_event(events)]]
            if not future.done():  # (its awaiter may have been cancelled: the rest runs all the same)
                future.set_result(seqs)
            if settled is not None:
                settled(seqs)
            self._to_monitors(events, stored, now, connection)
            if self._run_ended is not None and self.spec.last_block and any(
                ev.channel == STATE and ev.payload == "period_end" for ev in events
            ):  # the members' runs are over: their scores go back where they came from
                self._run_ended(self.experiment_id, list(self.member_ids.values()))

        def failed(exc: NotPersisted) -> None:
            self._pending -= 1
            self.core.restore(self.committed)
            if isinstance(exc, NotAuthority):  # another worker took the group over: stop at once
                self.retire()
                if self._fenced is not None:
                    self._fenced(self.id)
            elif isinstance(exc, Unstorable):  # the game's fault, not the database's: not tried at once
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

    def _slow(self, took: float, where: str = IN_ACTION) -> None:
        """The game held the event loop ``took`` seconds in ``where`` (one of the ``IN_…``):
        logged, at most every :data:`SLOW_LOG_EVERY` s for each kind."""
        more = self._slow_hooks.due(where, perf_counter())
        if more is None:
            return
        log.warning(
            "group %s: the game %s (%s) held the event loop %.0f ms in %s (over %.0f ms: every group "
            "of this process waited)%s; its hooks must be quick (docs/writing-a-game.md)",
            self.id, type(self.core).__name__, self.game, took * 1000, where, SLOW_ACTION * 1000,
            f"; {more} more since the last such warning" if more > 0 else "",
        )

    def timed(self, began: float, where: str) -> None:
        """A hook the server called outside an action (``where``, one of the ``IN_…``) ended; it
        began at ``began`` (``perf_counter``): logged as a slow action is, if it held the loop as long."""
        took = perf_counter() - began
        if took > SLOW_ACTION:
            self._slow(took, where)

    def hook_failed(self, exc: Exception, where: str, instead: str) -> None:
        """The game failed with ``exc`` in a hook the server called outside an action (``where``,
        one of the ``IN_…``), and the server did ``instead``. Such a hook runs at every hello or at
        every decision of a stand-in: the first failure of a kind (hook and exception type) in a
        while is logged with its traceback (none for a :class:`groups.GameFault`: the core's
        refusal of what the hook gave, which its message names), then at most one line every
        :data:`HOOK_FAULTS_LOG_EVERY` s counting those since, as a game failing on the members'
        frames is (``server.connection``)."""
        kind = type(exc).__name__
        skipped = self._hook_faults.due((where, kind), perf_counter())
        if skipped is None:
            return
        game = f"the game {type(self.core).__name__} ({self.game})"
        if skipped < 0:
            log.error("group %s: %s failed in %s: %s: %s; %s", self.id, game, where, kind, exc, instead,
                      exc_info=None if isinstance(exc, GameFault) else exc)
            return
        log.error("group %s: %s failed in %s again: %s: %s; %s (%d more such failures since the last line)",
                  self.id, game, where, kind, exc, instead, skipped)

    def _to_monitors(self, events: list[Event], stored: Write, now: float, connection: ConnectionChange | None) -> None:
        """Tell the experiment's monitors what was stored: one frame per write, never awaited."""
        topic = self._monitor_topic
        if events and self._hub.listening(topic):
            at, lat = ms(now), round((self._clock() - now) * 1000, 3)
            rows = [
                {"seq": seq, "ts": at, "group": self.id, "participant": ev.participant,
                 "channel": ev.channel, "value": ev.payload, "latency": lat, "bot": new.bot}
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
            if ev.participant is None:
                stored.append(NewEvent(ev.channel, ev.payload, now, group_id))
                if ev.channel == RESULT and ev.to:
                    p = ev.payload
                    session = self.session_ids[next(iter(ev.to))]
                    scored.append(NewResult(i, session, p["subperiod"], p["decision"], float(p["score"])))
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
        ids = self.client_ids.get(participant)
        if ids is None:
            ids = self.client_ids[participant] = ClientIds(forgets=self._lookup is not None)
        known = None if client_id is None or new else ids.get(client_id)
        if known is MAYBE:  # an old id, or one the filter mistakes for it: the database knows
            assert client_id is not None
            return self._look_up(ids, participant, channel, payload, client_id, bot, answer)
        if isinstance(known, asyncio.Future):
            if answer is not None:
                known.add_done_callback(answer)
            return known
        if isinstance(known, int):
            done: asyncio.Future[list[int]] = self._running_loop().create_future()
            done.set_result([known])
            if answer is not None:
                answer(done)
            return done
        settle = None
        if client_id is not None or answer is not None:

            def settle(seqs: list[int] | None) -> None:
                if client_id is not None:
                    if seqs:
                        ids.stored(client_id, seqs[0])
                    else:
                        ids.forget(client_id)  # not stored: a retry may try again
                if answer is not None:
                    answer(future)

        future = self.act(
            lambda: self.core.receive(participant, channel, payload, self._clock()),
            client_id=client_id, bot=bot, settled=settle,
        )
        if future.done():  # settled without a write (nothing to store, or no longer this group's authority)
            if answer is not None:
                answer(future)
        elif client_id is not None:  # until settle() replaces it with the seq
            ids.under_way(client_id, future)
        return future

    def load_client_ids(self, participant: str, stored: list[tuple[str, int]]) -> None:
        """A member's ids stored before this group was loaded (oldest first), unless known already."""
        if participant not in self.client_ids:
            self.client_ids[participant] = ClientIds(stored, forgets=self._lookup is not None)

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
        held: list[_Held] = []
        self._held[participant] = held

        async def look() -> None:
            try:
                try:
                    seq = await lookup(self.member_ids[participant], client_id)
                except Exception as exc:  # storage halted, the database gone: the client may retry
                    future.set_exception(NotPersisted(f"the frame's id could not be checked: {type(exc).__name__}"))
                    return
                if seq is not None:
                    ids.stored(client_id, seq)
                    future.set_result([seq])
                    return
                _follow(self.receive(participant, channel, payload, client_id, bot=bot, new=True), future)
            finally:
                del self._held[participant]
                for later_channel, later_payload, later_id, later_bot, waiting in held:  # in order; a
                    # later look-up holds the rest again
                    _follow(self.receive(participant, later_channel, later_payload, later_id, bot=later_bot), waiting)

        task = self._running_loop().create_task(look())
        self._looking.add(task)
        task.add_done_callback(self._looking.discard)
        return future

    def connect(
        self, participant: str, connection: ConnectionChange | None, *, worker: str = "", conn: str = ""
    ) -> asyncio.Future[list[int]]:
        """The participant's connection ``conn`` on ``worker`` is its current one; an older one is closed."""
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
        present (absent) all the same and the connection is stored. Its socket was closed with
        1011 and its page came back again and again, its close not stored."""
        step = self.core.connect if arriving else self.core.disconnect
        try:
            return self.act(lambda: step(participant, self._clock()), connection=connection)
        except (RefusedAction, InvalidState):
            raise
        except Exception as exc:
            log.warning("group %s: the game %s failed when %s %s (%s: %s); counted all the same",
                        self.id, type(self.core).__name__, participant, "arrived" if arriving else "left",
                        type(exc).__name__, exc)
            if arriving:
                self.core.connected.add(participant)
            else:
                self.core.connected.discard(participant)
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
                _follow(done, ended)
                return
            now = self._clock()  # the game made the end's write unstorable: ended without it too
            try:
                _follow(self.act(lambda: [record, *self._end_faulted(exc, "end", now)]), ended)
            except Exception as again:  # (it ended meanwhile, say)
                ended.set_exception(again)

        ending.add_done_callback(stored)
        return ended

    def _end_faulted(self, exc: Exception, during: str, now: float) -> list[Event]:
        """The events of the period's end without the game, which failed with ``exc`` (logged)."""
        fault = describe_fault(self.core, exc, during)
        self._tick_failures = 0
        log.error(
            "group %s: the game %s failed on the %s (%s: %s: %s); the period is ended without it",
            self.id, type(self.core).__name__, "experimenter's end" if during == "end" else "period's end, long past",
            fault["hook"] or "no hook", fault["error"], fault["message"],
        )
        return self.core.end_faulted(now, fault)

    def pause(self) -> asyncio.Future[list[int]]:
        return self.act(lambda: self.core.pause(self._clock()))

    def resume(self) -> asyncio.Future[list[int]]:
        return self.act(lambda: self.core.resume(self._clock()))

    # ------------------------------------------------------------------ what a new connection sees

    def hello(self, participant: str) -> dict[str, Any]:
        """The whole committed state, for the first frame of a connection (and of a new block)."""
        state = self.committed
        period = None
        if state.started_at is not None:
            period = {
                "started_at": ms(state.started_at),
                "ends_at": None if state.ends_at is None else ms(state.ends_at),
                "subperiod": state.subperiod if self.core.timing.num_subperiods else None,
                "num_subperiods": self.core.timing.num_subperiods,
                "paused_for": state.paused_for,
                "ended_at": None if state.ended_at is None else ms(state.ended_at),
                "paused_at": None if state.paused_at is None else ms(state.paused_at),
            }
        now = self._clock()
        earned = self._earned(participant, now, state) if participant in self.core.members else 0.0
        return {
            "participant": participant,
            "experiment": self.experiment_code,
            "game": self.game,
            "title": self.title,
            "config": self.core.config,
            "group": self.id,
            "members": list(self.core.members),
            "role": self._role(participant),
            "block": self.block_index,
            "num_blocks": self.spec.num_blocks,
            "phase": state.phase.value,
            "group_decisions": dict(state.decisions) if state.phase is not Phase.WAITING else None,
            "period": period,
            "period_length": self.core.timing.period_length,
            # the block's timing before its period starts (``period`` is null until then)
            "num_subperiods": self.core.timing.num_subperiods,
            "bonus_points": self.spec.bonus_points,
            "block_pause": self.spec.block_pause,
            "earned": earned,
            "lobby": self.lobby(participant),
            # an online experiment (the join link): the final screen asks for the way back
            "online": self.spec.online is not None,
            "server_time": ms(now),
            "last_seq": self.last_seq,
        }

    def _earned(self, participant: str, now: float, state: GroupState) -> float:
        """The participant's score so far; up to the last accrual when the game fails on its payoff
        (a page that connects to a group whose game fails is shown its period all the same). The
        payoff is the game's code on the event loop, timed as an action is."""
        began = perf_counter()
        try:
            earned = self.core.earned(participant, now, state)
        except Exception as exc:
            self.timed(began, IN_HELLO_PAYOFF)
            self.hook_failed(exc, IN_HELLO_PAYOFF, "the hello shows the score up to the last accrual")
            return self.core.earned(participant, state.flow_at if state.flow_at is not None else now, state)
        self.timed(began, IN_HELLO_PAYOFF)
        return earned

    def _role(self, participant: str) -> Any:
        """The participant's role for their hello; ``None`` (unknown, as a game without roles
        gives) when the game fails on it or gives what JSON cannot hold: the page works all the
        same. The role is the game's code on the event loop, timed as an action is."""
        began = perf_counter()
        try:
            role = self.core.role(participant)
        except Exception as exc:
            self.timed(began, IN_ROLE)
            self.hook_failed(exc, IN_ROLE, "the hello shows no role (null)")
            return None
        self.timed(began, IN_ROLE)
        if role is None or type(role) is str:
            return role
        try:
            orjson.dumps(role)  # what the hello is encoded with, here and between the workers
        except TypeError:  # orjson.JSONEncodeError
            fault = GameFault(f"{type(self.core).__name__}.role gave {shown(role)} for {participant!r}: "
                              "a role must be JSON (a string, or None for none)", "role")
            self.hook_failed(fault, IN_ROLE, "the hello shows no role (null)")
            return None
        return role

    def replay(self) -> list[str]:
        """Frames repeated to a new connection: the last ``state`` and the current decisions."""
        frames = []
        if self.last_state is not None:
            s = self.last_state
            frames.append(encode(STATE, s["value"], seq=s["seq"], ts=s["ts"]))
        if self.committed.phase is not Phase.WAITING:
            frames.append(encode("group_decisions", dict(self.committed.decisions)))
        return frames

    # ------------------------------------------------------------------ the clock

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

    async def catch_up(self) -> None:
        """Apply at once what fell due while no process acted for the group, and wait until it
        is stored (or refused): a restart's first ``hello`` then shows it."""
        deadline = self.core.next_deadline()
        if deadline is None or deadline > self._clock():
            return
        if self._timer is not None:
            self._timer.cancel()
        future = self._tick()
        if future is None:
            return
        try:
            await future
        except NotPersisted as exc:  # the timer tries again; the restart goes on
            log.warning("group %s: what fell due while down is not stored yet: %s", self.id, exc)

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop

    def _due(self) -> None:
        future = self._tick()
        if future is not None:
            future.add_done_callback(consume)

    def _tick(self) -> asyncio.Future[list[int]] | None:
        """What is due now, applied and on its way to the database; ``None``: the game failed on it (logged)."""
        self._timer = None
        self._deadline = None
        try:
            future = self.act(lambda: self.core.tick(self._clock()))
        except Exception as exc:
            return self._tick_failed(exc)
        return future  # once a tick's write is stored, the failures in a row start from 0 again

    def _unstorable(self, exc: Unstorable, tick: bool) -> None:
        """A write of the group that the database cannot take was refused (the core is back at
        what is stored). With a tick in it (a subperiod's or the period's end, maybe carried by a
        decision) the clock tries it again as a tick the game failed on (:meth:`_tick_failed`);
        else one line in the log."""
        if tick:
            ended = self._tick_failed(exc)
            if ended is not None:
                ended.add_done_callback(consume)
            return
        log.error("group %s: a write of the game %s cannot be stored; refused, the group is back at its "
                  "last stored state: %s", self.id, type(self.core).__name__, exc.reason)
        self._reschedule()

    def _tick_failed(self, exc: Exception) -> asyncio.Future[list[int]] | None:
        """The game failed on a tick (a payoff that raises, or is no number; or the tick's write
        cannot be stored, :meth:`_unstorable`): nothing of the tick was applied. Tried again
        later, less and less often, never in a loop; the first failure in a row is recorded
        (``game_fault``); once the period's end is :data:`GAME_FAULT_END_AFTER` past, the period
        is ended without the game (returned: the end on its way)."""
        now = self._clock()
        ends_at = self.core.state.ends_at
        if ends_at is not None and now >= ends_at + GAME_FAULT_END_AFTER:
            self._tick_failures = 0
            return self.act(lambda: self._end_faulted(exc, "tick", now))
        self._tick_failures += 1
        wait = min(RETRY_AFTER * 2 ** min(self._tick_failures - 1, 16), GAME_RETRY_MAX)
        retry = now + wait
        if ends_at is not None:  # the end without the game comes on time, not up to a wait later
            retry = min(retry, max(now, ends_at + GAME_FAULT_END_AFTER))
        self._retry_at = retry
        if self._tick_failures == 1:  # (a write that could not be stored has no traceback to show)
            log.error("group %s: the game %s failed on a tick; tried again in %g s, then less often: %s",
                      self.id, type(self.core).__name__, wait, exc, exc_info=exc if exc.__traceback__ else None)
            fault = {**describe_fault(self.core, exc, "tick"), "ended": False}
            self.act(lambda: [Event(GAME_FAULT, fault, None, NOBODY)]).add_done_callback(consume)
        else:
            log.error("group %s: the game %s failed on a tick again (%d in a row), tried again in %g s: %s",
                      self.id, type(self.core).__name__, self._tick_failures, wait, exc)
        self._reschedule()
        return None

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

    def now(self) -> float:
        """The group's clock (seconds since the epoch, to the microsecond, as stored)."""
        return self._clock()

    def close(self) -> None:
        """Stop the group's clock and its bots (at shutdown); what it has submitted is still stored."""
        self._closed = True
        if self.standins is not None:
            self.standins.stop()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def retire(self) -> None:
        """This process no longer acts for the group (its lease lapsed or was handed over).

        Its clock stops and every action is refused with :class:`NotAuthority`; writes already
        submitted are stored only if the group's epoch is still this one (the fence).
        """
        self.retired = True
        self.close()
        # its bots have stopped: without the cycle group <-> stand-ins, reference counting frees
        # the group as soon as the router lets go of it (the cycle collector runs seldom)
        self.standins = None


def to_microseconds(epoch: float) -> float:
    """``epoch`` on a whole microsecond, as stored: ``datetime.fromtimestamp`` of the result has
    exactly that microsecond, and its ``timestamp()`` gives the result back (``round(epoch, 6)``
    picks the same kind of value, at six times the cost: it goes through decimal digits)."""
    return math.floor(epoch * 1e6 + 0.5) / 1e6


#: a frame held behind a look-up: its channel, payload, client id, whether a bot sent it, its answer
_Held = tuple[str, Any, str | None, bool, asyncio.Future[list[int]]]


def _follow(inner: asyncio.Future[list[int]], outer: asyncio.Future[list[int]]) -> None:
    """``outer`` settles as ``inner`` does (at once if it has)."""

    def copy(done: asyncio.Future[list[int]]) -> None:
        if outer.done():
            return
        if done.cancelled():
            outer.cancel()
        elif (exc := done.exception()) is not None:
            outer.set_exception(exc)
        else:
            outer.set_result(done.result())

    if inner.done():
        copy(inner)
    else:
        inner.add_done_callback(copy)


def consume(future: asyncio.Future[Any]) -> None:
    """Mark a fire-and-forget action's failure as seen (the writer has logged it)."""
    if not future.cancelled():
        future.exception()


def _own_event(events: list[Event]) -> int:
    """The index of the one event a member's own frame made (the core stamps only it with the member).

    A loop, not ``next()`` over a generator: a generator left unfinished is closed when it is
    dropped, by an exception thrown into it, which cost a tenth of a decision's work here."""
    for i, ev in enumerate(events):
        if ev.participant is not None:
            return i
    raise ValueError("no event of the member's own frame")
