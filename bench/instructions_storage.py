"""The storage's parts of ``python -m bench.instructions``: ``writer``, ``journal`` and ``apply``.

``writer`` (:func:`store_directly`): ``commit_writes`` of each batch of ``--batch`` writes on the
writer's connection, ``synchronous=OFF``. Each batch's writes are dropped once committed, and
those never committed before the count begins, as the server's writer thread holds a write only
until its commit: until 2026-12-06 every write was kept to the end, as in the journal's parts
before (bench/README.md, "The writer's writes dropped once committed").

A SQLite server stores first in its journal by default (``server/storage/journaled.py``): the
writer thread numbers a batch's events, checks them (``storable``), encodes them (orjson) and
appends them to the journal with one write and one ``fdatasync`` (``JournalFirst.commit``); the
apply thread stores what came in the last 10 ms, with the journal's marker (``apply_numbered``),
in a transaction it commits once a second, ``synchronous=NORMAL`` (``server/storage/applying.py``). Here both run on one thread, in turn, on the run's
database opened as the server opens it (``Database(..., journal=True)``: its journal in the
run's temporary directory): the apply thread is stopped once the set-up is applied, before the
writes are made, and this module takes its place, so that nothing races and the count repeats.
The writes are the ones the live groups made for the ``writer`` part
(:func:`bench.instructions._group_part`).

- ``journal``: ``JournalFirst.commit`` of each batch of ``--batch`` writes (the append's write
  and ``fdatasync`` are system calls: their user-space side is counted, not the kernel's);
- ``apply``: the records applied ``--apply-batch`` decisions at a time (whole batches: at least
  that many), ``apply_numbered`` on a connection of its own set to ``synchronous=NORMAL``, as
  ``ApplyThread._apply`` does, the transaction committed every ``COMMIT_EVERY / APPLY_EVERY``
  applies (100: a second's, as the server's at 2,000 decisions a second), the groups' states the
  applies held written before each commit (since 2026-12-07: each apply wrote its own before,
  ``server/storage/groupstates.py``), the client ids added before every fifth commit (``ADD_EVERY``, ``server/storage/frameids.py``); until 2026-12-06 each
  apply committed, as the server's did then. The WAL is not checkpointed meanwhile (the server's checkpoints are
  another thread's work), as in the ``writer`` part. What ``_run`` does around it (the condition's
  lock and counters, the callback after an apply that finishes a checkpoint) is left out.

In both parts every batch of the ``writer`` part's ``made_for`` decisions goes through ``commit``
in both runs when the apply is counted (the difference leaves the commits out); when the
journal is counted, the batches of ``decisions`` only. Either way the apply's turn takes the
pending records as the apply thread does, at each ``--apply-batch``. Each batch's writes are
dropped once committed (the journal's pending list holds them until the apply's take), and those
never committed before the count begins, as the server holds a write only until it is applied:
until 2026-12-05 every write was kept to the end, and the collector's passes over them were a
share of the count (bench/README.md, "The journal's writes dropped once committed").

These counts repeat less well than the loop's. With the live groups on the wall clock they moved
by some 5 % (``journal``) and 1 % (``apply``) from one run to the next; on a steady clock
(:func:`bench.instructions._steady_clock`) by about 1 % and 0.4 % (bench/README.md, "The
journal's threads counted").
"""

from __future__ import annotations

from typing import Any

#: the parts of this module
JOURNALED_PARTS = ("journal", "apply")


def stop_apply(db: Any) -> None:
    """Once the set-up's writes are applied, end ``db``'s writer and apply threads, as its
    ``close`` does: the parts take their place (the apply's) or call what they would (the writer's).

    Before the writes are made, not after: idle, each thread wakes every half second (to see
    whether the main thread has ended), and under callgrind the run's wall time, hence the
    number of wake-ups, is not the same from one run to the next (the ``journal`` part's count
    moved by some 1,300 instructions a decision from one run to the next with them)."""
    first = db.journaled
    if first is None:
        raise RuntimeError("the journal's parts need the database opened with its journal")
    first.drain()
    db.writer.stop(first.stop)  # (``close`` stops them again: nothing left to do then)


def store_directly(db: Any, made: list[Any], counted: int, batch: int) -> None:
    """Commit the first ``counted`` batches of ``batch`` of ``made`` on ``db``'s writer connection
    (the ``writer`` part), each dropped once committed; then check that all their events are stored."""
    from server.storage import commit_writes, writer_connection

    batches = [made[i : i + batch] for i in range(0, len(made), batch)]
    made.clear()  # (the caller's list: the batches hold the writes alone now)
    del batches[counted:]  # never committed: dropped before the count, as the committed ones after it
    conn = writer_connection(db.engine)
    conn.exec_driver_sql("PRAGMA synchronous=OFF")
    conn.commit()
    try:
        before = int(conn.exec_driver_sql("SELECT count(*) FROM events").scalar_one())
        events = 0
        for at in range(len(batches)):
            writes, batches[at] = batches[at], []
            commit_writes(conn, writes)
            events += sum(len(write.events) for write in writes)
        writes = []
        _check_stored(conn, len(batches), events, before)
    finally:
        conn.close()


def _check_stored(conn: Any, batches: int, events: int, before: int) -> None:
    """The ``events`` of the ``writer`` part's ``batches`` are in the database (``before``: the
    events it held before them). Printed; raises otherwise."""
    held = int(conn.exec_driver_sql("SELECT count(*) FROM events").scalar_one()) - before
    if held != events:
        raise RuntimeError(f"writer: {held} events stored of the {events} committed in {batches} batches")
    print(f"writer: {batches} batches, {events} events stored")


def store_journaled(db: Any, made: list[Any], part: str, counted: int, batch: int, apply_batch: int) -> None:
    """Commit ``made`` in batches of ``batch`` to ``db``'s journal and apply them (see the module).

    ``counted``: the batches whose ``part`` is done (the warm ones and the run's decisions').
    """
    from server.storage import (
        APPLY_COMMIT_EVERY,
        APPLY_EVERY,
        CLIENT_IDS_ADD_EVERY,
        JOURNAL_MARKER,
        HeldStates,
        apply_numbered,
        commit_applied,
        journal_marker,
    )

    first = db.journaled  # its apply thread stopped (:func:`stop_apply`): this thread applies
    journal = first.journal
    batches = [made[i : i + batch] for i in range(0, len(made), batch)]
    made.clear()  # (the caller's list: the batches hold the writes alone now)
    per_apply = -(-apply_batch // batch)  # whole batches, at least ``apply_batch`` decisions
    conn = db.engine.connect()
    # the apply thread's connection: its commits are not synced one by one (the journal is)
    conn.exec_driver_sql("PRAGMA synchronous=NORMAL")
    conn.commit()
    stop = counted if part == "journal" else len(batches)
    # what is never committed is dropped before the count, and each batch once committed: the
    # journal's pending list holds it until the apply's take, as in the server; the writes of every
    # batch kept to the end made the collector's passes over them a share of the count
    del batches[stop:]
    turns = range(0, stop, per_apply)
    commit_every = round(APPLY_COMMIT_EVERY / APPLY_EVERY)  # applies to a commit, as the server's at 10 ms
    add_every = round(CLIENT_IDS_ADD_EVERY / APPLY_COMMIT_EVERY)  # commits to an addition of the client ids
    held = HeldStates()  # the groups' states, written once before each commit
    marked = None  # the marker of the last apply
    commits = 0  # the apply's commits counted
    turn = 0  # applies counted
    seqs: list[int] = []  # the numbers of the counted batches' events, for the check
    begin = journal.offset
    try:
        for start in turns:
            for at in range(start, min(start + per_apply, stop)):
                writes, batches[at] = batches[at], []
                first.commit(writes)
                if at < counted:
                    seqs.extend(seq for write in writes for seq in write.seqs)
            writes = []
            if start == 0 and begin + 2 * (journal.offset - begin) * len(turns) > journal.size:
                # a full journal restarts once the apply thread caught up: stopped here, it never would
                raise RuntimeError(f"the journal ({journal.size} bytes) is too small for the run")
            # the apply thread's take: what is pending, the list left empty for the writer
            taken, first._pending = first._pending, []
            if part == "apply" and start < counted:
                taken = taken[: counted - start]
                marked = journal_marker(journal, taken[-1][0].end)
                writes = [w for _, ws in taken for w in ws]
                apply_numbered(conn, writes, (JOURNAL_MARKER, marked), commit=False, held=held)
                turn += 1
                last = start + per_apply >= min(counted, stop)
                if turn % commit_every == 0 or last:
                    commits += 1
                    # the groups' states, and the client ids every add_every commits, as the server's apply
                    ids = commits % add_every == 0 or last
                    commit_applied(conn.connection.dbapi_connection, db.engine, held, ids=ids)
            taken = writes = []
        _check(conn, part, min(counted, len(batches)), seqs, marked)
    finally:
        conn.close()


def _check(conn: Any, part: str, batches: int, seqs: list[int], marked: str | None) -> None:
    """Every event of the ``batches`` counted (the warm ones too; ``seqs``, their numbers) was
    numbered by the journal and, in the apply's part, is in the database under its number, with
    the last apply's marker; none of them in the journal's (nothing applied). Printed; raises
    otherwise."""
    from server.storage import JOURNAL_MARKER

    held, last = conn.exec_driver_sql("SELECT count(*), max(seq) FROM events WHERE seq >= ?", (min(seqs),)).one()
    stored = conn.exec_driver_sql("SELECT value FROM meta WHERE key = ?", (JOURNAL_MARKER,)).scalar()
    applied = part == "apply"
    numbered = seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    if not numbered or held != (len(seqs) if applied else 0) or (applied and (last != seqs[-1] or stored != marked)):
        raise RuntimeError(f"{part}: not stored as numbered: {held} events of {len(seqs)} held, to seq {last} "
                           f"(numbered to {seqs[-1]}{'' if numbered else ', not in a row'}), marker {stored} for {marked}")
    print(f"{part}: {batches} batches, {len(seqs)} events numbered {seqs[0]}-{seqs[-1]}; "
          f"{held} held by the database, its marker {stored}")
