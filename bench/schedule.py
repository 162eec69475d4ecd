"""The load generator's schedule of sends, and what the generator and the target used over it.

One process, one event loop. Send ``j`` (0-based) is due at ``T0 + j / (N * R)``: it is
participant ``j % N``'s decision number ``k = j // N + 1``, so the offered load is uniform and
each participant sends every ``1 / R`` seconds. The sender never waits for a reply; when it falls
behind it sends what is due at once, and how late each send left is its *send lag* (a saturated
generator shows there, not as a slower offered rate).

Every send's frame is made and masked before the schedule begins, and the garbage collector is
off while it runs. CPU time (the target's, the generator's, the services') is read just before
its lead-in and after its receipts came or its grace ended, the target's memory after.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import os
import time
from array import array
from collections.abc import Sequence

import orjson

from .proc import Cluster, Target, rss_bytes, thread_times, threads_used
from .record import Run
from .services import Meter, Processes, Reading, RedisServer, used
from .sockets import masked_text_frame

#: the schedule begins this long after every group has started
LEAD_SECONDS = 0.5


async def send_all(run: Run, target: Target | Cluster, measure_target: bool, meters: Sequence[Meter] = ()) -> None:
    """Offer every send of ``run`` on its schedule (:func:`_schedule`), each frame made and masked
    before, the garbage collector off, and each socket's reads noted in ``run.read_spans``."""
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
