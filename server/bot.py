"""One simulated participant of ``synclab bots`` (:mod:`server.bots`), on one real WebSocket.

A bot plays its participant with the game's own strategy, :meth:`groups.DecisionGroup.bot_decision`,
built from the ``hello`` the server sends (game, config, members). While the period runs a bot sends a
``decisions`` frame with an ``id`` at random intervals (``rate`` decisions per second on
average, each interval uniform in ``[0.5, 1.5] / rate``), and follows ``group_decisions`` to
know the group's current decisions. The server moves the socket on to the next block by itself
(a new ``hello``); after the ``period_end`` of the last block the bot closes.

A dropped connection is opened again with a bounded backoff, and the frames not acknowledged
yet are sent again with the same ``id`` (the server stores an id once) unless the bot is in
another group by then. Close code 4000 means a human took the participant over: that bot stops,
and that is not an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from groups import PERIOD_END, PERIOD_START, DecisionGroup, Timing, load_game

from .exceptions import RETRY_CODES, WS_4000_REPLACED, WS_4404_UNKNOWN

OPEN_TIMEOUT = 10.0
CLOSE_TIMEOUT = 2.0
#: connection attempts in a row without a ``hello`` before a bot gives up, and their backoff
MAX_ATTEMPTS = 8
BACKOFF_FIRST = 0.2
BACKOFF_MAX = 5.0
#: errors a bot keeps (the rest are left out); the game's failures are counted apart (``game_faults``)
MAX_ERRORS = 50
#: seconds before a frame refused with a code of ``RETRY_CODES`` is sent again
RETRY_DELAY = 0.5

FINISHED = "finished"  # played to the period_end of the last block
REPLACED = "replaced"  # a human took the participant over (close code 4000)
STOPPED = "stopped"  # the run ended first (the experiment ended, or the time limit)
FAILED = "failed"  # could not play: gave up reconnecting, or the code was refused


class Bot:
    """One simulated participant on one real WebSocket (opened again after a drop)."""

    def __init__(
        self,
        participant: str,
        ws_url: str,
        *,
        rate: float,
        rng: random.Random,
        pace: random.Random,
        prefix: str,
        on_hello: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.participant = participant
        self.ws_url = ws_url
        self.rate = rate
        #: the strategy's randomness, and the sending pace's and the backoff's
        self.rng = rng
        self.pace = pace
        self.prefix = prefix
        self.outcome: str | None = None
        self.game: DecisionGroup | None = None
        self.group: Any = None
        self.block = 0
        self.num_blocks = 1
        self.decisions: dict[str, Any] = {}
        self.mine: Any = None
        #: the group's phase as the bot last heard it (``waiting``, ``running``, ``paused``, ``ended``)
        self.phase: str | None = None
        self.running = asyncio.Event()
        #: frame id -> (group, decision, when sent) until its ack or error
        self.unacked: dict[str, tuple[Any, Any, float]] = {}
        self._resends: set[asyncio.Task[None]] = set()
        self.sent = 0
        self.acked = 0
        self.refused: Counter[str] = Counter()
        self.reconnects = 0
        #: frames sent again with their id after a reconnect, and those left behind in another group
        self.resent = 0
        self.dropped = 0
        self.errors: list[str] = []
        #: the game's failures here, by kind (where, exception type): the first one's line and how many
        self.game_faults: dict[tuple[str, str], tuple[str, int]] = {}
        self.latencies: list[float] = []
        self._ws: ClientConnection | None = None
        self._greeted = False
        self._last_seq = 0
        self._count = 0
        self._on_hello = on_hello

    @property
    def greeted(self) -> bool:
        """Its last connection got a ``hello``: the server had it connected."""
        return self._greeted

    # ------------------------------------------------------------------ the connection

    async def play(self) -> None:
        """Play until the last block ends, a human takes over, the run stops it, or it gives up."""
        attempts = 0
        problem = ""
        while self.outcome is None:
            code: int | None = None
            self._greeted = False
            try:
                async with connect(
                    self.ws_url,
                    open_timeout=OPEN_TIMEOUT,
                    close_timeout=CLOSE_TIMEOUT,
                    user_agent_header="synclab-bots",
                ) as ws:
                    self._ws = ws
                    await self._session(ws)
                code = ws.close_code
                problem = f"the server closed the connection ({code})"
            except InvalidStatus as exc:
                if exc.response.status_code == 403:  # an unknown code is refused at the handshake
                    code = WS_4404_UNKNOWN
                problem = f"the handshake was refused with HTTP {exc.response.status_code}"
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd is not None else None
                reason = exc.rcvd.reason if exc.rcvd is not None else ""
                problem = f"the connection closed ({code}{': ' + reason if reason else ''})"
            except (OSError, TimeoutError, WebSocketException) as exc:
                problem = f"cannot connect: {exc or type(exc).__name__}"
            finally:
                self._ws = None
                self.running.clear()
            if self.outcome is not None:
                break
            if code == WS_4000_REPLACED:
                self.outcome = REPLACED
                break
            if code == WS_4404_UNKNOWN:
                self._fail("the server does not know this participant code (4404)")
                break
            attempts = 1 if self._greeted else attempts + 1
            if attempts > MAX_ATTEMPTS:
                self._fail(f"gave up after {MAX_ATTEMPTS} attempts to connect in a row: {problem}")
                break
            self.reconnects += 1
            delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (attempts - 1))
            await asyncio.sleep(delay * self.pace.uniform(0.5, 1.0))

    async def stop(self) -> None:
        """End this bot now (the run is over); its socket is closed normally."""
        if self.outcome is None:
            self.outcome = STOPPED
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close()

    async def _session(self, ws: ClientConnection) -> None:
        sender = asyncio.create_task(self._send_loop(ws))
        try:
            async for raw in ws:
                await self._on_frame(ws, orjson.loads(raw))
                if self.outcome is not None:
                    return
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await sender

    # ------------------------------------------------------------------ frames in

    async def _on_frame(self, ws: ClientConnection, frame: Any) -> None:
        if not isinstance(frame, dict):
            return
        channel, payload, seq = frame.get("channel"), frame.get("payload"), frame.get("seq")
        if channel == "hello" and isinstance(payload, dict):
            await self._hello(ws, payload)
        elif isinstance(seq, int) and seq <= self._last_seq:
            return  # repeated on connect: the hello holds it already
        elif channel == "state":
            if payload == PERIOD_START:
                self.phase = "running"
                self.running.set()
            elif payload == PERIOD_END:
                self.phase = "ended"
                self.running.clear()
                self._settle()
        elif channel == "period" and isinstance(payload, dict):
            self.phase = str(payload.get("status"))
            if self.phase == "running":
                self.running.set()
            else:
                self.running.clear()
        elif channel == "group_decisions" and isinstance(payload, dict):
            self.decisions = dict(payload)
        elif channel == "ack" and isinstance(payload, dict):
            known = self.unacked.pop(str(payload.get("id")), None)
            if known is not None:
                self.acked += 1
                self.latencies.append(time.monotonic() - known[2])
            self._settle()
        elif channel == "error" and isinstance(payload, dict):
            self.refused[str(payload.get("code"))] += 1
            frame_id = payload.get("id")
            if frame_id is not None and str(frame_id) in self.unacked and payload.get("code") in RETRY_CODES:
                # not stored now, perhaps later (a group moving between workers): the same id again
                self._spawn_resend(ws, str(frame_id))
            elif frame_id is not None:
                self.unacked.pop(str(frame_id), None)
            self._settle()

    def _spawn_resend(self, ws: ClientConnection, frame_id: str) -> None:
        async def resend() -> None:
            await asyncio.sleep(RETRY_DELAY)
            known = self.unacked.get(frame_id)
            if known is not None and self._ws is ws:
                with contextlib.suppress(ConnectionClosed):
                    await ws.send(_frame(known[1], frame_id))
                    self.resent += 1

        task = asyncio.get_running_loop().create_task(resend())
        self._resends.add(task)
        task.add_done_callback(self._resends.discard)

    def _settle(self) -> None:
        """After the last block's end the bot is done once every frame it sent is answered.

        An ack may come after ``period_end`` (the decision was stored before the end, its ack
        is sent after); a bot that closed at the end would count a stored decision as unanswered.
        The run's own end (``stop``) bounds the wait.
        """
        if self.phase == "ended" and self.block >= self.num_blocks - 1 and not self.unacked:
            self.outcome = FINISHED

    async def _hello(self, ws: ClientConnection, hello: dict[str, Any]) -> None:
        if hello.get("participant") != self.participant:
            self._fail(f"the server greeted participant {hello.get('participant')!r} instead")
            return
        self._greeted = True
        group = hello.get("group")
        if self.group is not None and group != self.group and self.unacked:
            self.dropped += len(self.unacked)  # stored or not, they belong to the group left behind
            self.unacked.clear()
        self.group = group
        self.block = int(hello.get("block") or 0)
        self.num_blocks = int(hello.get("num_blocks") or 1)
        self._last_seq = int(hello.get("last_seq") or 0)
        self.decisions = dict(hello.get("group_decisions") or {})
        self.mine = self.decisions.get(self.participant)
        self.game = self._build(hello)
        if self._on_hello is not None:
            self._on_hello(hello)
        phase = self.phase = hello.get("phase")
        if phase == "running":
            self.running.set()
        else:
            self.running.clear()
        for frame_id, (_, decision, _) in list(self.unacked.items()):  # the same id: stored once
            await ws.send(_frame(decision, frame_id))
            self.resent += 1
        self._settle()  # after the end: done now, or once the resent frames are answered

    def _build(self, hello: dict[str, Any]) -> DecisionGroup | None:
        """The game, built from ``hello`` only to ask it for decisions; ``None`` holds still."""
        name = str(hello.get("game"))
        try:
            game = load_game(name)
            period = hello.get("period") or {}
            timing = Timing(hello.get("period_length"), period.get("num_subperiods"))
            return game(hello["members"], timing=timing, config=hello.get("config") or {})
        except Exception as exc:
            self._game_failed("building", exc, f"cannot build game {name!r} here, so this bot holds still: {exc}")
            return None

    # ------------------------------------------------------------------ frames out

    async def _send_loop(self, ws: ClientConnection) -> None:
        while True:
            await self.running.wait()
            await asyncio.sleep(self.pace.uniform(0.5, 1.5) / self.rate)
            if not self.running.is_set() or self.game is None:
                continue
            decision = self._decide(self.game)
            if decision is None:
                continue
            self._count += 1
            frame_id = f"{self.prefix}-{self._count}"
            self.unacked[frame_id] = (self.group, decision, time.monotonic())
            self.mine = decision
            await ws.send(_frame(decision, frame_id))
            self.sent += 1

    def _decide(self, game: DecisionGroup) -> Any:
        """The game's next decision for this bot, checked by the game; ``None`` sends nothing."""
        decisions = dict(self.decisions)
        if self.mine is not None:
            decisions[self.participant] = self.mine
        try:
            decision = game.bot_decision(self.participant, decisions, self.rng)
            if decision is None:
                return None
            decision = game.validate_decision(self.participant, decision)
            orjson.dumps(decision)
        except Exception as exc:
            self._game_failed(
                "bot_decision", exc, f"{type(game).__name__}.bot_decision failed, so this bot holds still: {exc!r}"
            )
            self.game = None
            return None
        return decision

    # ------------------------------------------------------------------ outcomes

    def _error(self, message: str) -> None:
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(f"participant {self.participant}: {message}")

    def _game_failed(self, where: str, exc: Exception, message: str) -> None:
        """The game's code failed in ``where``. Every bot of a run plays the same game and may fail
        alike at each hello: the run reports the first of a kind (``where``, exception type) and
        counts the rest (:func:`server.bots.run_bots`), as the server logs a stand-in's."""
        kind = (where, type(exc).__name__)
        first, n = self.game_faults.get(kind, (f"participant {self.participant}: {message}", 0))
        self.game_faults[kind] = (first, n + 1)

    def _fail(self, message: str) -> None:
        self._error(message)
        self.outcome = FAILED


def _frame(decision: Any, frame_id: str) -> str:
    return orjson.dumps({"channel": "decisions", "payload": decision, "id": frame_id}).decode()

