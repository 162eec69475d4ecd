"""Live groups: the one place where each group's state changes, in order.

A :class:`LiveGroup` wraps a pure :class:`groups.DecisionGroup`. Every action runs the core
synchronously on the event loop (so actions of one group are ordered), hands the events to the
writer, and publishes them only from the writer's commit callback. It keeps the *committed*
state beside the core's: ``hello`` is built from it, so a participant never sees anything that
is not stored, and a failed commit rolls the core back to it.

:class:`LiveGroups` holds every live group of the process. It is the runner of the design: each
group's next deadline is one ``loop.call_at`` on the absolute time the core names; at start-up
it reloads every running period from the database, so a deadline missed while the server was
down is applied at once (and recorded late). When a period ends it moves the members on to their
next block's group after the experiment's ``block_pause``. Its :meth:`LiveGroups.control` is the
Python API for the experimenter's ``start``, ``pause``, ``resume`` and ``end``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import orjson

from groups import (
    NOBODY,
    RESULT,
    STATE,
    DecisionGroup,
    Event,
    GroupState,
    InvalidState,
    Phase,
    Timing,
    current_block,
    load_game,
)

from .exceptions import WS_4000_REPLACED, NotPersisted
from .hub import Hub, group_topic, monitor_presence_topic, monitor_topic
from .storage import (
    ConnectionChange,
    Database,
    GroupSpec,
    GroupUpdate,
    NewEvent,
    NewResult,
    NewTick,
    Seat,
    Write,
    client_ids,
    experiment_groups,
    experiment_row,
    live_group_ids,
    load_group,
    load_seat,
    set_experiment_status,
    to_epoch,
)
from .wire import encode, ms

log = logging.getLogger("synclab.live")
Clock = Callable[[], float]
ACTIONS = ("start", "pause", "resume", "end")
#: the channel of an experimenter's action, recorded (not sent) before what it caused
CONTROL = "control"


class Meter:
    """An experiment's recent throughput and broadcast latency, for the monitor's ``stats``."""

    def __init__(self, clock: Clock, window: int = 512) -> None:
        self.events = 0
        self._clock = clock
        #: (when, how many events, seconds from the action to its broadcast) of recent writes
        self.recent: deque[tuple[float, int, float]] = deque(maxlen=window)

    def observe(self, events: int, latency: float) -> None:
        self.events += events
        self.recent.append((self._clock(), events, latency))

    def summary(self, over: float = 1.0) -> dict[str, Any]:
        """Events per second over the last ``over`` seconds and the latency of the last writes."""
        now = self._clock()
        latest = [r for r in self.recent if r[0] >= now - over]
        latencies = sorted(r[2] for r in self.recent)
        return {
            "events": self.events,
            "events_per_second": sum(r[1] for r in latest) / over,
            "latency_ms": {
                "last": round(self.recent[-1][2] * 1000, 3) if self.recent else None,
                "p50": round(latencies[len(latencies) // 2] * 1000, 3) if latencies else None,
                "max": round(latencies[-1] * 1000, 3) if latencies else None,
            },
        }


class Member(Protocol):
    """A participant's connection as a live group sees it (see :class:`server.connection.ClientConnection`)."""

    group: LiveGroup
    close_code: int | None

    def send(self, data: str) -> None: ...

    def close(self, code: int, reason: str = "") -> None: ...

    def deliver(self, to: frozenset[str] | None, data: str) -> None: ...


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
        on_ended: Callable[[LiveGroup], None] | None = None,
        meter: Meter | None = None,
    ) -> None:
        self.spec = spec
        self.meter = meter or Meter(clock)
        self.id = spec.group_id
        self.experiment_id = spec.experiment_id
        self.experiment_code = spec.experiment_code
        self.game = spec.game
        self.block_index = spec.block_index
        self.member_ids = dict(spec.member_ids)
        self.session_ids = dict(spec.session_ids)
        self.topic = group_topic(self.id)
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
        self.client_ids: dict[str, dict[str, int | asyncio.Future[list[int]]]] = {}
        #: per member: its current connection (the newest replaces the older)
        self.current: dict[str, Member] = {}
        self._writer = writer
        self._hub = hub
        self._on_ended = on_ended
        # stored times have microseconds: a frame's ts must equal what a restart reads back
        self._clock: Clock = lambda: round(clock(), 6)
        self._timer: asyncio.TimerHandle | None = None
        self._deadline: float | None = None
        #: set at shutdown: no timer is set any more, so nothing new is computed
        self._closed = False
        self._reschedule()

    # ------------------------------------------------------------------ actions

    def act(
        self,
        action: Callable[[], list[Event]],
        *,
        client_id: str | None = None,
        connection: ConnectionChange | None = None,
    ) -> asyncio.Future[list[int]]:
        """Run ``action`` on the core, store its events, publish them once stored.

        Raises what the core raises (a refused action changes nothing). The future resolves
        to the events' ``seq``s after the commit, or fails with :class:`NotPersisted`.
        """
        try:
            events = action()
        except BaseException:
            if self.core.carried:  # what fell due before the refusal is stored all the same
                self.act(lambda: self.core.tick(self.core.now)).add_done_callback(consume)
            else:
                self._reschedule()
            raise
        future: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        if not events and connection is None:
            future.set_result([])
            self._reschedule()
            return future
        now = self.core.now
        snapshot = self.core.state.copy()
        write = self._write(events, now, snapshot, client_id, connection)
        was_ended = self.committed.phase is Phase.ENDED

        def committed(stored: Write) -> None:
            self.committed = snapshot
            for ev, seq in zip(events, stored.seqs, strict=True):
                self.last_seq = seq
                if ev.channel == STATE:
                    self.last_state = {"seq": seq, "ts": now, "value": ev.payload}
                if ev.to is None or ev.to:  # NOBODY (empty): recorded, not sent
                    self._hub.publish(self.topic, encode(ev.channel, ev.payload, seq=seq, ts=now), ev.to)
            future.set_result(stored.seqs)
            self._to_monitors(events, stored, now, connection)
            if not was_ended and snapshot.phase is Phase.ENDED and self._on_ended is not None:
                self._on_ended(self)

        def failed(exc: NotPersisted) -> None:
            self.core.restore(self.committed)
            self._reschedule()
            future.set_exception(exc)

        self._writer.submit(write, committed, failed)
        self._reschedule()
        return future

    def _to_monitors(self, events: list[Event], stored: Write, now: float, connection: ConnectionChange | None) -> None:
        """Tell the experiment's monitors what was stored: one frame per write, never awaited."""
        latency = self._clock() - now
        self.meter.observe(len(events), latency)
        topic = monitor_topic(self.experiment_id)
        if events and self._hub.listening(topic):
            at, lat = ms(now), round(latency * 1000, 3)
            rows = [
                {"seq": seq, "ts": at, "group": self.id, "participant": ev.participant,
                 "channel": ev.channel, "value": ev.payload, "latency": lat}
                for ev, seq in zip(events, stored.seqs, strict=True)
            ]
            self._hub.publish(topic, orjson.dumps(rows).decode())
        presence = monitor_presence_topic(self.experiment_id)
        if connection is not None and self._hub.listening(presence):
            code = next((c for c, i in self.member_ids.items() if i == connection.participant_id), None)
            when = connection.opened if connection.opened is not None else connection.closed or now
            self._hub.publish(presence, encode("connection", {
                "participant": code,
                "group": self.id,
                # a replaced connection's close leaves the participant connected through the newer one
                "connected": connection.opened is not None or code in self.current,
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
    ) -> Write:
        stored = [
            NewEvent(
                ev.channel,
                ev.payload,
                now,
                self.id,
                None if ev.participant is None else self.member_ids[ev.participant],
                client_id if ev.participant is not None else None,
            )
            for ev in events
        ]
        scored = [
            NewResult(
                i,
                self.session_ids[next(iter(ev.to))],
                ev.payload["subperiod"],
                ev.payload["decision"],
                float(ev.payload["score"]),
            )
            for i, ev in enumerate(events)
            if ev.channel == RESULT and ev.to and ev.participant is None
        ]
        timed = [
            NewTick(
                self.id,
                ev.tick.kind,
                ev.tick.index,
                ev.tick.scheduled_at,
                ev.tick.actual_at,
                ev.tick.late,
                ev.payload["group_decisions"] if isinstance(ev.payload, dict) else dict(snapshot.decisions),
            )
            for ev in events
            if ev.tick is not None
        ]
        for tick in timed:
            if tick.late:
                log.warning(
                    "group %s: %s %d ran %.3f s late", self.id, tick.kind, tick.index, tick.actual_at - tick.scheduled_at
                )
        group = GroupUpdate(
            self.id,
            snapshot.phase.value,
            snapshot.started_at,
            snapshot.ends_at,
            snapshot.ended_at,
            snapshot.subperiod,
            snapshot.decisions,
            snapshot.vars,
            snapshot.clock(),
        )
        return Write(self.experiment_id, stored, group, connection, scored, timed)

    def receive(self, participant: str, channel: str, payload: Any, client_id: str | None) -> asyncio.Future[list[int]]:
        """A client frame on a game channel; a repeated ``client_id`` is answered, not stored."""
        ids = self.client_ids.setdefault(participant, {})
        if client_id is not None and client_id in ids:
            known = ids[client_id]
            if isinstance(known, asyncio.Future):
                return known
            done: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
            done.set_result([known])
            return done
        future = self.act(lambda: self.core.receive(participant, channel, payload, self._clock()), client_id=client_id)
        if client_id is not None:
            ids[client_id] = future

            def settle(f: asyncio.Future[list[int]]) -> None:
                if f.cancelled() or f.exception() is not None:
                    ids.pop(client_id, None)  # not stored: a retry may try again
                else:
                    ids[client_id] = f.result()[0]

            future.add_done_callback(settle)
        return future

    def connect(self, participant: str, connection: ConnectionChange | None) -> asyncio.Future[list[int]]:
        return self.act(lambda: self.core.connect(participant, self._clock()), connection=connection)

    def disconnect(self, participant: str, connection: ConnectionChange | None) -> asyncio.Future[list[int]]:
        return self.act(lambda: self.core.disconnect(participant, self._clock()), connection=connection)

    def start(self) -> asyncio.Future[list[int]]:
        return self.act(lambda: self.core.start(self._clock()))

    def end(self) -> asyncio.Future[list[int]]:
        return self.act(lambda: self.core.end(self._clock()))

    def control(self, action: str, scope: str) -> asyncio.Future[list[int]]:
        """An experimenter's ``start``, ``pause``, ``resume`` or ``end``, stored as a ``control`` event.

        The event is recorded with what the action caused, in the same transaction; a refused
        action (:class:`groups.InvalidState`) records nothing.
        """
        if action not in ACTIONS:
            raise ValueError(f"expected an action in {list(ACTIONS)}, got {action!r}")
        step: Callable[[float], list[Event]] = getattr(self.core, action)
        record = Event(CONTROL, {"action": action, "scope": scope}, None, NOBODY)
        return self.act(lambda: [record, *step(self._clock())])

    def pause(self) -> asyncio.Future[list[int]]:
        return self.act(lambda: self.core.pause(self._clock()))

    def resume(self) -> asyncio.Future[list[int]]:
        return self.act(lambda: self.core.resume(self._clock()))

    # ------------------------------------------------------------------ members' connections

    def attach(self, participant: str, member: Member, change: ConnectionChange | None, *, hello: bool) -> None:
        """Make ``member`` the participant's connection to this group and bring it up to date.

        Nothing here awaits: the replayed state and the subscription start at the same
        committed point, so no frame is missed or repeated.
        """
        older = self.current.get(participant)
        self.current[participant] = member
        member.group = self
        if older is not None and older is not member:
            older.close(WS_4000_REPLACED, "replaced by a newer connection of the same participant")
        self._hub.subscribe(self.topic, member)
        if hello:
            member.send(encode("hello", self.hello(participant)))
        for frame in self.replay():
            member.send(frame)
        self.connect(participant, change).add_done_callback(consume)

    def detach(self, participant: str, member: Member, change: ConnectionChange | None) -> None:
        """``member`` leaves this group (closed, or moved on to the next block)."""
        self._hub.unsubscribe(self.topic, member)
        if self.current.get(participant) is member:
            del self.current[participant]
            self.disconnect(participant, change).add_done_callback(consume)
        elif change is not None:  # replaced: the participant is still here through the newer socket
            self.act(list, connection=change).add_done_callback(consume)

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
        earned = self.core.earned(participant, now, state) if participant in self.core.members else 0.0
        return {
            "participant": participant,
            "experiment": self.experiment_code,
            "game": self.game,
            "title": self.title,
            "config": self.core.config,
            "group": self.id,
            "members": list(self.core.members),
            "role": self.core.role(participant),
            "block": self.block_index,
            "num_blocks": self.spec.num_blocks,
            "phase": state.phase.value,
            "group_decisions": dict(state.decisions) if state.phase is not Phase.WAITING else None,
            "period": period,
            "period_length": self.core.timing.period_length,
            "bonus_points": self.spec.bonus_points,
            "block_pause": self.spec.block_pause,
            "earned": earned,
            "server_time": ms(now),
            "last_seq": self.last_seq,
        }

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
        if deadline == self._deadline:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._deadline = deadline
        if deadline is not None:
            loop = asyncio.get_running_loop()
            # absolute: the wall-clock deadline mapped onto the loop's clock now, never chained
            self._timer = loop.call_at(loop.time() + max(0.0, deadline - self._clock()), self._due)

    def _due(self) -> None:
        self._timer = None
        self._deadline = None
        try:
            future = self.act(lambda: self.core.tick(self._clock()))
        except Exception:
            log.exception("group %s: the game failed on a tick", self.id)
            return
        future.add_done_callback(consume)

    def close(self) -> None:
        """Stop the group's clock (at shutdown); what it has submitted is still stored."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def consume(future: asyncio.Future[Any]) -> None:
    """Mark a fire-and-forget action's failure as seen (the writer has logged it)."""
    if not future.cancelled():
        future.exception()


class LiveGroups:
    """Every live group of this process, loaded on first use (or at start-up if its period runs)."""

    def __init__(self, database: Database, writer: Any, hub: Hub, clock: Clock = time.time) -> None:
        self.database = database
        self.writer = writer
        self.hub = hub
        self.clock = clock
        self.groups: dict[int, LiveGroup] = {}
        self._loading: dict[int, asyncio.Lock] = {}
        self._moves: dict[int, asyncio.TimerHandle] = {}
        #: per experiment id: its recent throughput and latency
        self.meters: dict[int, Meter] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        #: set at shutdown: no block change is planned any more
        self._closed = False

    async def resume_all(self) -> int:
        """Load every group whose period runs or is paused; their timers apply what is overdue."""
        ids = await self.database.read(live_group_ids)
        for group_id in ids:
            await self.group(group_id)
        return len(ids)

    async def group(self, group_id: int) -> LiveGroup:
        """The live group ``group_id``, loaded once."""
        group = self.groups.get(group_id)
        if group is not None:
            return group
        lock = self._loading.setdefault(group_id, asyncio.Lock())
        async with lock:
            group = self.groups.get(group_id)
            if group is None:
                spec = await self.database.read(load_group, group_id)
                if spec is None:
                    raise LookupError(f"no group {group_id}")
                meter = self.meter(spec.experiment_id)
                group = LiveGroup(spec, load_game(spec.game), self.writer, self.hub, self.clock, self._ended, meter)
                self.groups[group_id] = group
                if group.committed.phase is Phase.ENDED:
                    self._ended(group)
        self._loading.pop(group_id, None)
        return group

    def meter(self, experiment_id: int) -> Meter:
        meter = self.meters.get(experiment_id)
        if meter is None:
            meter = self.meters[experiment_id] = Meter(self.clock)
        return meter

    async def seat(self, code: str, now: float | None = None) -> tuple[Seat, LiveGroup] | None:
        """The participant's seat and its live group, or ``None`` for an unknown code."""
        seat = await self.database.read(load_seat, code, self.clock() if now is None else now)
        if seat is None:
            return None
        group = await self.group(seat.group_id)
        if code not in group.client_ids:
            ids = await self.database.read(client_ids, seat.participant_id)
            group.client_ids.setdefault(code, dict(ids))
        return seat, group

    # ------------------------------------------------------------------ blocks

    def _ended(self, group: LiveGroup) -> None:
        """A period ended: after the pause, move whoever is connected on to the next block."""
        if self._closed or group.spec.last_block or group.id in self._moves:
            return
        ended_at = group.committed.ended_at or self.clock()
        due = ended_at + group.spec.block_pause
        loop = asyncio.get_running_loop()
        self._moves[group.id] = loop.call_at(
            loop.time() + max(0.0, due - self.clock()), lambda: self._spawn(self._move_on(group, due))
        )

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _move_on(self, group: LiveGroup, due: float) -> None:
        self._moves.pop(group.id, None)
        try:
            row = await self.database.read(experiment_row, group.experiment_code)
            if row is None or row["status"] == "cancelled":
                return
            for code, member in list(group.current.items()):
                seated = await self.seat(code, max(self.clock(), due))
                if seated is None or seated[1] is group:
                    continue
                if group.current.get(code) is not member or member.close_code is not None:
                    continue  # gone or replaced while we looked the next group up
                group.detach(code, member, None)
                seated[1].attach(code, member, None, hello=getattr(member, "route", "synclab") == "synclab")
        except Exception:
            log.exception("group %s: moving members to the next block failed", group.id)

    # ------------------------------------------------------------------ the experimenter

    async def control(self, experiment_code: str, action: str, group_id: int | None = None) -> list[int]:
        """``start``, ``pause``, ``resume`` or ``end`` an experiment (or one of its groups).

        ``start`` forces the waiting groups that are every member's current group; ``pause``
        and ``resume`` take the running and paused ones; ``end`` ends every period not ended
        (a whole experiment ended this way is ``cancelled``). Returns the groups acted on,
        once their events are stored. Raises :class:`LookupError` for an unknown experiment
        or group and :class:`ValueError` for an unknown action.
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
            current = {m: gs[current_block([(g.phase, g.ended_at) for g in gs], now, 0.0)].group_id
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
        done: list[int] = []
        for place in targets:
            live = await self.group(place.group_id)
            try:
                future = live.control(action, "experiment" if group_id is None else "group")
            except InvalidState:
                continue  # it changed since we looked: nothing to do for it
            await future
            done.append(place.group_id)
        return done

    def close(self) -> None:
        """At shutdown: stop every group's clock and every planned block change.

        The writes the groups have submitted stay queued: the writer stores them, and their
        outcome still reaches the groups (see :meth:`server.runtime.Runtime.close`).
        """
        self._closed = True
        for handle in self._moves.values():
            handle.cancel()
        for task in self._tasks:
            task.cancel()
        for group in self.groups.values():
            group.close()
