"""The Redis hub: fan-out across processes and hosts through Redis pub/sub.

Each process keeps its own subscribers as the memory hub does and delivers what it publishes to
them at once; every frame also goes to Redis on the topic's channel (``{prefix}:{topic}``) for
the other processes. One publisher task sends what has queued up, in the order it was published,
in one write per turn on a connection of its own (:class:`_Sender`); one listener connection is
subscribed to the channels of the topics this process has subscribers for, and delivers the
frames of other processes as they are read. So frames of one process reach another in the
order they were published, on every channel together. Both connections are spoken to directly
(:mod:`.resp`), not through redis-py, whose per-message work was a fifth of a worker's loop; the
cluster's other commands (leases, heartbeats) use redis-py's pool (:attr:`RedisHub.client`).

Pub/sub is at most once. Every frame of a group topic carries its event's ``seq`` and the
``seq`` before it in that group (``prev``): a frame whose ``prev`` is not the last ``seq`` seen
is a gap, and a reconnect of the listener may have lost anything; either way ``resync(topic)``
is called, and the caller resends the group's state to its members here. A frame older than the
last seen is dropped (a deposed authority's late publish). While Redis is unreachable nothing is
queued for it (:attr:`RedisHub.up` says so, with the reason): what was published meanwhile is
resent as state after the reconnect. The listener pings Redis after a second without a word
from it: a Redis that stops answering (stopped, or the network between cut) is lost after
:data:`ANSWER_WITHIN` seconds, as one that closes the connection is at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ..tasks import ended
from .base import Resync, Subscriber
from .resp import RespConnection

log = logging.getLogger("synclab.hub")
#: the fields of a frame on a Redis channel: origin, seq, prev, to, data
_SEP = "\x1f"
#: frames waiting for the publisher; past this (Redis far slower than us) the oldest are dropped
MAX_QUEUED = 100_000
#: seconds between reconnection attempts, at most
MAX_BACKOFF = 1.0
#: connections to Redis of one process besides the listener's (a command waits for a free one)
MAX_CONNECTIONS = 32
#: seconds of silence after which the listener pings Redis
PING_EVERY = 1.0
#: seconds within which Redis must answer (a ping, a ``PUBLISH``, a connection's log-in), or is lost
ANSWER_WITHIN = 5.0


class RedisHub:
    """Fan-out through Redis for the processes of one cluster (``prefix``), this one named ``origin``."""

    def __init__(self, url: str, *, origin: str, prefix: str = "synclab", resync: Resync | None = None) -> None:
        self.url = url
        self.origin = origin
        self.prefix = prefix
        self.resync = resync
        # a bounded pool that waits for a free connection: redis-py's default raises past 100
        # ("Too many connections") when a burst of commands outruns the round trips
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=MAX_CONNECTIONS, timeout=5, socket_connect_timeout=2, socket_timeout=5
        )
        self._client: aioredis.Redis = aioredis.Redis.from_pool(pool)
        self._topics: dict[str, dict[int, Subscriber]] = {}
        #: per group topic: the last ``seq`` delivered or published here
        self._last: dict[str, int] = {}
        self._outbox: deque[tuple[str, str]] = deque()
        self._wake = asyncio.Event()
        #: the listener's connection while it is open
        self._listener: RespConnection | None = None
        self._subscribed: dict[str, asyncio.Future[None]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        #: whether the listener is connected; :attr:`reason` says why not
        self.up = False
        #: set while :attr:`up`
        self.connected = asyncio.Event()
        self.reason = "not connected yet"
        #: frames dropped because Redis was unreachable or the queue was full (for /api/server)
        self.dropped = 0

    # ------------------------------------------------------------------ life

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._listen()), loop.create_task(self._publish())]

    async def close(self) -> None:
        """Send what is queued (briefly), then stop."""
        self._closing = True
        self._wake.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._tasks[1]), 2.0) if self._tasks else None
        await ended(self._tasks)
        if self._listener is not None:
            self._listener.close()
        with contextlib.suppress(Exception):
            await self._client.aclose()

    @property
    def client(self) -> aioredis.Redis:
        """The connection pool, for the cluster's other commands (leases, heartbeats)."""
        return self._client

    # ------------------------------------------------------------------ the hub

    def subscribe(self, topic: str, subscriber: Subscriber) -> None:
        subscribers = self._topics.get(topic)
        if subscribers is None:
            subscribers = self._topics[topic] = {}
            self._command("subscribe", topic)
        subscribers[id(subscriber)] = subscriber

    def unsubscribe(self, topic: str, subscriber: Subscriber) -> None:
        subscribers = self._topics.get(topic)
        if subscribers is not None:
            subscribers.pop(id(subscriber), None)
            if not subscribers:
                del self._topics[topic]
                self._last.pop(topic, None)
                self._command("unsubscribe", topic)

    def listening(self, topic: str) -> bool:
        # another process may listen: only Redis knows, and asking would cost a round trip
        return True

    def publish(
        self, topic: str, data: str, to: frozenset[str] | None = None, *, seq: int | None = None, prev: int | None = None
    ) -> None:
        if seq is not None:
            self._last[topic] = max(seq, self._last.get(topic, 0))
        for subscriber in list(self._topics.get(topic, {}).values()):
            subscriber.deliver(to, data)
        if not self.up:
            self.dropped += 1
            return
        if len(self._outbox) >= MAX_QUEUED:
            self._outbox.popleft()
            self.dropped += 1
        fields = (self.origin, "" if seq is None else str(seq), "" if prev is None else str(prev), _to(to), data)
        self._outbox.append((self._channel(topic), _SEP.join(fields)))
        self._wake.set()

    async def ready(self, topic: str, wait: float = 5.0) -> None:
        """Until Redis has confirmed this process's subscription to ``topic`` (subscribe first).

        After it, every frame published to the topic by another process reaches this one (or
        the gap shows). Raises :class:`ConnectionError` while Redis is unreachable.
        """
        if topic not in self._topics:
            raise ValueError(f"not subscribed to {topic!r}")
        if not self.up:
            raise ConnectionError(f"Redis is unreachable: {self.reason}")
        future = self._subscribed.get(self._channel(topic))
        if future is not None and not future.done():
            await asyncio.wait_for(asyncio.shield(future), wait)

    def subscribers(self, topic: str) -> list[Subscriber]:
        """This process's subscribers of ``topic`` (to tell them what a resync means for them)."""
        return list(self._topics.get(topic, {}).values())

    def mark(self, topic: str, seq: int) -> None:
        """The group's frames up to ``seq`` are known here (a ``hello`` was read at ``seq``)."""
        self._last[topic] = max(seq, self._last.get(topic, 0))

    # ------------------------------------------------------------------ Redis

    def _channel(self, topic: str) -> str:
        return f"{self.prefix}:{topic}"

    def _command(self, action: str, topic: str) -> None:
        channel = self._channel(topic)
        if action == "subscribe":
            self._subscribed[channel] = asyncio.get_running_loop().create_future()
        else:
            self._subscribed.pop(channel, None)
        listener = self._listener
        if listener is not None and self.up:
            try:
                listener.write(((action.upper(), channel),))
            except ConnectionError as exc:  # the listener notices too, and subscribes again
                log.warning("hub: %s %s failed: %s", action, channel, exc)

    async def _listen(self) -> None:
        backoff = 0.05
        first = True
        while not self._closing:
            listener: RespConnection | None = None
            try:
                listener = await RespConnection.open(self._client.connection_pool, self._heard, within=ANSWER_WITHIN)
                channels = [self._channel(t) for t in self._topics] or [self._channel("hub")]
                for channel in channels:
                    self._subscribed.setdefault(channel, asyncio.get_running_loop().create_future())
                listener.write((("SUBSCRIBE", *channels),))
                self._listener = listener
                self.up, self.reason = True, ""
                self.connected.set()
                backoff = 0.05
                if not first:
                    log.warning("hub: connected to Redis again; resending every group's state here")
                    self._resync_all()
                first = False
                await _watch(listener)
            except (RedisError, OSError, ValueError) as exc:
                if self.up:
                    log.error("hub: lost Redis (%s); retrying", exc)
                self.up, self.reason = False, f"{type(exc).__name__}: {exc}"
                self.connected.clear()
                self._outbox.clear()
                for future in self._subscribed.values():
                    if not future.done():
                        future.set_exception(ConnectionError(self.reason))
                        future.exception()
                self._subscribed = {}
                self._listener = None
                if listener is not None:
                    listener.close()
                await asyncio.sleep(backoff)
                backoff = min(MAX_BACKOFF, backoff * 2)

    def _heard(self, reply: Any) -> None:
        """A reply on the listener's connection: a message, a subscription confirmed, a pong."""
        if type(reply) is not list or len(reply) != 3:
            return  # a pong (two items), or nothing a subscribed connection should hear
        kind, channel, data = reply
        if kind == "message":
            self._handle(channel, data)
        elif kind == "subscribe":
            future = self._subscribed.get(channel)
            if future is not None and not future.done():
                future.set_result(None)

    def _handle(self, channel: str, message: str) -> None:
        """A frame another process published (or this one: skipped, it was delivered here already)."""
        topic = channel[len(self.prefix) + 1:]
        subscribers = self._topics.get(topic)
        origin, seq, prev, to, data = message.split(_SEP, 4)
        if origin == self.origin or not subscribers:
            return  # delivered here when it was published
        if seq:
            last = self._last.get(topic)
            number = int(seq)
            if last is not None and number <= last:
                return  # older than what was delivered: a deposed authority's late frame
            self._last[topic] = number
            if last is not None and prev and int(prev) != last and self.resync is not None:
                self.resync(topic)  # a frame between was lost: the members get the whole state
        targets = None if to == "*" else frozenset(to.split(",")) if to else frozenset()
        for subscriber in list(subscribers.values()):
            subscriber.deliver(targets, data)

    def _resync_all(self) -> None:
        if self.resync is not None:
            for topic in list(self._topics):
                self.resync(topic)

    async def _publish(self) -> None:
        sender: _Sender | None = None
        try:
            while True:
                if not self._outbox:
                    if self._closing:
                        if sender is not None:
                            await sender.answered()
                        return
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                batch = [self._outbox.popleft() for _ in range(min(len(self._outbox), 1000))]
                why = sender.failed() if sender is not None else None
                if why is not None:
                    self._retire(sender, 0, why)
                    sender = None
                try:
                    if sender is None:
                        sender = await _Sender.connect(self._client.connection_pool)
                    sender.send(batch)
                    await sender.drained()
                except (RedisError, OSError, ValueError) as exc:
                    self._retire(sender, len(batch), exc)
                    sender = None
        finally:
            if sender is not None:
                sender.close()

    def _retire(self, sender: _Sender | None, unsent: int, exc: BaseException) -> None:
        """Close a failed sender; what it wrote unanswered, and ``unsent`` frames more, count as lost."""
        lost = unsent + (sender.unanswered if sender is not None else 0)
        if lost:
            self.dropped += lost
            log.warning("hub: %d frames not published: %s", lost, exc)
        if sender is not None:
            sender.close()


class _Sender:
    """The publisher's connection: each batch of ``PUBLISH``es in one write, the answers counted as they come.

    The publisher does not wait for Redis's answers before its next write: a pipeline per turn (its
    bookkeeping, and a wake-up for the answers before the next frames could go) cost about three
    times the CPU of the write itself. Answers are counted as the connection reads them; one that
    has not come within :data:`ANSWER_WITHIN` seconds, or a broken connection, fails the sender
    (:meth:`failed`), and what it wrote and Redis did not answer counts as lost. An error answer (a
    command Redis refused) is logged.
    """

    def __init__(self) -> None:
        self._conn: RespConnection | None = None
        #: ``PUBLISH``es written and not answered yet
        self.unanswered = 0
        #: the loop's time of the last answer, or of the write that followed a time with none due
        self._since = 0.0
        self._done = asyncio.Event()
        self._done.set()

    @classmethod
    async def connect(cls, pool: Any) -> _Sender:
        sender = cls()
        sender._conn = await RespConnection.open(pool, sender._answer, within=ANSWER_WITHIN)
        return sender

    def failed(self) -> BaseException | None:
        """Why the connection is no longer usable, or ``None`` while it is."""
        assert self._conn is not None
        lost = self._conn.lost
        if lost.done():
            return lost.exception()  # always set with the reason (RespConnection._lose)
        if self.unanswered and max(self._since, self._conn.heard) < asyncio.get_running_loop().time() - ANSWER_WITHIN:
            return TimeoutError(f"Redis did not answer {self.unanswered} PUBLISHes within {ANSWER_WITHIN:g} s")
        return None

    def send(self, batch: list[tuple[str, str]]) -> None:
        assert self._conn is not None
        self._conn.write([("PUBLISH", c, p) for c, p in batch])
        if not self.unanswered:
            self._since = asyncio.get_running_loop().time()
        self.unanswered += len(batch)
        self._done.clear()

    async def drained(self) -> None:
        assert self._conn is not None
        await self._conn.drained()

    async def answered(self, wait: float = 2.0) -> None:
        """Until every ``PUBLISH`` written has its answer (closing with unread answers resets the connection)."""
        if self.unanswered and self.failed() is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._done.wait(), wait)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()

    def _answer(self, reply: Any) -> None:
        if isinstance(reply, hiredis.ReplyError):
            log.error("hub: Redis refused a frame: %s", reply)
        self.unanswered -= 1
        if not self.unanswered:
            self._done.set()


async def _watch(connection: RespConnection) -> None:
    """Until the connection is lost (raises why), pinging Redis after :data:`PING_EVERY` seconds of
    silence; silent for :data:`ANSWER_WITHIN` seconds all the same: raises :class:`TimeoutError`."""
    loop = asyncio.get_running_loop()
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(connection.lost), PING_EVERY)
        quiet = loop.time() - connection.heard
        if quiet >= ANSWER_WITHIN:
            raise TimeoutError(f"Redis said nothing for {quiet:.1f} s, though pinged")
        if quiet >= PING_EVERY:
            connection.write((("PING",),))


def _to(to: frozenset[str] | None) -> str:
    return "*" if to is None else ",".join(sorted(to))
