"""The open-loop load generator: real WebSocket participants on a fixed send schedule.

One process, one event loop. Send ``j`` (0-based) is due at ``T0 + j / (N * R)``: it is
participant ``j % N``'s decision number ``k = j // N + 1``, so the offered load is uniform and
each participant sends every ``1 / R`` seconds. The sender never waits for a reply; when it falls
behind it sends what is due at once, and how late each send left is its *send lag* (a saturated
generator shows there, not as a slower offered rate).

Each decision's value is its number ``k`` (``public_goods`` with an endowment of 1e9 accepts any
of them), and ``group_decisions`` carries the whole group's current decisions, so a member's
receipt of value ``k`` from sender ``s`` identifies the send. Sends of one participant are
numbered in order and each accepted decision is broadcast by itself, so a member that sees
``k`` from ``s`` after ``k' < k`` counts ``k`` as received then; a ``k`` skipped over was lost
for that member.

Against a cluster every group is spread over the workers: member ``m`` of group ``g`` connects
to worker ``(g + m * W // G) % W`` (:func:`worker_of`), and the first member of every group
connects (and is greeted) before any other, so the worker of member 0, which alternates with
``g``, takes the group: each worker serves ``1/W`` of the groups and holds ``1/W`` of the members
of each.

See ``bench/README.md`` for what every measure means.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import gc
import math
import os
import re
import time
import urllib.error
import urllib.request
from array import array
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.speedups import apply_mask
from websockets.streams import StreamReader

from .proc import Cluster, Target, rss_bytes, thread_times, threads_used
from .services import Meter, Processes, Reading, RedisServer, used

#: the endowment of the benchmark's public goods game: every decision number is a valid contribution
ENDOWMENT = 1e9
#: the period outlasts connecting, the run and the grace by this much (it is ended after the run)
PERIOD_MARGIN = 120.0
CONNECT_BATCH = 200
OPEN_TIMEOUT = 30.0
HELLO_TIMEOUT = 30.0
START_TIMEOUT = 60.0
HTTP_TIMEOUT = 60.0
#: the schedule begins this long after every group has started
LEAD_SECONDS = 0.5
WS_MAX_SIZE = 1024 * 1024


@dataclass(frozen=True)
class Load:
    """What to offer: N participants in groups of G, R decisions/s each, for D seconds."""

    participants: int
    group_size: int
    rate: float
    duration: float
    #: seconds per subperiod (server only; ``None``: continuous time)
    subperiod: float | None = None
    #: how long after the last send receipts are still waited for
    grace: float = 3.0
    #: a monitor reads the experiment live throughout (server only: ``WS /ws/monitor/{code}``), as
    #: a lab's experimenter does
    monitor: bool = False

    def __post_init__(self) -> None:
        if self.participants < 1 or self.group_size < 2 or self.participants % self.group_size:
            raise ValueError(
                f"expected participants a multiple of group_size >= 2, got {self.participants} and {self.group_size}"
            )
        if not (self.rate > 0 and self.duration > 0):
            raise ValueError(f"expected a rate and a duration > 0, got {self.rate} and {self.duration}")

    @property
    def sends_per_participant(self) -> int:
        return max(1, round(self.rate * self.duration))

    @property
    def total(self) -> int:
        return self.participants * self.sends_per_participant


class StampedConnection(ClientConnection):
    """A client socket that notes when the bytes of each text frame were read off the socket.

    A burst of frames read at once all get the time of that read, so the time the generator
    spends handling the first frames of a burst is not counted as latency of the last ones.

    Once it takes frames as they are read (:attr:`on_text`) and ``websockets``' parser stands
    between two frames, the socket reads the frames itself (:meth:`_take_frames`): a whole,
    unmasked, unfragmented text frame goes to :attr:`on_text` at once, and any other frame (a
    close, a ping, a fragment, one over the size limit or not UTF-8) whole to ``websockets``, which
    so only ever sees whole frames and handles those as before. ``websockets``' parsing and its
    connection's bookkeeping were a third of the generator's CPU at 3,000 decisions a second
    (py-spy), where the generator lagged its schedule by over 2 ms at p99 on a slow machine.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stamps: deque[float] = deque()
        self._read_at = 0.0
        #: takes each whole text frame as it is read, with its stamp, once set (after the hello):
        #: no message assembled and no reader task woken per frame, so the generator keeps its
        #: schedule at 3,000 decisions a second. While frames queued before are still unread,
        #: what comes queues behind them: the order holds.
        self.on_text: Callable[[str, float], None] | None = None
        #: bytes read and not yet a whole frame, once the socket reads frames itself (else ``None``)
        self._unparsed: bytearray | None = None
        #: text frames the socket read itself, and frames it passed whole to ``websockets``
        self.direct = 0
        self.passed = 0
        #: when set, every read's handling is noted here as its start and end (perf_counter
        #: seconds, flat): the time the generator spent on what the target sent (see
        #: :func:`own_lags`); the run's sockets share one
        self.spans: array[float] | None = None

    def data_received(self, data: bytes) -> None:
        self._read_at = start = time.perf_counter()
        try:
            self._received(data)
        finally:
            if self.spans is not None:
                self.spans.append(start)
                self.spans.append(time.perf_counter())

    def _received(self, data: bytes) -> None:
        if self._unparsed is None:
            if not self._between_frames():
                super().data_received(data)
                return
            self._unparsed = bytearray()
        self._unparsed += data
        self._take_frames()

    def eof_received(self) -> None:
        if self._unparsed:  # a frame cut short: websockets says so as it would have
            self._pass(bytes(self._unparsed))
            self._unparsed.clear()
        super().eof_received()

    def _between_frames(self) -> bool:
        """Whether the socket may read frames itself from now on: frames are taken as they are
        read, none is queued, and ``websockets``' parser waits for the first byte of a frame (it
        holds no bytes, and waits in :meth:`StreamReader.at_eof`, where its loop begins a frame)."""
        protocol = self.protocol
        if (
            self.on_text is None
            or self.stamps
            or protocol.state is not State.OPEN
            or protocol.current_size is not None
            or protocol.reader.buffer
        ):
            return False
        waiting: Any = protocol.parser
        while getattr(waiting, "gi_yieldfrom", None) is not None:
            waiting = waiting.gi_yieldfrom
        return getattr(waiting, "gi_code", None) is StreamReader.at_eof.__code__

    def _take_frames(self) -> None:
        """Every whole frame read so far: text to :attr:`on_text`, the rest to ``websockets``."""
        assert self._unparsed is not None
        buffer, at = self._unparsed, 0
        size = len(buffer)
        while size - at >= 2:
            head1, head2 = buffer[at], buffer[at + 1]
            length, start = head2 & 0x7F, at + 2
            if length == 126:
                if size - start < 2:
                    break
                length, start = int.from_bytes(buffer[start:start + 2], "big"), start + 2
            elif length == 127:
                if size - start < 8:
                    break
                length, start = int.from_bytes(buffer[start:start + 8], "big"), start + 8
            if head2 & 0x80 or length > WS_MAX_SIZE:
                # a masked frame from a server, or one over the limit: websockets fails the
                # connection as it would have; whatever follows is its to read, too
                self._pass(bytes(buffer[at:]))
                buffer.clear()
                return
            end = start + length
            if end > size:
                break
            text = None
            on_text = self.on_text
            if head1 == 0x81 and on_text is not None and not self.stamps and self.protocol.current_size is None:
                with contextlib.suppress(UnicodeDecodeError):
                    text = buffer[start:end].decode()
            if text is not None:
                assert on_text is not None
                self.direct += 1
                on_text(text, self._read_at)
            else:
                self._pass(bytes(buffer[at:end]))
            at = end
        del buffer[:at]

    def _pass(self, data: bytes) -> None:
        self.passed += 1
        super().data_received(data)

    def process_event(self, event: Any) -> None:
        if isinstance(event, Frame) and event.opcode is Opcode.TEXT:
            on_text = self.on_text
            if on_text is not None and event.fin and not self.stamps:
                on_text(bytes(event.data).decode(), self._read_at)
                return
            self.stamps.append(self._read_at)
        super().process_event(event)

    def write_frame(self, frame: bytes) -> bool:
        """Write a whole, masked client frame (:func:`masked_text_frame`) to the socket at once;
        ``False`` (nothing written) when it must go the ordinary way: the socket is not open, a
        fragmented message is being sent, or the transport still holds unsent bytes."""
        transport = self.transport
        if (
            self.protocol.state is not State.OPEN
            or self.protocol.expect_continuation_frame
            or transport.is_closing()
            or transport.get_write_buffer_size()
        ):
            return False
        transport.write(frame)
        return True


def masked_text_frame(payload: bytes, key: bytes) -> bytes:
    """A whole client text frame of ``payload`` masked with the 4 bytes of ``key`` (RFC 6455 5.2)."""
    length = len(payload)
    if length < 126:
        head = bytes((0x81, 0x80 | length))
    elif length < 1 << 16:
        head = bytes((0x81, 0x80 | 126)) + length.to_bytes(2, "big")
    else:
        head = bytes((0x81, 0x80 | 127)) + length.to_bytes(8, "big")
    return head + key + apply_mask(payload, key)


class Api:
    """The REST API through urllib on a thread (the benchmark needs no HTTP client package)."""

    def __init__(self, base: str, token: str) -> None:
        self.base = base
        self.token = token

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        return await asyncio.to_thread(self._call, method, path, body)

    def _call(self, method: str, path: str, body: Any) -> Any:
        data = None if body is None else orjson.dumps(body)
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:
                return orjson.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"{method} {path}: HTTP {exc.code}: {exc.read()[:500]!r}") from None

    async def create(self, load: Load, period_length: float) -> dict[str, Any]:
        body: dict[str, Any] = {
            "game": "public_goods",
            "participants": load.participants,
            "group_size": load.group_size,
            "period_length": period_length,
            "block_pause": 0,
            "config": {"endowment": ENDOWMENT},
        }
        if load.subperiod is not None:
            body["num_subperiods"] = max(1, round(period_length / load.subperiod))
        created: dict[str, Any] = await self.call("POST", "/api/experiments", body)
        return created

    async def decisions(self, code: str) -> set[tuple[str, int]]:
        """Every stored ``decisions`` event of experiment ``code`` as (participant, value), read page by page."""
        stored: set[tuple[str, int]] = set()
        after = 0
        while True:
            page = await self.call("GET", f"/api/experiments/{code}/events?after_seq={after}&page_size=1000")
            for row in page["results"]:
                after = max(after, int(row["seq"]))
                if row["channel"] == "decisions" and row["participant"] is not None:
                    stored.add((row["participant"], int(row["value"])))
            if page["next"] is None or not page["results"]:
                return stored


class Peer:
    """One participant's socket in the generator and what it received."""

    def __init__(self, index: int, code: str, ws: StampedConnection, run: Run, members: list[str]) -> None:
        self.index = index
        self.code = code
        self.ws = ws
        self.run = run
        #: the group's member codes as the hello named them
        self.members = members
        self.started = asyncio.Event()
        #: per sender index: the highest decision number seen from it
        self.last: dict[int, int] = {}
        #: (sender index, decision number, receipt time)
        self.receipts: list[tuple[int, int, float]] = []
        self.task: asyncio.Task[None] | None = None

    async def read(self) -> None:
        """What came before the socket took frames as they are read, then nothing but its close."""
        stamps = self.ws.stamps
        self.ws.on_text = self.take
        with contextlib.suppress(Exception):
            async for raw in self.ws:
                self.take(raw, stamps.popleft())

    def take(self, raw: str | bytes, now: float) -> None:
        """One frame read at ``now``."""
        run = self.run
        frame = orjson.loads(raw)
        channel = frame.get("channel")
        run.channels[channel] += 1
        if channel == "group_decisions":
            index_of, last, receipts = run.index_of, self.last, self.receipts
            for code, value in frame["payload"].items():
                sender = index_of.get(code)
                if sender is None or not isinstance(value, int | float):
                    continue
                k = int(value)
                if k > last.get(sender, 0):
                    last[sender] = k
                    receipts.append((sender, k, now))
                    run.received += 1
                    if run.received >= run.expected:
                        run.check_complete()
        elif channel == "ack":
            k = int(frame["payload"]["id"])
            run.acks.append((self.index, k, now))
            if len(run.acks) >= run.load.total:
                run.check_complete()
        elif channel == "error":
            run.error(frame["payload"])
        elif channel == "state" and frame.get("payload") == "period_start":
            self.started.set()


#: distinct messages kept per error code
MESSAGES_KEPT = 5
_NUMBER = re.compile(r"\d+(\.\d+)?")


#: a commit that took longer (ms) is slow (the server's buckets are named by their upper bound, then "more")
SLOW_COMMIT_MS = 20


def slow_bucket(name: str) -> bool:
    return name == "more" or int(name) > SLOW_COMMIT_MS


@dataclass
class Run:
    """The raw record of one load run; :meth:`summary` reduces it."""

    target: str
    load: Load
    codes: list[str] = field(default_factory=list)
    index_of: dict[str, int] = field(default_factory=dict)
    #: per send j: when it was due, when it left (perf_counter seconds; NaN: not sent)
    due: array[float] = field(default_factory=lambda: array("d"))
    sent_at: array[float] = field(default_factory=lambda: array("d"))
    #: the generator's handling of what it read during the sends, as (start, end) flat and in
    #: order (:attr:`StampedConnection.spans`)
    read_spans: array[float] = field(default_factory=lambda: array("d"))
    #: per send j: its whole masked frame (see :meth:`StampedConnection.write_frame`)
    masked: list[bytes] = field(default_factory=list)
    #: per participant: its group's members (indices), itself included
    groups: list[list[int]] = field(default_factory=list)
    peers: list[Peer] = field(default_factory=list)
    #: receipts counted so far, and how many there are when every member got every send
    received: int = 0
    expected: int = -1
    complete: asyncio.Event = field(default_factory=asyncio.Event)
    acks: list[tuple[int, int, float]] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    #: frames received after the first hello, per channel: a ``hello`` here is a member greeted
    #: again (a cluster worker resending the group's state after it saw a gap, or a reconnect)
    channels: Counter[str | None] = field(default_factory=Counter)
    #: per error code, the first few distinct messages (their numbers replaced by N, so a message
    #: naming a group or a worker counts once)
    error_messages: dict[str, Counter[str]] = field(default_factory=dict)
    experiment: str | None = None
    t0: float = 0.0
    wall0: float = 0.0
    last_send: float = 0.0
    wall_end: float = 0.0
    window: float = 0.0
    target_cpu: float | None = None
    target_rss: int | None = None
    target_peak_rss: int | None = None
    generator_cpu: float = 0.0
    #: what the monitor read (``Load.monitor``): frames, bytes, event rows; ``None``: no monitor
    monitor: dict[str, int] | None = None
    #: sends written as whole frames by the generator (the rest through websockets' ``send``)
    written_directly: int = 0
    #: (participant code, value) of every stored decision (server only)
    stored: set[tuple[str, int]] | None = None
    #: seconds each subperiod tick ran after it was due (server with subperiods only)
    tick_lateness: list[float] | None = None
    #: the server's writer over the sends (server only): batches, writes and events committed, and
    #: ``commit_ms``, the commits by wall time (see server.storage.EventWriter.commit_ms); a
    #: cluster's workers' summed
    writer: dict[str, Any] | None = None
    #: CPU seconds per process kind over the window (``target``: the target's processes; ``redis``,
    #: ``postgres``, ``postgres-bg`` when measured)
    cpu: dict[str, float] = field(default_factory=dict)
    #: commands Redis processed over the window (every client's), when Redis is measured
    redis_commands: int | None = None
    #: a one-process target's threads over the window (:func:`.proc.threads_used`): its main
    #: thread (the event loop), the others together, and the busiest other (a server's writer)
    threads: dict[str, dict[str, float]] | None = None
    #: per worker of a cluster: the groups it served at the end of the sends
    groups_served: list[int] | None = None

    def error(self, payload: dict[str, Any]) -> None:
        """An error frame: counted by its code, and a sample of its messages kept."""
        code = str(payload.get("code"))
        self.errors[code] += 1
        messages = self.error_messages.setdefault(code, Counter())
        message = _NUMBER.sub("N", str(payload.get("message")))[:200]
        if message in messages or len(messages) < MESSAGES_KEPT:
            messages[message] += 1

    def check_complete(self) -> None:
        """Set :attr:`complete` once every member received every send and every send was acknowledged."""
        if 0 <= self.expected <= self.received and len(self.acks) >= self.load.total:
            self.complete.set()

    def send_index(self, sender: int, k: int) -> int:
        return (k - 1) * self.load.participants + sender

    def summary(self) -> dict[str, Any]:
        """Rates, latencies, losses and resource use of the run (see bench/README.md)."""
        load, n = self.load, self.load.participants
        total = load.total
        sent = [j for j in range(total) if not math.isnan(self.sent_at[j])]
        latencies: list[float] = []
        reached = array("I", bytes(4 * total))
        last_receipt = self.t0
        for peer in self.peers:
            for sender, k, t in peer.receipts:
                if not 1 <= k <= load.sends_per_participant:
                    continue
                j = self.send_index(sender, k)
                if math.isnan(self.sent_at[j]):
                    continue
                reached[j] += 1
                latencies.append(t - self.sent_at[j])
                last_receipt = max(last_receipt, t)
        acked = {self.send_index(i, k) for i, k, _ in self.acks if 1 <= k <= load.sends_per_participant}
        ack_latencies = [t - self.sent_at[self.send_index(i, k)] for i, k, t in self.acks if 1 <= k <= load.sends_per_participant]
        expected = {j: len(self.groups[j % n]) for j in sent}
        lost = sum(1 for j in sent if reached[j] < expected[j])
        complete = sum(1 for j in sent if reached[j] >= expected[j])
        lost_deliveries = sum(expected[j] - reached[j] for j in sent)
        seen = {j for j in sent if reached[j] > 0} | acked
        result: dict[str, Any] = {
            "target": self.target,
            "participants": n,
            "group_size": load.group_size,
            "rate": load.rate,
            "duration": load.duration,
            "subperiod": load.subperiod,
            "experiment": self.experiment,
            "sent": len(sent),
            "offered_per_s": len(sent) / max(self.last_send - self.t0, 1e-9) if len(sent) > 1 else 0.0,
            "delivered": total - lost if sent else 0,
            "delivered_per_s": complete / max(last_receipt - self.t0, 1e-9),
            "deliveries": len(latencies),
            "latency_ms": percentiles(latencies),
            "ack_latency_ms": percentiles(ack_latencies),
            "acked": len(acked),
            "lost": lost,
            "lost_deliveries": lost_deliveries,
            "unsent": total - len(sent),
            "errors": dict(self.errors),
            "frames": {str(channel): count for channel, count in self.channels.items()},
            "error_messages": {code: dict(messages) for code, messages in self.error_messages.items()},
            "send_lag_ms": percentiles([self.sent_at[j] - self.due[j] for j in sent]),
            "own_send_lag_ms": percentiles(own_lags([self.due[j] for j in sent], [self.sent_at[j] for j in sent], self.read_spans)),
            "generator_cpu": self.generator_cpu,
            "monitor": self.monitor,
            # the frames the generator read and wrote itself, and those it left to websockets
            # (StampedConnection): a run whose sockets never read a frame themselves says so here
            "generator_frames": {
                "read_directly": sum(peer.ws.direct for peer in self.peers),
                "passed_to_websockets": sum(peer.ws.passed for peer in self.peers),
                "written_directly": self.written_directly,
            },
            "target_cpu": self.target_cpu,
            "target_rss_mb": None if self.target_rss is None else self.target_rss / 2**20,
            "target_peak_rss_mb": None if self.target_peak_rss is None else self.target_peak_rss / 2**20,
            "cpu_seconds": dict(self.cpu),
            # µs of CPU time per decision received by every member of its group, per process kind
            "cpu_us_per_decision": {kind: seconds * 1e6 / complete for kind, seconds in self.cpu.items()} if complete else {},
            "redis_commands_per_decision": None if self.redis_commands is None or not complete else self.redis_commands / complete,
            # a one-process target's CPU (µs) and context switches per decision, by thread: the
            # event loop ("main"), every other thread, the busiest other (a server's writer)
            "threads_per_decision": None if self.threads is None or not complete else {
                part: {
                    "user_us": spent["user"] * 1e6 / complete,
                    "system_us": spent["system"] * 1e6 / complete,
                    "voluntary": spent["voluntary"] / complete,
                    "involuntary": spent["involuntary"] / complete,
                }
                for part, spent in self.threads.items()
            },
            "groups_served": self.groups_served,
            "unpersisted": None,
            "not_stored": None,
            "tick_lateness_ms": None,
            "writer": None,
        }
        if self.writer is not None:
            w = self.writer
            # the processes' CPU per transaction the writers committed: PostgreSQL's is mostly per commit
            result["cpu_us_per_commit"] = {kind: seconds * 1e6 / w["batches"] for kind, seconds in self.cpu.items()} if w["batches"] else {}
            slow = [bucket for bucket, n in w["commit_ms"].items() if n and slow_bucket(bucket)]
            result["writer"] = {
                **w,
                "writes_per_batch": w["writes"] / w["batches"] if w["batches"] else None,
                "slow_commits": sum(w["commit_ms"][bucket] for bucket in slow),
                "slowest_commit_bucket": slow[-1] if slow else None,
            }
        if self.stored is not None:
            missing = [j for j in sent if (self.codes[j % n], j // n + 1) not in self.stored]
            result["not_stored"] = len(missing)
            result["unpersisted"] = sum(1 for j in missing if j in seen)
        if self.tick_lateness is not None:
            result["tick_lateness_ms"] = percentiles(self.tick_lateness)
            result["ticks"] = len(self.tick_lateness)
        return result


def own_lags(due: Sequence[float], sent: Sequence[float], spans: Sequence[float]) -> list[float]:
    """Each send's lag (``sent - due``, seconds) less the time the generator spent meanwhile on
    handling what it read (``spans``: starts and ends, flat, in order, not overlapping).

    The generator's loop runs a due send only after the reads it is handling: when the target
    releases a burst of frames at once (after a commit that waited for the disk, say), the
    sends behind it leave late because of the target. What is left is the generator's own lag:
    its loop's timers, its sends, and a machine that did not run it.
    """
    starts, ends = spans[0::2], spans[1::2]
    handled = [0.0]
    for a, b in zip(starts, ends, strict=True):
        handled.append(handled[-1] + (b - a))

    def before(t: float) -> float:
        """Time spent handling reads before ``t``."""
        i = bisect.bisect_right(starts, t)
        return handled[i] - (max(0.0, ends[i - 1] - t) if i else 0.0)

    return [max(0.0, (s - d) - (before(s) - before(d))) for d, s in zip(due, sent, strict=True)]


def percentiles(values: Sequence[float]) -> dict[str, float] | None:
    """p50, p90, p99 and max of ``values`` (seconds) in milliseconds (nearest rank)."""
    if not values:
        return None
    ordered = sorted(values)

    def rank(p: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, math.ceil(p * len(ordered)) - 1))] * 1000

    return {"p50": rank(0.50), "p90": rank(0.90), "p99": rank(0.99), "max": ordered[-1] * 1000, "n": len(ordered)}


async def _open(url: str) -> StampedConnection:
    ws = await connect(
        url,
        create_connection=StampedConnection,
        max_size=WS_MAX_SIZE,
        max_queue=None,  # never stop reading: a backed-up reader would look like server latency
        compression=None,
        open_timeout=OPEN_TIMEOUT,
        close_timeout=2.0,
    )
    assert isinstance(ws, StampedConnection)
    return ws


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
                   meters: Sequence[Meter] = ()) -> Run:
    """Offer ``load`` to ``target`` (a server, the relay or a cluster) and record everything.

    ``meters``: other process kinds whose CPU time is read over the sends too (Redis, PostgreSQL).
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

    async def join(i: int) -> Peer:
        ws = await _open(ws_bases[worker_of(i, g, len(ws_bases))] + paths[i])
        hello = orjson.loads(await asyncio.wait_for(ws.recv(), HELLO_TIMEOUT))
        ws.stamps.popleft()
        if hello.get("channel") != "hello":
            raise RuntimeError(f"participant {i}: expected a hello first, got {hello!r:.200}")
        payload = hello.get("payload") or {}
        peer = Peer(i, run.codes[i], ws, run, list(payload.get("members") or []))
        peer.task = asyncio.create_task(peer.read())
        if target.kind == "relay":
            peer.started.set()
        return peer

    watching: tuple[ClientConnection, asyncio.Task[None]] | None = None
    try:
        if spread:
            # each group's first member first: its worker (alternating with the group) takes the
            # group when it connects, and has by the time the hello comes; then everybody else
            firsts = [i for i in range(n) if i % g == 0]
            peers = await in_batches(firsts, CONNECT_BATCH, join)
            peers += await in_batches([i for i in range(n) if i % g], CONNECT_BATCH, join)
            run.peers = sorted(peers, key=lambda peer: peer.index)
        else:
            run.peers = await in_batches(range(n), CONNECT_BATCH, join)
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
        await _send_all(run, target, measure_target, meters)
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


async def _send_all(run: Run, target: Target | Cluster, measure_target: bool, meters: Sequence[Meter] = ()) -> None:
    load, n = run.load, run.load.participants
    total = load.total
    run.due = array("d", [math.nan]) * total
    run.sent_at = array("d", [math.nan]) * total
    frames = [orjson.dumps({"channel": "decisions", "payload": k, "id": str(k)}).decode()
              for k in range(1, load.sends_per_participant + 1)]
    # every send's frame made before the schedule, each masked with a key of its own
    keys = os.urandom(4 * total)
    payloads = [frame.encode() for frame in frames]
    run.masked = [masked_text_frame(payloads[j // n], keys[4 * j:4 * j + 4]) for j in range(total)]
    run.expected = sum(len(run.groups[j % n]) for j in range(total))
    gc.collect()
    gc.disable()  # a full collection over the receipts would stall the schedule for milliseconds
    for peer in run.peers:
        peer.ws.spans = run.read_spans
    try:
        await _schedule(run, frames, target, measure_target, meters)
    finally:
        run.masked = []  # sent: not kept for the rest of the run
        for peer in run.peers:
            peer.ws.spans = None
        gc.enable()


async def _schedule(run: Run, frames: list[str], target: Target | Cluster, measure_target: bool,
                    meters: Sequence[Meter] = ()) -> None:
    load, n = run.load, run.load.participants
    total, interval = load.total, 1.0 / (load.participants * load.rate)
    sockets = [peer.ws for peer in run.peers]
    clock = time.perf_counter
    # read before the schedule starts: the readings (a query to PostgreSQL and one to Redis for the
    # services) are not in the generator's CPU time nor in the way of the first sends
    kinds: list[Meter] = [Processes("target", target.pids)] if measure_target else []
    kinds += meters
    before: dict[str, Reading] = {m.kind: m.read() for m in kinds}
    one_process = target.pids[0] if measure_target and len(target.pids) == 1 else None
    threads0 = thread_times(one_process) if one_process is not None else {}
    redis = next((m for m in meters if isinstance(m, RedisServer)), None)
    commands0 = redis.commands() if redis is not None else 0
    cpu0 = time.process_time()
    run.wall0 = time.time() + LEAD_SECONDS
    run.t0 = t0 = clock() + LEAD_SECONDS
    due, sent_at, masked = run.due, run.sent_at, run.masked
    for j in range(total):
        when = t0 + j * interval
        due[j] = when
        wait = when - clock()
        if wait > 0:
            await asyncio.sleep(wait)
        sent_at[j] = clock()
        socket = sockets[j % n]
        if socket.write_frame(masked[j]):
            run.written_directly += 1
            continue
        try:
            await socket.send(frames[j // n])
        except Exception:
            sent_at[j] = math.nan
    run.last_send = clock()
    # receipts still due: wait for them, up to the grace
    run.check_complete()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(run.complete.wait(), load.grace)
    end = clock()
    run.wall_end = run.wall0 + (end - t0)
    run.window = end - t0
    run.generator_cpu = (time.process_time() - cpu0) / run.window
    run.cpu = {m.kind: used(before[m.kind], m.read()) for m in kinds}
    if one_process is not None:
        with contextlib.suppress(OSError):
            run.threads = threads_used(one_process, threads0, thread_times(one_process))
    if redis is not None:
        run.redis_commands = redis.commands() - commands0
    if measure_target:
        # a cluster's workers together: CPU may pass 100 % (one core), memory is their sum
        run.target_cpu = run.cpu["target"] / run.window
        run.target_rss = sum(rss_bytes(pid) for pid in target.pids)
        run.target_peak_rss = sum(rss_bytes(pid, "VmHWM") for pid in target.pids)


async def close_all(peers: Sequence[Peer]) -> None:
    async def close(peer: Peer) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(peer.ws.close(), 5.0)
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


async def hold_idle(target: Target, count: int, group_size: int = 2, batch: int = 250) -> dict[str, Any]:
    """Open ``count`` sockets (each reads its hello), hold them, and read the target's memory."""
    api = Api(target.base, target.token)
    ws_base = target.base.replace("http://", "ws://")
    experiment = None
    if target.kind == "server":
        created = await api.call("POST", "/api/experiments", {
            "game": "bimatrix", "participants": count, "group_size": group_size, "period_length": 3600, "block_pause": 0,
        })
        experiment = created["code"]
        paths = [f"/ws/p/{p['code']}" for p in created["participants"]]
    else:
        paths = [f"/ws/{i // group_size}/p{i}" for i in range(count)]
    await asyncio.sleep(1.0)
    before = rss_bytes(target.pid)
    sockets: list[ClientConnection] = []
    failures: Counter[str] = Counter()
    started = time.perf_counter()

    async def one(path: str) -> None:
        try:
            ws = await _open(ws_base + path)
            await asyncio.wait_for(ws.recv(), HELLO_TIMEOUT)
            sockets.append(ws)
        except Exception as exc:
            failures[type(exc).__name__] += 1

    try:
        await in_batches(paths, batch, one)
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
        async def close(ws: ClientConnection) -> None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 5.0)

        await in_batches(sockets, 500, close)
