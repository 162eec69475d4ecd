"""Live groups: the one place where each group's state changes, in order.

A :class:`LiveGroup` wraps a pure :class:`groups.DecisionGroup`. Every action runs the core
synchronously on the event loop (so actions of one group are ordered), hands the events to the
writer, and publishes them only from the writer's commit callback. It keeps the *committed*
state beside the core's: ``hello`` is built from it, so a participant never sees anything that
is not stored, and a failed commit rolls the core back to it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from groups import STATE, DecisionGroup, Event, GroupState, Phase, Timing, load_game

from .database import (
    ConnectionChange,
    Database,
    GroupUpdate,
    NewEvent,
    Seat,
    Write,
    client_ids,
    load_seat,
    to_epoch,
)
from .exceptions import NotPersisted
from .hub import Hub, group_topic
from .wire import encode, ms

Clock = Callable[[], float]


def _state_from_row(row: dict[str, Any]) -> GroupState:
    return GroupState(
        phase=Phase(row["phase"]),
        decisions=dict(row["decisions"] or {}),
        started_at=to_epoch(row["started_at"]),
        ends_at=to_epoch(row["ends_at"]),
        ended_at=to_epoch(row["ended_at"]),
        subperiod=int(row["subperiod"] or 0),
        vars=dict(row["vars"] or {}),
    )


class LiveGroup:
    """One group's authority in this process."""

    def __init__(self, seat: Seat, game: type[DecisionGroup], writer: Any, hub: Hub, clock: Clock) -> None:
        self.id = seat.group_id
        self.experiment_id = seat.experiment_id
        self.experiment_code = seat.experiment_code
        self.game = seat.game
        self.block_index = seat.block_index
        self.member_ids = dict(seat.member_ids)
        self.topic = group_topic(self.id)
        self.core = game(
            seat.members,
            timing=Timing(seat.period_length, seat.num_subperiods, seat.rate_limit),
            config=seat.config,
            state=_state_from_row(seat.group),
        )
        self.committed = self.core.state.copy()
        self.last_seq: int = int(seat.group["last_seq"] or 0)
        #: the last ``state`` event: ``{"seq", "ts", "value"}``, repeated to every new connection
        self.last_state = seat.last_state
        #: per member: client frame id -> its seq, or the future of a frame still being stored
        self.client_ids: dict[str, dict[str, int | asyncio.Future[list[int]]]] = {}
        #: per member: its current connection (the newest replaces the older)
        self.current: dict[str, Any] = {}
        self._writer = writer
        self._hub = hub
        # stored times have microseconds: a frame's ts must equal what a restart reads back
        self._clock: Clock = lambda: round(clock(), 6)
        self._timer: asyncio.TimerHandle | None = None
        self._deadline: float | None = None
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
        events = action()
        future: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        if not events and connection is None:
            future.set_result([])
            return future
        now = self.core.now
        snapshot = self.core.state.copy()
        write = Write(
            self.experiment_id,
            [
                NewEvent(
                    ev.channel,
                    ev.payload,
                    now,
                    self.id,
                    None if ev.participant is None else self.member_ids[ev.participant],
                    client_id if ev.participant is not None else None,
                )
                for ev in events
            ],
            GroupUpdate(
                self.id,
                snapshot.phase.value,
                snapshot.started_at,
                snapshot.ends_at,
                snapshot.ended_at,
                snapshot.subperiod,
                snapshot.decisions,
                snapshot.vars,
            ),
            connection,
        )

        def committed(stored: Write) -> None:
            self.committed = snapshot
            for ev, seq in zip(events, stored.seqs, strict=True):
                self.last_seq = seq
                if ev.channel == STATE:
                    self.last_state = {"seq": seq, "ts": now, "value": ev.payload}
                if ev.to is None or ev.to:  # NOBODY (empty): recorded, not sent
                    self._hub.publish(self.topic, encode(ev.channel, ev.payload, seq=seq, ts=now), ev.to)
            future.set_result(stored.seqs)

        def failed(exc: NotPersisted) -> None:
            self.core.restore(self.committed)
            self._reschedule()
            future.set_exception(exc)

        self._writer.submit(write, committed, failed)
        self._reschedule()
        return future

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

    def connect(self, participant: str, connection: ConnectionChange) -> asyncio.Future[list[int]]:
        return self.act(lambda: self.core.connect(participant, self._clock()), connection=connection)

    def disconnect(self, participant: str, connection: ConnectionChange) -> asyncio.Future[list[int]]:
        return self.act(lambda: self.core.disconnect(participant, self._clock()), connection=connection)

    def start(self) -> asyncio.Future[list[int]]:
        return self.act(lambda: self.core.start(self._clock()))

    def end(self) -> asyncio.Future[list[int]]:
        return self.act(lambda: self.core.end(self._clock()))

    # ------------------------------------------------------------------ what a new connection sees

    def hello(self, participant: str) -> dict[str, Any]:
        """The whole committed state, for the first frame of a connection."""
        state = self.committed
        period = None
        if state.started_at is not None:
            period = {
                "started_at": ms(state.started_at),
                "ends_at": None if state.ends_at is None else ms(state.ends_at),
                "subperiod": state.subperiod if self.core.timing.num_subperiods else None,
                "num_subperiods": self.core.timing.num_subperiods,
            }
        return {
            "participant": participant,
            "group": self.id,
            "members": list(self.core.members),
            "role": self.core.role(participant),
            "block": self.block_index,
            "phase": state.phase.value,
            "group_decisions": dict(state.decisions) if state.phase is not Phase.WAITING else None,
            "period": period,
            "server_time": ms(self._clock()),
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
        future = self.act(lambda: self.core.tick(self._clock()))
        future.add_done_callback(consume)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


def consume(future: asyncio.Future[Any]) -> None:
    """Mark a fire-and-forget action's failure as seen (the writer has logged it)."""
    if not future.cancelled():
        future.exception()


class LiveGroups:
    """Every live group of this process, loaded on first use."""

    def __init__(self, database: Database, writer: Any, hub: Hub, clock: Clock = time.time) -> None:
        self.database = database
        self.writer = writer
        self.hub = hub
        self.clock = clock
        self.groups: dict[int, LiveGroup] = {}
        self._loading: dict[int, asyncio.Lock] = {}

    async def seat(self, code: str) -> tuple[Seat, LiveGroup] | None:
        """The participant's seat and its live group, or ``None`` for an unknown code."""
        seat = await self.database.read(load_seat, code)
        if seat is None:
            return None
        group = self.groups.get(seat.group_id)
        if group is None:
            lock = self._loading.setdefault(seat.group_id, asyncio.Lock())
            async with lock:
                group = self.groups.get(seat.group_id)
                if group is None:
                    group = LiveGroup(seat, load_game(seat.game), self.writer, self.hub, self.clock)
                    self.groups[seat.group_id] = group
            self._loading.pop(seat.group_id, None)
        if code not in group.client_ids:
            ids = await self.database.read(client_ids, seat.participant_id)
            group.client_ids.setdefault(code, dict(ids))
        return seat, group

    def close(self) -> None:
        for group in self.groups.values():
            group.close()

