"""A real server on port 0, real WebSocket clients, and an HTTP client for the REST API."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import uvicorn
from sqlalchemy import update
from websockets.asyncio.client import ClientConnection, connect

from server.app import create_app
from server.frames import WEBSOCKET_OPTIONS, WS_MAX_SIZE
from server.runtime import Runtime
from server.settings import Settings
from server.storage import experiments, make_engine

TOKEN = "test-admin-token"
#: every wait in the tests scales by this factor (slow machines: SYNCLAB_TEST_TIMEOUT_FACTOR=3)
FACTOR = float(os.environ.get("SYNCLAB_TEST_TIMEOUT_FACTOR", "1"))


#: seconds the harness's REST client waits for an answer (see :func:`running_server`)
HTTP_SECONDS = 20.0


def timeout(seconds: float) -> float:
    return seconds * FACTOR


class Client:
    """A participant's WebSocket that collects frames as they come."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.frames: list[dict[str, Any]] = []
        self._cursor = 0

    async def send(self, channel: str, payload: Any, frame_id: str | None = None) -> None:
        frame: dict[str, Any] = {"channel": channel, "payload": payload}
        if frame_id is not None:
            frame["id"] = frame_id
        await self.ws.send(orjson.dumps(frame).decode())

    async def send_raw(self, data: str | bytes) -> None:
        await self.ws.send(data)

    async def next(self, wait: float = 5.0) -> dict[str, Any]:
        """The next frame not yet returned."""
        if self._cursor < len(self.frames):
            self._cursor += 1
            return self.frames[self._cursor - 1]
        try:
            raw = await asyncio.wait_for(self.ws.recv(), timeout(wait))
        except TimeoutError as exc:  # say what did come, for a failure's reader
            last = str(self.frames[-1])[:300] if self.frames else "none"
            raise TimeoutError(
                f"no frame within {timeout(wait):g} s; {len(self.frames)} came before it, the last: {last}"
            ) from exc
        frame: dict[str, Any] = orjson.loads(raw)
        self.frames.append(frame)
        self._cursor += 1
        return frame

    async def expect(self, channel: str, wait: float = 5.0) -> dict[str, Any]:
        """Skip frames until one on ``channel`` arrives."""
        async with asyncio.timeout(timeout(wait)):
            while True:
                frame = await self.next(wait)
                if frame["channel"] == channel:
                    return frame

    async def silent(self, wait: float = 0.3) -> bool:
        """True when no frame arrives within ``wait`` seconds."""
        try:
            await self.next(wait)
        except TimeoutError:
            return True
        self._cursor -= 1
        return False

    async def close(self) -> None:
        await self.ws.close()


@dataclass
class Harness:
    base: str
    runtime: Runtime
    http: httpx.AsyncClient
    clients: list[Client] = field(default_factory=list)

    @property
    def ws_base(self) -> str:
        return self.base.replace("http://", "ws://")

    async def create(self, **body: Any) -> dict[str, Any]:
        body.setdefault("game", "bimatrix")
        body.setdefault("participants", 2)
        body.setdefault("group_size", 2)
        response = await self.http.post("/api/experiments", json=body)
        assert response.status_code == 201, response.text
        result: dict[str, Any] = response.json()
        return result

    async def connect(self, code: str, path: str | None = None) -> Client:
        ws = await connect(
            f"{self.ws_base}{path or '/ws/p/' + code}",
            max_size=WS_MAX_SIZE,
            max_queue=None,  # never pause reading: a close must not wait behind unread frames
            open_timeout=timeout(5),
            close_timeout=timeout(2),
        )
        client = Client(ws)
        self.clients.append(client)
        return client

    async def monitor(self, code: str, token: str | None = None) -> Client:
        """The monitor socket of experiment ``code``, authenticated by its first frame (the token is in no URL)."""
        client = await self.connect(code, f"/ws/monitor/{code}")
        await client.send("auth", {"token": self.runtime.admin_token if token is None else token})
        return client

    async def events(self, code: str) -> list[dict[str, Any]]:
        """Every stored event of experiment ``code``, through the API."""
        rows: list[dict[str, Any]] = []
        page = 1
        while True:
            response = await self.http.get(f"/api/experiments/{code}/events", params={"page": page, "page_size": 1000})
            assert response.status_code == 200, response.text
            body = response.json()
            rows.extend(body["results"])
            if body["next"] is None:
                return rows
            page += 1


@contextlib.asynccontextmanager
async def running_server(database_url: str, *, ws: Any = None, **settings: Any) -> AsyncIterator[Harness]:
    """A server of the app on a free port; ``ws``: uvicorn's WebSocket protocol, if not ``synclab serve``'s."""
    settings.setdefault("admin_token", TOKEN)
    settings.setdefault("journal_size", 4 * 1024 * 1024)  # the default's 64 MiB, per test, added up to GBs
    app = create_app(Settings(database_url=database_url, **settings))
    options = {**WEBSOCKET_OPTIONS, **({"ws": ws} if ws is not None else {})}
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", **options)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    # generous: the lifespan makes the schema (every migration) before uvicorn listens, 2 s with two
    # busy loops beside this process, more on a machine running three workers and other suites
    async with asyncio.timeout(timeout(START_SECONDS)):
        while not server.started:
            if task.done():
                task.result()
                raise AssertionError("the test server ended before it started (its lifespan failed? see the log)")
            await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    token = app.state.runtime.admin_token
    # idle connections are dropped before the server's keep-alive (5 s) ends them: a request sent
    # on a connection the server is closing at that moment would fail (httpx.ReadError)
    limits = httpx.Limits(keepalive_expiry=1.0)
    # not httpx's 5 s: a call that writes waits for syncs of the disk one after the other (an
    # experiment's end: its status, then each group's control event), and on a CI machine whose
    # disk the other tests keep busy that once took over 5 s; a server that hangs still fails
    wait = httpx.Timeout(timeout(HTTP_SECONDS))
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {token}"}, limits=limits,
                                 timeout=wait) as http:
        harness = Harness(base, app.state.runtime, http)
        try:
            yield harness
        finally:
            for client in harness.clients:
                with contextlib.suppress(Exception):
                    await client.close()
            server.should_exit = True
            await _stopped(server, task)


async def until_state(client: Client, value: str, wait: float = 10.0) -> dict[str, Any]:
    async with asyncio.timeout(timeout(wait)):
        while True:
            frame = await client.expect("state", wait)
            if frame["payload"] == value:
                return frame


@contextlib.contextmanager
def holding_writes(database_url: str) -> Iterator[None]:
    """An open transaction that has updated every experiment's row, rolled back on leaving.

    The writer's next batch waits inside the database until then, as behind any slow commit:
    on SQLite for the write lock, on PostgreSQL for the lock of its experiment's row (so at
    least one experiment must exist, the one the batch writes to).
    """
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            held = conn.begin()
            try:
                conn.execute(update(experiments).values(last_seq=experiments.c.last_seq))
                yield
            finally:
                held.rollback()
    finally:
        engine.dispose()


async def eventually(check: Callable[[], Any], wait: float = 5.0) -> None:
    """Wait (bounded) until ``check()`` holds."""
    for _ in range(int(timeout(wait) / 0.01)):
        if check():
            return
        await asyncio.sleep(0.01)
    raise TimeoutError(f"still not true after {timeout(wait)} s")


async def until_queued(database: Any, count: int, wait: float = 5.0) -> None:
    """Wait until exactly ``count`` writes and jobs wait in the writer thread's queue."""
    step = 0.005
    for _ in range(int(timeout(wait) / step)):
        if database.writer.queued() == count:
            return
        await asyncio.sleep(step)
    raise AssertionError(f"expected {count} items queued for the writer, {database.writer.queued()} after {wait} s")


#: seconds a test server has to start (its schema made, its socket listening) before it is a failure
START_SECONDS = 60.0
#: seconds a test server has to stop (its sockets closed, its lifespan ended) before it is a failure
STOP_SECONDS = 20.0


async def _stopped(server: uvicorn.Server, task: asyncio.Task[None]) -> None:
    """Until the server's task ends; a stop that hangs fails with the stack of every task still
    running (what it waits for), and the server is forced down so the run goes on."""
    done, _ = await asyncio.wait({task}, timeout=timeout(STOP_SECONDS))
    if done:
        task.result()
        return
    stacks = []
    for other in asyncio.all_tasks():
        if other is not asyncio.current_task():
            stacks.append(f"{other.get_name()}: {' -> '.join(_awaiting(other.get_coro())) or other!r}")
    server.force_exit = True
    with contextlib.suppress(TimeoutError, Exception):
        await asyncio.wait_for(task, timeout(5))
    raise AssertionError(f"the test server did not stop in {STOP_SECONDS:g} s; tasks still running:\n" + "\n".join(stacks))


def _awaiting(coroutine: Any) -> list[str]:
    """Where a task's coroutine waits, outermost first, down the chain of what each awaits."""
    chain = []
    for _ in range(50):
        frame = getattr(coroutine, "cr_frame", None) or getattr(coroutine, "gi_frame", None)
        if frame is None:
            break
        chain.append(f"{frame.f_code.co_name} ({frame.f_code.co_filename.rsplit('/', 1)[-1]}:{frame.f_lineno})")
        coroutine = getattr(coroutine, "cr_await", None) or getattr(coroutine, "gi_yieldfrom", None)
    return chain

