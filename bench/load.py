"""The open-loop load generator: real WebSocket participants on a fixed send schedule.

One process, one event loop. :func:`run_load` creates the experiment, connects every
participant, waits until every group has started, offers the load on its schedule and reads back
what the target stored; :func:`hold_idle` opens sockets and only holds them. Its parts:

- :mod:`bench.sockets`: the participants' sockets, their frames stamped, read and written whole;
- :mod:`bench.schedule`: the schedule of sends, and the CPU time and memory used over it;
- :mod:`bench.record`: what is offered (:class:`Load`), what each participant receives
  (:class:`Peer`), and the run's record and its summary (:class:`Run`);
- :mod:`bench.measures`: percentiles, and the part of a send's lag that is the generator's own;
- :mod:`bench.api`: the target's REST API.

Against a cluster every group is spread over the workers: member ``m`` of group ``g`` connects
to worker ``(g + m * W // G) % W`` (:func:`worker_of`), and the first member of every group
connects (and is greeted) before any other, so the worker of member 0, which alternates with
``g``, takes the group: each worker serves ``1/W`` of the groups and holds ``1/W`` of the members
of each.

See ``bench/README.md`` for what every measure means.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect

from .api import ENDOWMENT, Api
from .measures import own_lags, percentiles
from .proc import Cluster, Target, rss_bytes
from .record import Load, Peer, Run
from .schedule import send_all
from .services import Meter
from .sockets import HELLO_TIMEOUT, OPEN_TIMEOUT, StampedConnection, masked_text_frame, open_socket

#: this module's own names, and those that lived here before the modules above held them (the
#: tests and other callers import them from here still)
__all__ = [
    "ENDOWMENT",
    "Api",
    "Load",
    "NotGreeted",
    "StampedConnection",
    "greeting",
    "hold_idle",
    "masked_text_frame",
    "own_lags",
    "percentiles",
    "run_load",
    "worker_of",
]

#: the old name of :func:`.sockets.open_socket`, which tests/bench/test_generator_frames.py imports
_open = open_socket

#: the period outlasts connecting, the run and the grace by this much (it is ended after the run)
PERIOD_MARGIN = 120.0
CONNECT_BATCH = 200
START_TIMEOUT = 60.0


class NotGreeted(RuntimeError):
    """A socket's first frame was not the target's hello to its participant (or, from
    :func:`run_load`, some sockets' hellos did not come, or not first)."""


async def greeting(ws: StampedConnection, participant: str, within: float) -> dict[str, Any]:
    """The payload of ``ws``'s first frame, the target's hello to ``participant`` (the server and
    the relay alike send ``{"channel": "hello", "payload": {"participant", ...}}`` first, as a JSON
    text frame), in ``within`` seconds at most, else ``TimeoutError``; any other frame is
    :class:`NotGreeted` (the socket is the caller's to close)."""
    raw = await asyncio.wait_for(ws.recv(), within)
    hello: Any = None
    if isinstance(raw, str):
        ws.stamps.popleft()  # (a text frame's, read by websockets: stamped)
        with contextlib.suppress(orjson.JSONDecodeError):
            hello = orjson.loads(raw)
    payload = hello.get("payload") if isinstance(hello, dict) and hello.get("channel") == "hello" else None
    if not isinstance(payload, dict) or payload.get("participant") != participant:
        kind = "text" if isinstance(raw, str) else "binary"
        raise NotGreeted(f"expected the hello to {participant!r} first, got a {kind} frame {raw!r:.200}")
    return payload


async def in_batches(items: Sequence[Any], batch: int, make: Callable[[Any], Awaitable[Any]]) -> list[Any]:
    """``make(item)`` for every item, ``batch`` at a time, in order."""
    out: list[Any] = []
    for start in range(0, len(items), batch):
        out.extend(await asyncio.gather(*(make(item) for item in items[start : start + batch])))
    return out


def worker_of(index: int, group_size: int, workers: int) -> int:
    """The worker participant ``index`` connects to: its group's members spread evenly over the
    workers, member 0 of group ``g`` on worker ``g % workers`` (see the module's docstring)."""
    group, member = divmod(index, group_size)
    return (group + member * workers // group_size) % workers


async def run_load(target: Target | Cluster, load: Load, *, measure_target: bool = True,
                   meters: Sequence[Meter] = (), hello_timeout: float = HELLO_TIMEOUT) -> Run:
    """Offer ``load`` to ``target`` (a server, the relay or a cluster) and record everything.

    ``meters``: other process kinds whose CPU time is read over the sends too (Redis, PostgreSQL).
    A socket not greeted within ``hello_timeout`` (``TimeoutError``), or whose first frame is not
    its hello (:class:`NotGreeted`), is a failure, closed at once; once its batch of connections
    is in, the run ends with :class:`NotGreeted` counting the failures by kind.
    """
    run = Run(target.kind, load)
    stores = target.kind != "relay"
    ws_bases = [base.replace("http://", "ws://") for base in target.bases]
    api = Api(target.base, target.token)
    apis = [Api(base, target.token) for base in target.bases]
    n, g = load.participants, load.group_size
    spread = len(ws_bases) > 1
    if spread and g < len(ws_bases):
        raise ValueError(f"groups of {g} cannot be spread over {len(ws_bases)} workers")
    if stores:
        created = await api.create(load, load.duration + load.grace + PERIOD_MARGIN)
        run.experiment = created["code"]
        run.codes = [p["code"] for p in created["participants"]]
        paths = [f"/ws/p/{code}" for code in run.codes]
    else:
        run.codes = [f"p{i}" for i in range(n)]
        paths = [f"/ws/{i // g}/{code}" for i, code in enumerate(run.codes)]
    run.index_of = {code: i for i, code in enumerate(run.codes)}

    failures: Counter[str] = Counter()
    first_failure: list[str] = []

    async def join(i: int) -> None:
        ws = await open_socket(ws_bases[worker_of(i, g, len(ws_bases))] + paths[i])
        try:
            payload = await greeting(ws, run.codes[i], hello_timeout)
        except (NotGreeted, TimeoutError) as exc:
            # closed now: the target must not hold it (nor its group wait for it) until the run ends
            await close_socket(ws)
            failures[type(exc).__name__] += 1
            if not first_failure:
                first_failure.append(f"participant {i}: {exc or f'no hello within {hello_timeout:g} s'}")
            return
        peer = Peer(i, run.codes[i], ws, run, list(payload.get("members") or []))
        peer.task = asyncio.create_task(peer.read())
        if target.kind == "relay":
            peer.started.set()
        run.peers.append(peer)  # at once: closed after the run, whatever ends it

    async def join_all(indices: Sequence[int]) -> None:
        await in_batches(indices, CONNECT_BATCH, join)
        if failures:
            count = sum(failures.values())
            raise NotGreeted(f"{count} sockets not greeted {dict(failures)}; the first, {first_failure[0]}")

    watching: tuple[ClientConnection, asyncio.Task[None]] | None = None
    try:
        if spread:
            # each group's first member first: its worker (alternating with the group) takes the
            # group when it connects, and has by the time the hello comes; then everybody else
            await join_all([i for i in range(n) if i % g == 0])
            await join_all([i for i in range(n) if i % g])
        else:
            await join_all(range(n))
        run.peers.sort(key=lambda peer: peer.index)
        if stores:
            # the server's hello names the members; the relay's groups are i // G by construction
            run.groups = [[] for _ in range(n)]
            for peer in run.peers:
                run.groups[peer.index] = [run.index_of[c] for c in peer.members]
            if spread and any(run.groups[i] != list(range(i // g * g, i // g * g + g)) for i in range(n)):
                # the spread assumes block 0's groups are the participants in order (server.experiments.plan)
                raise RuntimeError("the server's groups are not the participants in order: the spread would be wrong")
        else:
            run.groups = [list(range((i // g) * g, (i // g + 1) * g)) for i in range(n)]
        async with asyncio.timeout(START_TIMEOUT):
            await asyncio.gather(*(peer.started.wait() for peer in run.peers))
        status0 = [await a.call("GET", "/api/server") for a in apis] if stores else None
        if load.monitor and stores and run.experiment is not None:
            run.monitor = {"frames": 0, "bytes": 0, "rows": 0}
            watching = await _watch(f"{ws_bases[0]}/ws/monitor/{run.experiment}", target.token, run.monitor)
        await send_all(run, target, measure_target, meters)
        if status0 is not None:
            status1 = [await a.call("GET", "/api/server") for a in apis]
            run.writer = _writer_delta([s["writer"] for s in status0], [s["writer"] for s in status1])
            if target.kind == "cluster":
                run.groups_served = [int(s["live_groups"]) for s in status1]
        if stores and run.experiment is not None:
            await api.call("POST", f"/api/experiments/{run.experiment}/end")
            run.stored = await api.decisions(run.experiment)
            if load.subperiod is not None and isinstance(target, Target) and target.sqlite:
                run.tick_lateness = tick_lateness(target, run.experiment, run.wall0, run.wall_end)
        if run.monitor is not None and run.writer is not None:
            # its rows come a tenth of a second at a time: those of the schedule's writes, at least
            for _ in range(40):  # up to 2 s
                if run.monitor["rows"] >= run.writer["events"]:
                    break
                await asyncio.sleep(0.05)
    finally:
        if watching is not None:
            await _stop_watching(*watching)
        await close_all(run.peers)
    return run


async def _watch(url: str, token: str, counts: dict[str, int]) -> tuple[ClientConnection, asyncio.Task[None]]:
    """A monitor of the experiment at ``url`` (its token in the first frame), read until stopped:
    ``counts`` gets its frames, their bytes and the event rows among them (counted, not parsed:
    an ``events`` frame is a tenth of a second's rows, some 800 KB at 2,000 decisions a second)."""
    ws = await connect(url, max_size=None, compression=None, open_timeout=OPEN_TIMEOUT, close_timeout=2.0)
    await ws.send(orjson.dumps({"channel": "auth", "payload": {"token": token}}).decode())
    first = await asyncio.wait_for(ws.recv(), HELLO_TIMEOUT)
    if not str(first).startswith('{"channel":"snapshot"'):
        await ws.close()
        raise RuntimeError(f"the monitor: expected a snapshot first, got {str(first)[:200]!r}")

    async def read() -> None:
        with contextlib.suppress(Exception):
            async for message in ws:
                text = str(message)
                counts["frames"] += 1
                counts["bytes"] += len(text)
                if text.startswith('{"channel":"events"'):
                    counts["rows"] += text.count('{"seq":')

    return ws, asyncio.create_task(read())


async def _stop_watching(ws: ClientConnection, reading: asyncio.Task[None]) -> None:
    with contextlib.suppress(Exception):
        await ws.close()
    reading.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await reading


def _writer_delta(before: Sequence[dict[str, Any]], after: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The writers' counters over the sends, summed over the processes (one, or a cluster's workers)."""
    counted = ("batches", "writes", "events", "log_restarts")
    out: dict[str, Any] = {key: 0 for key in counted}
    commit_ms: dict[str, int] = {}
    for w0, w1 in zip(before, after, strict=True):
        for key in counted:
            out[key] += w1[key] - w0[key]
        for bucket, count in w1["commit_ms"].items():
            commit_ms[bucket] = commit_ms.get(bucket, 0) + count - w0["commit_ms"][bucket]
    out["commit_ms"] = commit_ms
    return out


async def close_socket(ws: ClientConnection) -> None:
    """Close ``ws``, waiting at most 5 s for the closing handshake; a socket already gone is no error."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(ws.close(), 5.0)


async def close_all(peers: Sequence[Peer]) -> None:
    async def close(peer: Peer) -> None:
        await close_socket(peer.ws)
        if peer.task is not None:
            peer.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await peer.task

    await in_batches(list(peers), 500, close)


def tick_lateness(target: Target, experiment: str, since: float, until: float) -> list[float]:
    """Seconds each tick of ``experiment`` due in ``[since, until]`` (epoch) ran after it was due."""
    from sqlalchemy import and_, select

    from server.storage import experiments, groups, make_engine, ticks, to_epoch

    engine = make_engine(f"sqlite:///{target.database}")
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(ticks.c.scheduled_at, ticks.c.actual_at)
                .join(groups, groups.c.id == ticks.c.group_id)
                .join(experiments, experiments.c.id == groups.c.experiment_id)
                .where(and_(experiments.c.code == experiment, ticks.c.kind == "subperiod"))
            ).all()
    finally:
        engine.dispose()
    out = []
    for scheduled, actual in rows:
        s, a = to_epoch(scheduled), to_epoch(actual)
        if s is not None and a is not None and since <= s <= until:
            out.append(a - s)
    return out


async def hold_idle(target: Target, count: int, group_size: int = 2, batch: int = 250,
                    hello_timeout: float = HELLO_TIMEOUT) -> dict[str, Any]:
    """Open ``count`` sockets (each reads its hello), hold them, and read the target's memory.

    A socket that opens but is not greeted within ``hello_timeout`` is a failure (``TimeoutError``),
    and so is one whose first frame is anything but the target's hello to its participant
    (:class:`NotGreeted`): either is closed at once, as the target must not hold it while its
    memory is read, since ``held`` does not count it.
    """
    api = Api(target.base, target.token)
    ws_base = target.base.replace("http://", "ws://")
    experiment = None
    if target.kind == "server":
        created = await api.call("POST", "/api/experiments", {
            "game": "bimatrix", "participants": count, "group_size": group_size, "period_length": 3600, "block_pause": 0,
        })
        experiment = created["code"]
        codes = [str(p["code"]) for p in created["participants"]]
        paths = [f"/ws/p/{code}" for code in codes]
    else:
        codes = [f"p{i}" for i in range(count)]
        paths = [f"/ws/{i // group_size}/{code}" for i, code in enumerate(codes)]
    await asyncio.sleep(1.0)
    before = rss_bytes(target.pid)
    sockets: list[ClientConnection] = []
    failures: Counter[str] = Counter()
    started = time.perf_counter()

    async def one(i: int) -> None:
        ws = None
        try:
            ws = await open_socket(ws_base + paths[i])
            await greeting(ws, codes[i], hello_timeout)
            sockets.append(ws)
        except Exception as exc:
            failures[type(exc).__name__] += 1
            if ws is not None:
                await close_socket(ws)

    try:
        await in_batches(range(count), batch, one)
        opened = time.perf_counter() - started
        await asyncio.sleep(3.0)  # let the connect events settle
        held = sum(1 for ws in sockets if ws.close_code is None)
        after = rss_bytes(target.pid)
        return {
            "target": target.kind,
            "experiment": experiment,
            "wanted": count,
            "held": held,
            "failures": dict(failures),
            "connect_seconds": opened,
            "target_rss_mb": after / 2**20,
            "target_rss_before_mb": before / 2**20,
            "rss_per_connection_kb": (after - before) / max(held, 1) / 1024,
            "target_peak_rss_mb": rss_bytes(target.pid, "VmHWM") / 2**20,
        }
    finally:
        await in_batches(sockets, 500, close_socket)
