"""Real cluster workers (``synclab serve`` processes on loopback ports) and participants that reconnect.

A :class:`Cluster` starts, kills (SIGKILL), stops (SIGSTOP/SIGCONT) and gracefully ends
(SIGTERM) worker processes that share one PostgreSQL schema and one Redis key prefix. A
:class:`Participant` plays like the JS client: it keeps every decision until acknowledged,
sends it again with the same id after a reconnect or an ``unavailable`` refusal, and moves to
another worker when its socket closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
from sqlalchemy import Engine, text
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from tests.server.harness import timeout
from tests.server.test_cli import CLEARED, CUED, HEALTHY_SECONDS, free_port, listens

#: this checkout: the workers import the test games (tests/cluster/games.py) from it
ROOT = Path(__file__).resolve().parents[2]
TOKEN = "cluster-token"
SYNCLAB = [sys.executable, "-c", "from server.cli import main; raise SystemExit(main())"]
#: the lease of the test clusters: short, so a dead worker's groups move on quickly
LEASE = 2.0
#: the heartbeat's TTL of the test clusters (``SYNCLAB_HEARTBEAT_SECONDS``): a beat every 0.4 s, a
#: dead worker gone 2 s after its last beat and its connections closed 2 s later (at 5 s, 10 to 15 s)
HEARTBEAT = 2.0
#: a busy worker of the test clusters hands a group over once busy for ``SHED_AFTER`` seconds, then
#: one every ``SHED_EVERY`` (±50 %) (``SYNCLAB_SHED_AFTER``, ``SYNCLAB_SHED_EVERY``; at 5 and 2, the
#: defaults, tests/cluster/test_busy.py waited some 9 s on them)
SHED_AFTER = 2.0
SHED_EVERY = 0.5
RETRY_CODES = {"unavailable", "not_persisted"}


#: ``synclab serve``'s exit status when its port is taken (``server.cli.PortRefused``)
PORT_REFUSED = 3


@dataclass
class Worker:
    name: str
    port: int
    log: Path
    process: subprocess.Popen[bytes] | None = None
    #: the worker's next process, started by :meth:`Cluster.ahead` and waiting for its cue file
    ahead: tuple[subprocess.Popen[bytes], Path] | None = None
    #: its port chosen by the harness (``free_port``), not by the test
    chosen: bool = True
    #: it has answered ``/healthz`` from its own process once (:meth:`Cluster.healthy`)
    served: bool = False

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


class Cluster:
    """Worker processes of one cluster: one PostgreSQL schema, one Redis prefix."""

    def __init__(self, tmp_path: Path, database_url: str, redis_url: str, prefix: str) -> None:
        self.tmp_path = tmp_path
        self.env = {k: v for k, v in os.environ.items() if k not in CLEARED}
        self.env.update(
            DATABASE_URL=database_url, REDIS_URL=redis_url, SYNCLAB_CLUSTER=prefix, SYNCLAB_ADMIN_TOKEN=TOKEN,
            SYNCLAB_LEASE_SECONDS=str(LEASE), SYNCLAB_HEARTBEAT_SECONDS=str(HEARTBEAT), SYNCLAB_SHUTDOWN_TIMEOUT="10",
            SYNCLAB_SHED_AFTER=str(SHED_AFTER), SYNCLAB_SHED_EVERY=str(SHED_EVERY), PYTHONUNBUFFERED="1",
        )
        self.workers: dict[str, Worker] = {}
        #: the tracebacks a test expects in a worker's log (a game failing on purpose), by name
        self.tracebacks: dict[str, int] = {}
        #: where the test's part of each worker's log begins (workers shared by tests: :func:`shared_pair`)
        self.since: dict[str, int] = {}
        #: processes started by :meth:`ahead`, for their cue files' names
        self.cues = 0

    def start(self, name: str, port: int | None = None, *options: str) -> Worker:
        """``synclab serve --port P OPTIONS`` as worker ``name`` (again on its port if it ran before)."""
        worker = self.workers.get(name) or Worker(name, port or free_port(), self.tmp_path / f"{name}.log", chosen=port is None)
        self.workers[name] = worker
        with worker.log.open("ab") as log:
            worker.process = subprocess.Popen(
                [*SYNCLAB, "serve", "--port", str(worker.port), *options], cwd=self.tmp_path, env=self.env,
                stdout=log, stderr=subprocess.STDOUT,
            )
        return worker

    def ahead(self, name: str) -> None:
        """Start worker ``name``'s next process now, on its port, its imports done at once but its
        ``synclab serve`` run only when :meth:`cue` says: on a loaded machine the imports are most
        of a start (8 to 20 s), too long where a test needs the worker back within a time."""
        worker = self.workers[name]
        self.cues += 1
        cue = self.tmp_path / f"{name}.cue{self.cues}"
        with worker.log.open("ab") as log:
            process = subprocess.Popen(
                [*CUED, str(cue), "serve", "--port", str(worker.port)], cwd=self.tmp_path, env=self.env,
                stdout=log, stderr=subprocess.STDOUT,
            )
        worker.ahead = (process, cue)

    def imported(self, *names: str, wait: float = HEALTHY_SECONDS) -> None:
        """Until the processes started ahead for workers ``names`` have done their imports."""
        deadline = time.monotonic() + timeout(wait)
        for name in names:
            ahead = self.workers[name].ahead
            assert ahead is not None, f"no process started ahead for {name}"
            while not Path(f"{ahead[1]}.imported").exists():
                if time.monotonic() > deadline or ahead[0].poll() is not None:
                    raise AssertionError(f"the process ahead for {name} did not import: {self.logs(name)}")
                time.sleep(0.05)

    def cue(self, name: str) -> Worker:
        """The process started ahead for worker ``name`` runs ``synclab serve``: it is now the worker's."""
        worker = self.workers[name]
        assert worker.ahead is not None and not worker.alive, f"{name}: nothing ahead, or still running"
        worker.process, cue = worker.ahead
        worker.ahead = None
        cue.touch()
        return worker

    def up(self, *names: str) -> None:
        """Workers ``names`` serving: those not running are started (all at once), then each is waited for."""
        for name in names:
            if name not in self.workers or not self.workers[name].alive:
                self.start(name)
        self.healthy(*names)

    def healthy(self, *names: str, wait: float = HEALTHY_SECONDS) -> None:
        """Until workers ``names`` answer ``/healthz``, each from its own process. Another test
        process's server could take a worker's port between ``free_port`` and the worker's bind,
        and answered for it (with another token: the test's calls were refused); a worker that has
        not served yet on a port the harness chose starts again on another (three times at most)."""
        for name in names:
            worker = self.workers[name]
            deadline = time.monotonic() + timeout(wait)
            moves = 0
            while True:
                try:
                    answered = httpx.get(f"{worker.base}/healthz", timeout=timeout(2)).status_code == 200
                except httpx.TransportError:
                    answered = False
                if answered and worker.process is not None and listens(worker.process.pid, worker.port):
                    worker.served = True
                    break
                taken = not worker.alive and worker.process is not None and worker.process.returncode == PORT_REFUSED
                if taken and worker.chosen and not worker.served and moves < 3:
                    moves += 1
                    worker.port = free_port()
                    self.start(name)
                    deadline = time.monotonic() + timeout(wait)
                    continue
                if time.monotonic() > deadline or not worker.alive:
                    raise AssertionError(f"worker {name} did not come up: {self.logs(name)}")
                time.sleep(0.05)

    async def serving(self, *names: str, wait: float = HEALTHY_SECONDS) -> None:
        """:meth:`healthy` on a thread: an async test's participants play on meanwhile (called on
        the event loop, it held their frames, pings and decisions up for as long as a start takes)."""
        await asyncio.to_thread(self.healthy, *names, wait=wait)

    async def exited(self, name: str, wait: float = 20) -> int:
        """:meth:`wait` on a thread (see :meth:`serving`)."""
        return await asyncio.to_thread(self.wait, name, wait)

    def signal(self, name: str, sig: signal.Signals) -> None:
        worker = self.workers[name]
        assert worker.process is not None
        worker.process.send_signal(sig)

    def wait(self, name: str, wait: float = 20) -> int:
        worker = self.workers[name]
        assert worker.process is not None
        return worker.process.wait(timeout(wait))

    def logs(self, name: str) -> str:
        return self.log_text(name)[-4000:]

    def log_text(self, name: str) -> str:
        """Worker ``name``'s log, this test's part (all of it unless the workers are shared)."""
        with self.workers[name].log.open("rb") as log:
            log.seek(self.since.get(name, 0))
            return log.read().decode(errors="replace")

    def stop_all(self) -> None:
        for worker in self.workers.values():
            if worker.ahead is not None:  # never cued: it ends at SIGTERM (Python's default)
                worker.ahead[0].terminate()
                worker.ahead[0].wait(timeout(20))
                worker.ahead = None
            if worker.process is not None and worker.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.send_signal(signal.SIGCONT)
                    worker.process.send_signal(signal.SIGTERM)
        hung = []
        for name, worker in self.workers.items():
            if worker.process is not None:
                try:
                    worker.process.wait(timeout(20))
                except subprocess.TimeoutExpired:  # its shutdown logs where it waits after 10 s
                    worker.process.kill()
                    worker.process.wait(timeout(10))
                    hung.append(f"worker {name} did not end within 20 s of SIGTERM: {self.logs(name)}")
        assert not hung, "\n".join(hung)

    def http(self, name: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.workers[name].base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=timeout(10),
            limits=httpx.Limits(keepalive_expiry=1.0),  # before the server's keep-alive (5 s) ends them
        )


@dataclass
class Participant:
    """A participant's page, in short: reconnects to the next worker, keeps decisions until acked."""

    code: str
    urls: list[str]
    frames: list[dict[str, Any]] = field(default_factory=list)
    #: frame id -> decision, until acknowledged
    pending: dict[str, Any] = field(default_factory=dict)
    #: frame id -> the seq it was acknowledged with
    acked: dict[str, int] = field(default_factory=dict)
    hellos: int = 0
    closes: list[int | None] = field(default_factory=list)
    ws: ClientConnection | None = None
    _task: asyncio.Task[None] | None = None
    _turn: int = 0
    _stop: bool = False
    _count: int = 0
    connected: asyncio.Event = field(default_factory=asyncio.Event)

    def start(self, first: int = 0) -> None:
        self._turn = first
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        for _ in range(200):
            if self._stop:
                return
            url = self.urls[self._turn % len(self.urls)]
            self._turn += 1
            try:
                async with connect(f"{url}/ws/p/{self.code}", open_timeout=timeout(5), close_timeout=2) as ws:
                    self.ws = ws
                    async for raw in ws:
                        await self._on(ws, orjson.loads(raw))
                self.closes.append(ws.close_code)
            except (OSError, TimeoutError, InvalidStatus, WebSocketException) as exc:
                code = exc.rcvd.code if isinstance(exc, ConnectionClosed) and exc.rcvd is not None else None
                self.closes.append(code)
            finally:
                self.ws = None
                self.connected.clear()
            if self._stop:
                return
            await asyncio.sleep(0.2)

    async def _on(self, ws: ClientConnection, frame: dict[str, Any]) -> None:
        self.frames.append(frame)
        channel, payload = frame["channel"], frame.get("payload")
        if channel == "hello":
            self.hellos += 1
            self.connected.set()
            for frame_id, value in list(self.pending.items()):
                await self._send(ws, value, frame_id)
        elif channel == "ack":
            self.pending.pop(payload["id"], None)
            self.acked[payload["id"]] = payload["seq"]
        elif channel == "error" and payload.get("id") in self.pending:
            if payload.get("code") in RETRY_CODES:
                asyncio.get_running_loop().call_later(0.3, lambda: asyncio.ensure_future(self._resend(ws, payload["id"])))
            else:
                self.pending.pop(payload["id"], None)

    async def _resend(self, ws: ClientConnection, frame_id: str) -> None:
        if frame_id in self.pending and self.ws is ws:
            with contextlib.suppress(ConnectionClosed):
                await self._send(ws, self.pending[frame_id], frame_id)

    async def _send(self, ws: ClientConnection, value: Any, frame_id: str) -> None:
        await ws.send(orjson.dumps({"channel": "decisions", "payload": value, "id": frame_id}).decode())

    async def decide(self, value: Any) -> str:
        """Send a decision now if connected (else after the next hello); returns its id."""
        self._count += 1
        frame_id = f"{self.code[:6]}-{self._count}"
        self.pending[frame_id] = value
        ws = self.ws
        if ws is not None and self.connected.is_set():
            with contextlib.suppress(ConnectionClosed):
                await self._send(ws, value, frame_id)
        return frame_id

    def states(self) -> list[Any]:
        return [f["payload"] for f in self.frames if f["channel"] == "state"]

    async def stop(self) -> None:
        self._stop = True
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await self.ws.close()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._task, timeout(5))


def stored_ids(engine: Engine, experiment_code: str) -> dict[str, list[int]]:
    """Every stored client id of the experiment with the seqs it was stored at (more than one: twice)."""
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT e.client_id, e.seq FROM events e JOIN experiments x ON x.id = e.experiment_id "
            "WHERE x.code = :code AND e.client_id IS NOT NULL"
        ), {"code": experiment_code}).all()
    found: dict[str, list[int]] = {}
    for client_id, seq in rows:
        found.setdefault(str(client_id), []).append(int(seq))
    return found


def seqs(engine: Engine, experiment_code: str) -> list[int]:
    with engine.connect() as conn:
        return [int(s) for s in conn.execute(text(
            "SELECT e.seq FROM events e JOIN experiments x ON x.id = e.experiment_id WHERE x.code = :code ORDER BY e.seq"
        ), {"code": experiment_code}).scalars()]


def ticks(engine: Engine, experiment_code: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(text(
            "SELECT t.kind, t.index, t.late, t.scheduled_at, t.actual_at FROM ticks t JOIN groups g ON g.id = t.group_id "
            "JOIN experiments x ON x.id = g.experiment_id WHERE x.code = :code ORDER BY t.scheduled_at, t.kind DESC"
        ), {"code": experiment_code}).mappings()]


def running_cluster(tmp_path: Path, postgres_url: str, redis_url: str, redis_prefix: str) -> Iterator[Cluster]:
    """The ``cluster`` fixture's body (tests/cluster/conftest.py, tests/browser): the workers are
    ended after the test, and their logs checked for any failure."""
    made = Cluster(tmp_path, postgres_url, redis_url, redis_prefix)
    try:
        yield made
    finally:
        made.stop_all()
    check_tracebacks(made)


def check_tracebacks(cluster: Cluster) -> None:
    """No worker failed on anything along the way (but what the test expects: counted in the test's whole log)."""
    for name in cluster.workers:
        expected = cluster.tracebacks.get(name, 0)
        text = cluster.log_text(name) if expected else cluster.logs(name)
        assert text.count("Traceback") == expected, cluster.logs(name)


def shared_pair(tmp_path: Path, database_url: str, redis_url: str, prefix: str) -> Iterator[Cluster]:
    """Workers w1 and w2 for every test of a test process that only plays on them (starts, kills,
    stops or restarts none): started once (two workers' start cost 3-4 s a test, 10-20 s on a
    loaded machine), ended after the last. The game of tests/cluster/games.py is importable."""
    made = Cluster(tmp_path, database_url, redis_url, prefix)
    made.env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), made.env.get("PYTHONPATH", "")) if p)
    try:
        yield made
    finally:
        made.stop_all()


def pair_for_a_test(shared: Cluster) -> Iterator[Cluster]:
    """The ``pair`` fixture's body: the shared workers up (started again if one ended), the test's part
    of their logs marked; after the test, both still up and no traceback in that part but those expected."""
    shared.up("w1", "w2")
    shared.since = {name: worker.log.stat().st_size for name, worker in shared.workers.items()}
    shared.tracebacks = {}
    try:
        yield shared
        ended = [name for name, worker in shared.workers.items() if not worker.alive]
        assert not ended, f"a test on the shared workers ended {ended}: {[shared.logs(n) for n in ended]}"
        check_tracebacks(shared)
    finally:
        shared.since, shared.tracebacks = {}, {}
