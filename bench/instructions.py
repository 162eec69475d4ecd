"""Instructions per decision of the server's own work, counted by callgrind: the figure to compare builds by.

``python -m bench.instructions``: the CPU time of a load run moves by a tenth from one minute to the
next on this VM, more than most single changes save; an instruction count does not. It runs the
parts of a decision that are the server's own (not the WebSocket stack's, which the relay has
too) in one process, without sockets or threads, under ``valgrind --tool=callgrind``, and prints
the instructions (user space) each takes per decision:

- ``loop``: the group's share of the event loop's work for a decision, from its authority's
  ``receive`` (:meth:`server.live.LiveGroup.receive`) on: the game's core (``public_goods``, 400
  participants in groups of 4, as in ``server-2000``), the write's rows, the commit callbacks
  (the frames encoded and published to a hub with nobody listening), each write committed as it
  is submitted;
- ``path``: the whole of the event loop's work for a decision (:func:`_path`): a participant's
  text frame through their connection (``ClientConnection._on_text``: the rate limit, the parse)
  and their group's view to the group; the write's commit reported as the writer thread reports
  it (``EventWriter._done``, its frames corked), in batches of ``--batch``; the group's frames
  through the hub and the view to every member's connection, and the ack to the sender. Each
  connection writes its frames to a stand-in of the socket's direct writer that counts them
  (every member's count is checked at the end). Each member has ``--old-ids`` ids stored before,
  so that their older ids are in the id filter (:mod:`server.clientids`), as in a long run;
- ``writer``: what the writer thread does for a batch of ``--batch`` such writes: the statements,
  the rows and the commit, on SQLite with ``synchronous=OFF`` (``fdatasync`` is the kernel's work,
  and not counted by callgrind anyway);
- ``journal``: what the journal's writer thread does for a batch of ``--batch`` such writes, with
  the journal-first storage SQLite servers use by default (``server/storage/journaled.py``):
  ``JournalFirst.commit``, the events numbered, checked (``storable``), encoded and appended to a
  journal file in the run's directory, written and ``fdatasync``ed (the kernel's work not counted);
- ``apply``: what its apply thread does for the same writes, ``--apply-batch`` decisions at a time
  (default 20: the apply gathers 10 ms, some 20 decisions at 2,000/s): ``apply_journaled`` on the
  run's database, ``synchronous=NORMAL``, with the journal's marker, as ``JournalFirst._run`` calls it.
  Both on one thread, the apply thread stopped (see :mod:`bench.instructions_storage`).

Each count is the difference of two runs, ``--small`` and ``--large`` decisions, so the start-up
is left out. ``PYTHONHASHSEED=0`` makes a run repeat its count to a few hundred instructions. The
watch for slow actions is off (``server.live.SLOW_ACTION`` infinite): under callgrind on a busy
machine an action can take over its 50 ms of wall time, and the warning's logging was counted.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import math
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from itertools import count
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

from bench.instructions_storage import JOURNALED_PARTS, stop_apply, store_directly, store_journaled

#: the parts, in the order ``--part all`` counts them
PARTS = ("loop", "path", "writer", *JOURNALED_PARTS)
#: what the server sets (server.cli.GC_THRESHOLD)
GC_THRESHOLD = 10_000
#: writes made before the writer's count starts: the statements warm, the tables past their first pages
WARM_BATCHES = 100
#: the path's ids each member has stored before, by default: a minute of ``server-2000`` (5 a second)
OLD_IDS = 300


async def _workload(part: str, decisions: int, batch: int, made_for: int, old_ids: int, apply_batch: int) -> None:
    """Make ``decisions`` decisions' work of ``part`` (the ``--inner`` run, under callgrind).

    The writer's part makes the writes of ``made_for`` decisions in every run (making them is the
    loop's work, the same in both runs) and commits those of ``decisions``, as do the journal's
    parts (the database then opened with its journal, as a SQLite server's); the path's makes the
    frames' texts of ``made_for`` and sends those of ``decisions``."""
    import server.live
    from server.storage import Database

    vars(server.live)["SLOW_ACTION"] = math.inf  # (the name live.py reads, imported from server.hooks)
    directory = Path(tempfile.mkdtemp(prefix="synclab-instructions-"))
    db = Database(f"sqlite:///{directory / 'instructions.db'}", journal=part in JOURNALED_PARTS)
    try:
        live, seats = await _groups(db, old_ids if part == "path" else 0)
        if part in JOURNALED_PARTS:
            stop_apply(db)
        if part == "path":
            _path(live, seats, decisions, batch, made_for)
        else:
            _group_part(db, seats, part, decisions, (batch, apply_batch), made_for)
        live.close()
    finally:
        db.close()
        shutil.rmtree(directory, ignore_errors=True)


async def _groups(db: Any, old_ids: int) -> tuple[Any, list[tuple[Any, str]]]:
    """``server-2000``'s experiment in ``db``, its groups loaded and started; each member's
    ids stored before read as their seat reads them: none, or ``old_ids`` and up to
    :data:`~server.clientids.KEPT` more (so that each member's next move of ids to the filter
    falls at another of their decisions, as over a run).

    Returns the router and its seats (each member's group and code), group by group."""
    from server.clientids import KEPT
    from server.experiments import parse_request, plan
    from server.hub import MemoryHub
    from server.routing import LiveGroups
    from server.storage import EventWriter, create_schema, experiment_groups, insert_experiment

    create_schema(db.engine)
    spec = plan(parse_request({
        "game": "public_goods", "participants": 400, "group_size": 4, "period_length": 24 * 3600,
        "block_pause": 0, "config": {"endowment": 100},
    }), seed=1)
    experiment_id = await db.write(insert_experiment, spec)
    writer = EventWriter(db)
    writer.start()
    live = LiveGroups(db, writer, MemoryHub(), clock=_steady_clock())
    seats: list[tuple[Any, str]] = []
    for place in await db.read(experiment_groups, experiment_id):
        group = await live.group(place.group_id)
        await group.start()
        for code in group.core.members:
            stored = [(f"o{j}", j + 1) for j in range(old_ids + len(seats) % (KEPT + 1))] if old_ids else []
            group.load_client_ids(code, stored)
            seats.append((group, code))
    await writer.close()
    return live, seats


def _steady_clock(start: float = 1_800_000_000.0, step: float = 0.0005) -> Callable[[], float]:
    """A clock that moves on ``step`` seconds at each reading, from ``start``: the writes' times
    and the flow payoffs over them are then the same in every run. The wall clock made them
    differ (the floats' texts, the rows' lengths): the journal's parts moved by some 5 % and 1 %
    from one run to the next with it."""
    ticks = count()
    return lambda: start + next(ticks) * step


def _group_part(
    db: Any, seats: list[tuple[Any, str]], part: str, decisions: int, sizes: tuple[int, int], made_for: int
) -> None:
    """The ``loop`` part (each decision from its group's ``receive`` on), or the ``writer``'s, the
    ``journal``'s or the ``apply``'s (``sizes``: ``--batch`` and ``--apply-batch``)."""
    from server.storage import Write

    batch, apply_batch = sizes

    made: list[Write] = []
    numbers = iter(range(10**6, 10**9))

    class StoredAtOnce:
        """The writer's place: each write numbered and committed at once, kept for the writer's part."""

        def submit(self, write: Write, on_commit: Any, _on_fail: Any) -> None:
            write.seqs = [next(numbers) for _ in write.events]
            if part != "loop":
                made.append(write)
            on_commit(write)

    at_once = StoredAtOnce()
    for group, _code in seats:
        group._writer = at_once  # only its submit is called
    rng = random.Random(1)
    _steady_collector()
    n = decisions if part == "loop" else (WARM_BATCHES + made_for // batch) * batch
    for k in range(1, n + 1):
        group, code = seats[rng.randrange(len(seats))]
        group.receive(code, "decisions", k % 100, f"c{k}")
    if part in JOURNALED_PARTS:
        # the warm batches are in both runs: the difference leaves them out
        store_journaled(db, made, part, WARM_BATCHES + decisions // batch, batch, apply_batch)
    elif part == "writer":
        # the warm batches are in both runs: the difference leaves them out
        store_directly(db, made, WARM_BATCHES + decisions // batch, batch)


def _steady_collector() -> None:
    """The cyclic collector as the server runs it, with what was made so far out of its way."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_THRESHOLD, older, oldest)


class _WriterThread:
    """The database's writer thread, as the event writer sees it: what is submitted waits for
    :meth:`commit`, which numbers each write's events and reports the batch committed on the loop
    (``EventWriter._done``, as the thread's report does). Nothing is stored: the writer's part
    counts that."""

    def __init__(self) -> None:
        self.queued: list[Any] = []
        self._report: Callable[[list[Any], BaseException | None], None] | None = None
        self._numbers = count(10**6)

    def batches_to(self, _loop: Any, done: Callable[[list[Any], BaseException | None], None], *_: Any) -> None:
        self._report = done

    def submit(self, item: Any) -> None:
        self.queued.append(item)

    def commit(self) -> None:
        batch, self.queued = self.queued, []
        if batch and self._report is not None:
            for item in batch:
                item.write.seqs = [next(self._numbers) for _ in item.write.events]
            self._report(batch, None)


class _Storage:
    """What the event writer asks of its database for a committed batch: its writer thread
    (:class:`_WriterThread`) and a checkpoint soon (left out: on SQLite a timer set at the first
    batch, then one test a batch)."""

    def __init__(self, thread: _WriterThread) -> None:
        self.writer = thread

    def checkpoint_soon(self, _every: float) -> None:
        return None


def _path(live: Any, seats: list[tuple[Any, str]], decisions: int, batch: int, made_for: int) -> None:
    """The ``path`` part: each decision a participant's text frame, from their connection to
    the frames written to their group's members and the ack (see the module)."""
    import orjson

    from server.connection import ClientConnection
    from server.frames import EXTENSION, corked
    from server.settings import Settings
    from server.storage import Database, EventWriter

    thread = _WriterThread()
    writer = EventWriter(cast(Database, _Storage(thread)), delivering=corked)  # as the server's (server.runtime)
    writer.start()
    settings = Settings(frame_burst=decisions + 100)  # the rate limit's work, but no frame refused
    members: list[ClientConnection] = []
    written: list[list[int]] = []
    for group, code in seats:
        group._writer = writer  # (the group's start was stored by the real one)
        got = [0]
        scope = {"extensions": {EXTENSION: {"write": _counting(got), "take_texts": _ignore, "lost_code": _ignore}}}
        view = live.view(group.id)
        member = ClientConnection(cast(Any, SimpleNamespace(scope=scope)), view, code, settings, "synclab", group.game)
        view.attach(code, member, None, hello=False)
        members.append(member)
        written.append(got)
    thread.commit()  # the connects' writes
    for got in written:
        got[0] = 0  # (the state each member was sent on attaching)
    # who sends which frame, made for ``made_for`` decisions in every run: the difference leaves it out
    rng = random.Random(1)
    senders = [rng.randrange(len(members)) for _ in range(max(made_for, decisions))]
    texts = [orjson.dumps({"channel": "decisions", "payload": k % 100, "id": f"c{k}"}).decode() for k in range(len(senders))]
    del senders[decisions:]
    _steady_collector()
    for k, sender in enumerate(senders):
        members[sender]._on_text(texts[k])
        if (k + 1) % batch == 0:
            thread.commit()
    thread.commit()
    _check_frames(seats, senders, [got[0] for got in written])


def _counting(got: list[int]) -> Callable[[bytes], bool]:
    """A socket's direct frame writer that counts the frames and takes each at once."""

    def write(_frame: bytes) -> bool:
        got[0] += 1
        return True

    return write


def _ignore(*_: Any) -> None:
    return None


def _check_frames(seats: list[tuple[Any, str]], senders: list[int], written: list[int]) -> None:
    """Every member was written as many of their group's frames for each decision in their group
    (the same number in every group, at least one), and an ack for each decision of their own;
    printed, with the ids each member knows at the end (past ``2 * KEPT`` the older are in the filter)."""
    sent = Counter(senders)
    groups: dict[int, list[int]] = {}
    for i, (group, _code) in enumerate(seats):
        groups.setdefault(group.id, []).append(i)
    each: int | None = None  # the group's frames a decision
    wrong = 0
    for places in groups.values():
        decided = sum(sent[i] for i in places)
        for i in places:
            frames = written[i] - sent[i]  # (less the acks)
            if each is None and decided:
                each = frames // decided
            wrong += frames != (each or 0) * decided
    if not each or wrong:
        raise RuntimeError(f"frames written not as sent: {wrong} members off ({each} of the group's a decision)")
    known = [len(group.client_ids[code]) for group, code in seats]
    print(f"path: {len(senders)} decisions, {sum(written)} frames written: {each} of the group's to each member "
          f"for each decision in their group, and the ack; {min(known)}-{max(known)} ids known per member")


def _count(part: str, decisions: int, args: argparse.Namespace) -> int:
    """Instructions of one inner run under callgrind."""
    with tempfile.TemporaryDirectory(prefix="synclab-callgrind-") as out:
        done = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}/cg.out",
             sys.executable, "-m", "bench.instructions", "--inner", part, str(decisions),
             "--batch", str(args.batch), "--made-for", str(args.large), "--old-ids", str(args.old_ids),
             "--apply-batch", str(args.apply_batch)],
            env={**os.environ, "PYTHONHASHSEED": "0"}, capture_output=True, text=True, check=False, timeout=1800,
        )
    found = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"callgrind failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return int(found[1])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=(*PARTS, "all"), default="all", help="what to count (default all, one after the other)")
    parser.add_argument("--batch", type=int, default=4, help="writes per commit for the path's, the writer's and the journal's parts (default 4)")
    parser.add_argument("--apply-batch", type=int, default=20,
                        help="decisions per apply for the apply's part, in whole batches (default 20: 10 ms at 2,000/s)")
    parser.add_argument("--old-ids", type=int, default=OLD_IDS,
                        help=f"ids each member has stored before, for the path's part (default {OLD_IDS}; 0: none, no id filter)")
    parser.add_argument("--small", type=int, default=1200, help="decisions of the smaller run (default 1,200)")
    parser.add_argument("--large", type=int, default=5200, help="decisions of the larger run (default 5,200)")
    parser.add_argument("--inner", nargs=2, metavar=("PART", "DECISIONS"), help=argparse.SUPPRESS)
    parser.add_argument("--made-for", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.batch < 1 or args.old_ids < 0 or args.apply_batch < 1:
        parser.error("--batch and --apply-batch must be >= 1 and --old-ids >= 0")
    if args.inner:
        if args.inner[0] not in PARTS:
            parser.error(f"--inner: no part {args.inner[0]!r}")
        import uvloop  # the server's loop (uvicorn takes uvloop when it is installed)

        uvloop.install()
        asyncio.run(_workload(args.inner[0], int(args.inner[1]), args.batch, args.made_for, args.old_ids, args.apply_batch))
        return 0
    if shutil.which("valgrind") is None:
        print("bench.instructions: valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    for part in PARTS if args.part == "all" else (args.part,):
        small, large = (_count(part, n, args) for n in (args.small, args.large))
        per = (large - small) / (args.large - args.small)
        print(f"{part:7s} {per:10,.0f} instructions per decision" + {
            "loop": " (from the group's receive on)",
            "path": f" (from the participant's frame on; batches of {args.batch}, {args.old_ids} ids stored before)",
            "writer": f" (batches of {args.batch})",
            "journal": f" (batches of {args.batch})",
            "apply": f" (applies of {-(-args.apply_batch // args.batch) * args.batch} decisions, batches of {args.batch})",
        }[part])
    return 0


if __name__ == "__main__":
    sys.exit(main())
