"""What a load run offers (:class:`Load`), what each participant's socket receives (:class:`Peer`),
and the raw record they fill (:class:`Run`), which :meth:`Run.summary` reduces to the run's figures.

Each decision's value is its number ``k`` (``public_goods`` with an endowment of 1e9 accepts any
of them), and ``group_decisions`` carries the whole group's current decisions, so a member's
receipt of value ``k`` from sender ``s`` identifies the send. Sends of one participant are
numbered in order and each accepted decision is broadcast by itself, so a member that sees
``k`` from ``s`` after ``k' < k`` counts ``k`` as received then; a ``k`` skipped over was lost
for that member.

The record is kept apart from the sockets and from the schedule: :mod:`bench.schedule` fills in
when each send was due and left, the peers fill in the receipts; nothing here sends.
See ``bench/README.md`` for what every measure means.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
from array import array
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson

from .measures import own_lags, percentiles
from .sockets import StampedConnection


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
                # (only a text frame is stamped: a binary one, unreadable, has no stamp to take)
                self.take(raw, stamps.popleft() if isinstance(raw, str) else math.nan)

    def take(self, raw: str | bytes, now: float) -> None:
        """One frame read at ``now``. One that is not the wire's (:func:`_readable`) is counted in
        :attr:`Run.unreadable` and nothing else: it never stops the socket's reading (this runs
        in the socket's ``data_received``, where an exception would fail the connection)."""
        run = self.run
        frame = _readable(raw)
        if frame is None:
            run.unreadable += 1
            return
        channel, payload = frame
        run.channels[channel] += 1
        if channel == "group_decisions":
            index_of, last, receipts = run.index_of, self.last, self.receipts
            for code, value in payload.items():
                sender = index_of.get(code)
                if sender is None or not isinstance(value, int | float) or not math.isfinite(value):
                    continue
                k = int(value)
                if k > last.get(sender, 0):
                    last[sender] = k
                    receipts.append((sender, k, now))
                    run.received += 1
                    if run.received >= run.expected:
                        run.check_complete()
        elif channel == "ack":
            number = _send_number(payload.get("id"))
            if number is not None:  # (always, as :func:`_readable` checked)
                run.acks.append((self.index, number, now))
                if len(run.acks) >= run.load.total:
                    run.check_complete()
        elif channel == "error":
            run.error(payload, self.index)
        elif channel == "state" and payload == "period_start":
            self.started.set()


#: the channels whose payload is an object (``{"code": value}``, ``{"id", "seq"}``, ``{"code", "message"}``)
_OBJECTS = frozenset(("group_decisions", "ack", "error"))


def _readable(raw: str | bytes) -> tuple[str, Any] | None:
    """``raw``'s channel and payload when it is a frame of the wire: a text frame of a JSON object
    with a string ``channel``, an object for a payload where the generator reads one, and an
    ``ack``'s ``id`` a decision number; else ``None``."""
    if not isinstance(raw, str):
        return None
    try:
        frame = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(frame, dict) or not isinstance(frame.get("channel"), str):
        return None
    channel: str = frame["channel"]
    payload: Any = frame.get("payload")
    if channel in _OBJECTS and not isinstance(payload, dict):
        return None
    if channel == "ack" and _send_number(payload.get("id")) is None:
        return None
    return channel, payload


def _send_number(frame_id: Any) -> int | None:
    """The decision number ``k`` a frame's ``id`` names (the generator's ids are ``"k"``), or ``None``."""
    if isinstance(frame_id, str) and frame_id.isascii() and frame_id.isdigit():
        return int(frame_id)
    return frame_id if isinstance(frame_id, int) and not isinstance(frame_id, bool) else None


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
    #: (sender index, decision number) of every send an error frame refused (named by its ``id``)
    refused: set[tuple[int, int]] = field(default_factory=set)
    errors: Counter[str] = field(default_factory=Counter)
    #: frames that were not the wire's (:func:`_readable`: not JSON, not an object, binary, or an
    #: ``ack`` whose ``id`` names no send): counted, never read
    unreadable: int = 0
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

    def error(self, payload: dict[str, Any], sender: int | None = None) -> None:
        """An error frame ``sender``'s socket read: counted by its code, a sample of its messages
        kept, and the send it names by its ``id`` (if any) refused."""
        number = _send_number(payload.get("id"))
        if sender is not None and number is not None:
            self.refused.add((sender, number))
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
        sends = range(1, load.sends_per_participant + 1)
        refused = {self.send_index(i, k) for i, k in self.refused if k in sends}
        # an ack is a send's latency only if the send left (else it has no time: NaN) and no error
        # frame refused it; its first ack only (a repeated id is acknowledged again)
        acknowledged: dict[int, float] = {}
        for i, k, t in self.acks:
            if k in sends:
                acknowledged.setdefault(self.send_index(i, k), t)
        acked = {j: t for j, t in acknowledged.items() if j not in refused and not math.isnan(self.sent_at[j])}
        ack_latencies = [t - self.sent_at[j] for j, t in acked.items()]
        expected = {j: len(self.groups[j % n]) for j in sent}
        # a send an error frame refused was answered, not lost: it is counted as refused instead
        lost = sum(1 for j in sent if j not in refused and reached[j] < expected[j])
        complete = sum(1 for j in sent if reached[j] >= expected[j])
        lost_deliveries = sum(expected[j] - reached[j] for j in sent if j not in refused)
        seen = {j for j in sent if reached[j] > 0} | acknowledged.keys()
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
            "delivered": complete,
            "delivered_per_s": complete / max(last_receipt - self.t0, 1e-9),
            "deliveries": len(latencies),
            "latency_ms": percentiles(latencies),
            "ack_latency_ms": percentiles(ack_latencies),
            "acked": len(acked),
            "refused": len(refused),
            "lost": lost,
            "lost_deliveries": lost_deliveries,
            "unsent": total - len(sent),
            "errors": dict(self.errors),
            "frames": {str(channel): count for channel, count in self.channels.items()},
            "unreadable_frames": self.unreadable,
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
