"""``synclab bots CODE``: simulated participants play everyone who is not connected.

The runner reads the experiment and its participants over the REST API (with the experimenter
token), then opens one real participant WebSocket per participant who is not connected and
plays it with the game's own strategy (a :class:`server.bot.Bot` each). The run ends when every
bot is done, when the experiment is ``done``, ``cancelled`` or ``failed`` (polled every second),
or at the time limit.

:func:`run_bots` is the API (the load benchmark uses it); :mod:`server.botscommand` is the command.
"""

from __future__ import annotations

import asyncio
import math
import random
import secrets
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from groups import GAME_FAULT

from .bot import CLOSE_TIMEOUT, STOPPED, Bot
from .exceptions import SynclabError

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
#: the pages of participants the runner reads at most (the server holds 10000 at most)
MAX_PAGES = 100
PAGE_SIZE = 1000
#: how long bots may take to see the end themselves once the experiment has ended
GRACE_SECONDS = 2.0


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
    #: what went wrong, a line each; a failure of the game's code, which every bot may meet alike,
    #: once for each kind (where, exception type) with a count of the others
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


async def _pages(api: _Api, code: str, what: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every row of ``GET /api/experiments/{code}/{what}`` (at most :data:`MAX_PAGES` pages)."""
    path = f"/api/experiments/{urllib.parse.quote(code, safe='')}/{what}"
    rows: list[dict[str, Any]] = []
    for page in range(1, MAX_PAGES + 1):
        try:
            body = await api.get(path, {**(params or {}), "page": page, "page_size": PAGE_SIZE})
        except _HttpError as exc:
            raise BotsError(f"GET {path}: {exc}") from None
        rows.extend(body["results"])
        if not body.get("next"):
            return rows
    raise BotsError(f"GET {path}: more than {MAX_PAGES} pages of {what}")


async def _recorded_faults(api: _Api, code: str, after_seq: int) -> list[str]:
    """The game's failures the server recorded past ``after_seq`` (its ``game_fault`` events: in
    a tick, at a period's start or end, in an experimenter's action; no bot is told of them), a
    line for each kind (when, the hook, the exception's type) with a count of the others."""
    kinds: dict[tuple[Any, ...], tuple[str, int]] = {}
    for event in await _pages(api, code, "events", {"channel": GAME_FAULT, "after_seq": after_seq}):
        fault = event["value"] if isinstance(event["value"], dict) else {"message": event["value"]}
        kind = (fault.get("during"), fault.get("hook"), fault.get("error"))
        hook = f"the game's {fault['hook']}" if fault.get("hook") else "the game"
        first, n = kinds.get(kind, (
            f"group {event['group']}: {hook} failed during {fault.get('during') or 'a step of the core'} "
            f"(recorded by the server): {fault.get('error') or 'error'}: {fault.get('message')}", 0,
        ))
        kinds[kind] = (first, n + 1)
    return [_counted(first, n) for first, n in kinds.values()]


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


def _game_faults(bots: list[Bot]) -> list[str]:
    """One line for each kind of the game's failures in the bots: the first bot's, and how many more."""
    faults: dict[tuple[str, str], tuple[str, int, int]] = {}  # kind -> its first line, how many, in how many bots
    for bot in bots:
        for kind, (first, n) in bot.game_faults.items():
            known = faults.get(kind)
            faults[kind] = (first, n, 1) if known is None else (known[0], known[1] + n, known[2] + 1)
    return [
        _counted(first, n) + ("" if n == 1 else f" ({among} bot{'s' if among > 1 else ''} in all)")
        for first, n, among in faults.values()
    ]


def _counted(first: str, n: int) -> str:
    """``first``, the line of the first of ``n`` failures of a kind, with a count of the others."""
    return first if n == 1 else f"{first}; {n - 1} more such failure{'s' if n > 2 else ''}"


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
    people = await _pages(api, code, "participants")
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
    report.errors.extend(_game_faults(bots))
    try:
        report.errors.extend(await _recorded_faults(api, code, int(experiment.get("last_seq") or 0)))
    except BotsError as exc:
        report.errors.append(f"reading the game's failures the server recorded failed: {exc}")
    try:
        report.status = (await _experiment(api, code)).get("status")
    except BotsError:
        report.status = status
    report.seconds = time.monotonic() - started
    if report.timed_out:
        unfinished = [b for b in bots if b.outcome == STOPPED]
        waiting = [b for b in unfinished if b.phase == "waiting"]
        here = {b.participant for b in waiting if b.greeted}
        # a group whose every member is a bot of this run the server greeted had nobody to wait for
        whole = sum(b.game is not None and set(b.game.members) <= here for b in waiting)
        hint = "".join((
            f"; {len(waiting) - whole} of them in a group waiting for a member who is not connected (start "
            f"it from the monitor or POST /api/experiments/{code}/start)" if len(waiting) > whole else "",
            f"; {whole} of them in a group whose members are all connected but whose period did not start: "
            "the game may have failed as it started (the server's log says)" if whole else "",
        ))
        report.errors.append(
            f"timed out after {allowed():g} s with experiment {code} {report.status}: "
            f"{len(unfinished)} bots had not finished{hint}; --timeout gives them longer"
        )
    return report
