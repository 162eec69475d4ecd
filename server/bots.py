"""``synclab bots CODE``: simulated participants play everyone who is not connected.

The runner reads the experiment and its participants over the REST API (with the experimenter
token), then opens one real participant WebSocket per participant who is not connected and
plays it with the game's own strategy, :meth:`groups.DecisionGroup.bot_decision`, built from
the ``hello`` the server sends (game, config, members). While the period runs a bot sends a
``decisions`` frame with an ``id`` at random intervals (``rate`` decisions per second on
average, each interval uniform in ``[0.5, 1.5] / rate``), and follows ``group_decisions`` to
know the group's current decisions. The server moves the socket on to the next block by itself
(a new ``hello``); after the ``period_end`` of the last block the bot closes.

A dropped connection is opened again with a bounded backoff, and the frames not acknowledged
yet are sent again with the same ``id`` (the server stores an id once) unless the bot is in
another group by then. Close code 4000 means a human took the participant over: that bot stops,
and that is not an error. The run ends when every bot is done, when the experiment is ``done``,
``cancelled`` or ``failed`` (polled every second), or at the time limit.

:func:`run_bots` is the API (the load benchmark uses it); :func:`run_bots_command` is the
command: exit 0 when the run ended that way, 1 on the time limit or when a bot gave up, 2 when
it cannot run (no token, unknown experiment, server unreachable).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import secrets
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy.engine import make_url
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from groups import PERIOD_END, PERIOD_START, DecisionGroup, Timing, load_game

from .exceptions import RETRY_CODES, WS_4000_REPLACED, WS_4404_UNKNOWN, SettingsError, SynclabError
from .settings import Settings
from .storage import add_token, drop_token, reading

#: an experiment in one of these has ended; its bots stop
ENDED = ("done", "cancelled", "failed")
#: decisions per second per bot, on average
DEFAULT_RATE = 1.0
MAX_RATE = 1000.0
#: how often the runner reads the experiment's status
POLL_SECONDS = 1.0
#: the default time limit: every block's period and pause plus this
MARGIN_SECONDS = 120.0
HTTP_TIMEOUT = 10.0
OPEN_TIMEOUT = 10.0
CLOSE_TIMEOUT = 2.0
#: connection attempts in a row without a ``hello`` before a bot gives up, and their backoff
MAX_ATTEMPTS = 8
BACKOFF_FIRST = 0.2
BACKOFF_MAX = 5.0
#: the pages of participants the runner reads at most (the server holds 10000 at most)
MAX_PAGES = 100
PAGE_SIZE = 1000
#: errors kept in a report (the rest are counted)
MAX_ERRORS = 50
#: seconds before a frame refused with a code of ``RETRY_CODES`` is sent again
RETRY_DELAY = 0.5
#: how long bots may take to see the end themselves once the experiment has ended
GRACE_SECONDS = 2.0

FINISHED = "finished"  # played to the period_end of the last block
REPLACED = "replaced"  # a human took the participant over (close code 4000)
STOPPED = "stopped"  # the run ended first (the experiment ended, or the time limit)
FAILED = "failed"  # could not play: gave up reconnecting, or the code was refused


class BotsError(SynclabError):
    """The bots cannot run: no token, a refused token, an unknown experiment, no server."""


@dataclass
class BotReport:
    """What a run did: who was played, what was sent, and how it ended."""

    experiment: str
    participants: int = 0
    #: participants already connected when the run began (left to them)
    connected: int = 0
    bots: int = 0
    finished: int = 0
    replaced: int = 0
    stopped: int = 0
    failed: int = 0
    sent: int = 0
    acked: int = 0
    #: frames the server refused, by error code (``not_running``: sent as the period ended)
    refused: dict[str, int] = field(default_factory=dict)
    reconnects: int = 0
    #: frames sent again with their id after a reconnect (the server stores an id once)
    resent: int = 0
    #: frames not acknowledged when the bot was moved to another group, so never sent again
    dropped: int = 0
    errors: list[str] = field(default_factory=list)
    #: seconds from sending a decision to its ``ack``
    latencies: list[float] = field(default_factory=list)
    #: the experiment's status when the run ended
    status: str | None = None
    timed_out: bool = False
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """No time limit hit and no bot gave up."""
        return not self.timed_out and self.failed == 0

    def summary(self) -> str:
        """One line for people."""
        outcomes = ", ".join(
            f"{n} {name}" for n, name in (
                (self.finished, "finished"), (self.replaced, "taken over by a human"),
                (self.stopped, "stopped"), (self.failed, "failed"),
            ) if n
        )
        refused = sum(self.refused.values())
        text = (
            f"experiment {self.experiment} is {self.status} after {self.seconds:.1f} s: "
            f"{self.bots} bots ({outcomes or 'none'}), {self.connected} connected participants left alone, "
            f"{self.sent} decisions sent, {self.acked} acknowledged"
        )
        if self.latencies:
            ordered = sorted(self.latencies)
            text += f" (ack p50 {ordered[len(ordered) // 2] * 1000:.1f} ms, max {ordered[-1] * 1000:.1f} ms)"
        if refused:
            text += f", {refused} refused ({', '.join(f'{c} {n}' for c, n in sorted(self.refused.items()))})"
        text += f", {self.reconnects} reconnects"
        if self.resent or self.dropped:
            text += f" ({self.resent} frames sent again, {self.dropped} left behind)"
        text += f", {len(self.errors)} errors"
        if self.timed_out:
            text += "; TIMED OUT"
        return text


# --------------------------------------------------------------------------- REST


class _HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class _Api:
    """The few REST reads the runner needs, through urllib on a worker thread."""

    def __init__(self, base: str, token: str) -> None:
        self.base = base
        self._headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}

    async def get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        return await asyncio.to_thread(self._get, path, params)

    def _get(self, path: str, params: dict[str, Any] | None) -> Any:
        url = self.base + path + ("?" + urllib.parse.urlencode(params) if params else "")
        request = urllib.request.Request(url, headers=self._headers)
        try:
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:
                return orjson.loads(response.read())
        except urllib.error.HTTPError as exc:
            try:
                body = exc.read()
            finally:
                exc.close()
            raise _HttpError(exc.code, _error_message(body)) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise BotsError(f"cannot reach the server at {self.base}: {reason}") from None
        except orjson.JSONDecodeError:
            raise BotsError(f"{url}: expected a JSON answer; is {self.base} a synclab server?") from None


def _error_message(body: bytes) -> str:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:200].decode(errors="replace")
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), str):
        return str(parsed["error"])
    return body[:200].decode(errors="replace")


async def _experiment(api: _Api, code: str) -> dict[str, Any]:
    """The experiment's detail; a refused token or an unknown code is a :class:`BotsError`."""
    try:
        body: dict[str, Any] = await api.get(f"/api/experiments/{urllib.parse.quote(code, safe='')}")
    except _HttpError as exc:
        if exc.status == 404:
            raise BotsError(f"no experiment with code {code!r} at {api.base}") from None
        if exc.status in (401, 403):
            raise BotsError(
                f"the server at {api.base} refused the experimenter token ({exc.status}: {exc.message}); "
                "pass --token or set SYNCLAB_ADMIN_TOKEN"
            ) from None
        raise BotsError(f"GET /api/experiments/{code}: {exc}") from None
    return body


async def _participants(api: _Api, code: str) -> list[dict[str, Any]]:
    path = f"/api/experiments/{urllib.parse.quote(code, safe='')}/participants"
    people: list[dict[str, Any]] = []
    for page in range(1, MAX_PAGES + 1):
        try:
            body = await api.get(path, {"page": page, "page_size": PAGE_SIZE})
        except _HttpError as exc:
            raise BotsError(f"GET {path}: {exc}") from None
        people.extend(body["results"])
        if not body.get("next"):
            return people
    raise BotsError(f"GET {path}: more than {MAX_PAGES} pages of participants")


# --------------------------------------------------------------------------- one bot


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
        self.latencies: list[float] = []
        self._ws: ClientConnection | None = None
        self._greeted = False
        self._last_seq = 0
        self._count = 0
        self._on_hello = on_hello

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
            self._error(f"cannot build game {name!r} here, so this bot holds still: {exc}")
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
            self._error(f"{type(game).__name__}.bot_decision failed, so this bot holds still: {exc!r}")
            self.game = None
            return None
        return decision

    # ------------------------------------------------------------------ outcomes

    def _error(self, message: str) -> None:
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(f"participant {self.participant}: {message}")

    def _fail(self, message: str) -> None:
        self._error(message)
        self.outcome = FAILED


def _frame(decision: Any, frame_id: str) -> str:
    return orjson.dumps({"channel": "decisions", "payload": decision, "id": frame_id}).decode()


# --------------------------------------------------------------------------- the run


def _check_url(url: str) -> tuple[str, str]:
    """The http(s) base and its ws(s) twin, without a trailing slash."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise BotsError(f"--url: expected the server's http:// or https:// address, got {url!r}")
    base = url.rstrip("/")
    return base, ("ws" if parsed.scheme == "http" else "wss") + base[len(parsed.scheme):]


def _positive(name: str, value: float | None, high: float = math.inf) -> None:
    if value is not None and not (math.isfinite(value) and 0 < value <= high):
        bound = "" if high == math.inf else f" and at most {high:g}"
        raise BotsError(f"{name}: expected a number > 0{bound}, got {value!r}")


async def run_bots(
    url: str,
    code: str,
    token: str,
    *,
    rate: float | None = None,
    seed: int | None = None,
    time_limit: float | None = None,
    log: Callable[[str], None] | None = None,
) -> BotReport:
    """Play every participant of experiment ``code`` who is not connected, until it ends.

    ``rate``: decisions per second per bot (default 1). ``seed`` makes each bot's strategy
    draws reproducible. ``time_limit``: seconds before the run gives up (default: every block's
    ``period_length`` and ``block_pause`` plus two minutes). ``log`` gets progress lines.
    Raises :class:`BotsError` when the run cannot start.
    """
    _positive("--rate", rate, MAX_RATE)
    _positive("--timeout", time_limit)
    base, ws_base = _check_url(url)
    say = log or (lambda _: None)
    api = _Api(base, token)
    started = time.monotonic()
    experiment = await _experiment(api, code)
    people = await _participants(api, code)
    absent = [str(p["code"]) for p in people if not p.get("connected")]
    report = BotReport(
        code, participants=len(people), connected=len(people) - len(absent), status=experiment.get("status")
    )
    if report.status in ENDED:
        say(f"experiment {code} is {report.status} already: nothing to play")
        return report
    if not absent:
        say(f"every participant of experiment {code} is connected: nothing to play")
        return report

    num_blocks = int(experiment.get("blocks") or 1)
    block_pause = float(experiment.get("block_pause") or 0.0)
    seen: dict[str, Any] = {"period_length": None, "block": -1}

    def on_hello(hello: dict[str, Any]) -> None:
        if seen["period_length"] is None and hello.get("period_length") is not None:
            seen["period_length"] = float(hello["period_length"])
        block = int(hello.get("block") or 0)
        if block > seen["block"]:
            seen["block"] = block
            say(f"block {block + 1} of {num_blocks}")

    run_id = secrets.token_hex(4)  # frame ids never repeat those of an earlier run
    bots = []
    for index, participant in enumerate(absent):
        mixed = f"{seed}:{participant}" if seed is not None else None
        bots.append(Bot(
            participant,
            f"{ws_base}/ws/p/{urllib.parse.quote(participant, safe='')}",
            rate=rate or DEFAULT_RATE,
            rng=random.Random(mixed),
            pace=random.Random(None if mixed is None else mixed + ":pace"),
            prefix=f"bot-{run_id}-{index}",
            on_hello=on_hello,
        ))
    report.bots = len(bots)
    say(
        f"experiment {code} ({experiment.get('game')}): {len(people)} participants, "
        f"{report.connected} connected, {len(bots)} bots at {rate or DEFAULT_RATE:g} decisions/s each"
    )

    def allowed() -> float:
        if time_limit is not None:
            return time_limit
        return MARGIN_SECONDS + num_blocks * ((seen["period_length"] or 0.0) + block_pause)

    playing = {asyncio.create_task(bot.play()): bot for bot in bots}
    tasks = set(playing)
    status = report.status
    try:
        while True:
            _, pending = await asyncio.wait(tasks, timeout=POLL_SECONDS)
            if not pending:
                break
            if time.monotonic() - started > allowed():
                report.timed_out = True
                break
            try:
                body = await _experiment(api, code)
            except BotsError as exc:
                say(f"reading the experiment's status failed (the bots go on): {exc}")
                continue
            if body.get("status") != status:
                status = body.get("status")
                say(f"experiment {code} is {status}")
            if status in ENDED:
                await asyncio.wait(tasks, timeout=GRACE_SECONDS)  # let them see the last period_end
                break
    finally:
        await asyncio.gather(*(bot.stop() for bot in bots))
        _, pending = await asyncio.wait(tasks, timeout=CLOSE_TIMEOUT + 1)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    for task, bot in playing.items():
        if not task.cancelled() and task.exception() is not None:
            bot._fail(f"the bot failed: {task.exception()!r}")
    for bot in bots:
        setattr(report, bot.outcome or STOPPED, getattr(report, bot.outcome or STOPPED) + 1)
        report.sent += bot.sent
        report.acked += bot.acked
        report.reconnects += bot.reconnects
        report.resent += bot.resent
        report.dropped += bot.dropped
        report.latencies.extend(bot.latencies)
        report.errors.extend(bot.errors)
        for error_code, n in bot.refused.items():
            report.refused[error_code] = report.refused.get(error_code, 0) + n
    try:
        report.status = (await _experiment(api, code)).get("status")
    except BotsError:
        report.status = status
    report.seconds = time.monotonic() - started
    if report.timed_out:
        unfinished = [b for b in bots if b.outcome == STOPPED]
        waiting = sum(b.phase == "waiting" for b in unfinished)
        hint = (
            f"; {waiting} of them in a group waiting for a member who is not connected (start it from "
            f"the monitor or POST /api/experiments/{code}/start)" if waiting else ""
        )
        report.errors.append(
            f"timed out after {allowed():g} s with experiment {code} {report.status}: "
            f"{len(unfinished)} bots had not finished{hint}; --timeout gives them longer"
        )
    return report


# --------------------------------------------------------------------------- the command


@contextlib.contextmanager
def bots_token(settings: Settings, given: str | None = None) -> Iterator[str]:
    """The token the bots read the experiment with: ``given``, else ``SYNCLAB_ADMIN_TOKEN``, else one of their own.

    Their own is a ``watch`` token (they only read) made in the database for this run and deleted
    after it: the stored tokens are hashes, so none can be read back.
    """
    if given or settings.admin_token:
        yield str(given or settings.admin_token)
        return
    where = make_url(settings.database_url).render_as_string(hide_password=True)
    name = f"bots-{secrets.token_hex(4)}"
    try:
        with reading(settings.database_url) as engine:
            token = add_token(engine, name, "watch")
    except SettingsError as exc:
        raise BotsError(
            f"no experimenter token: pass --token or set SYNCLAB_ADMIN_TOKEN (none could be made in {where}: {exc})"
        ) from None
    try:
        yield token
    finally:
        with contextlib.suppress(SettingsError), reading(settings.database_url) as engine:
            drop_token(engine, name)


def run_bots_command(
    settings: Settings,
    code: str,
    *,
    url: str | None = None,
    token: str | None = None,
    rate: float | None = None,
    seed: int | None = None,
    timeout: float | None = None,
) -> int:
    """``synclab bots CODE``: 0 when the run ended, 1 on the time limit or a failed bot, 2 when it cannot run.

    ``url`` defaults to ``http://127.0.0.1:$PORT``; the token to :func:`bots_token`'s choice.
    """
    try:
        with bots_token(settings, token) as found:
            report = asyncio.run(run_bots(
                url or f"http://127.0.0.1:{settings.port}",
                code,
                found,
                rate=rate,
                seed=seed,
                time_limit=timeout,
                log=lambda line: print(f"synclab: {line}", flush=True),
            ))
    except BotsError as exc:
        print(f"synclab: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("synclab: interrupted; the bots closed their connections", file=sys.stderr)
        return 130
    for error in report.errors:
        print(f"synclab: {error}", file=sys.stderr)
    if report.bots:
        print(f"synclab: {report.summary()}", flush=True)
    return 0 if report.ok else 1
