"""The writer's batch: many writes committed in one transaction, with ``seq`` handed out inside it.

Called on the writer thread only (:mod:`.thread`). One ``executemany`` per table, of statements
compiled once per engine and run on the driver's cursor; the sessions, blocks and experiment
that a period's start or end changes are updated in the same transaction."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from psycopg.errors import DivisionByZero
from sqlalchemy.engine import Connection

from .frameids import defer_client_ids
from .groupstates import HeldStates, latest_states, store_states
from .periods import rows_only, store_periods
from .prepared import drained_pipeline
from .statements import BatchStatements, SeqStatements, batch_statements
from .statuses import set_statuses
from .writes import ConnectionChange, Write


def commit_writes(conn: Connection, writes: Sequence[Write]) -> None:
    """Commit ``writes`` in one transaction on ``conn``, giving each event its ``seq``.

    ``seq`` is taken from ``experiments.last_seq`` inside the transaction, so it is strictly
    increasing and gap-free per experiment even with several writer processes: a failed batch
    rolls its numbers back with everything else.

    A write computed under a fencing epoch (:attr:`Write.epoch`) is stored only while that is
    still its group's epoch, checked with the group's row locked in this transaction: else it is
    marked :attr:`Write.fenced` and left out, and the rest of the batch is stored.

    A batch that starts or ends no period and sets no status (nearly all of them) goes on
    the driver's connection alone: on PostgreSQL as one pipeline (:func:`_commit_pipelined`),
    on SQLite without SQLAlchemy's transaction around it (:func:`_commit_direct`). Another's
    rows go on PostgreSQL in one pipeline too, ``executemany`` riding it: alone, each made a
    pipeline of its own, and psycopg warned of one a refused row aborted while it was sent.
    """
    sql = batch_statements(conn.engine)
    if rows_only(writes):
        if sql.pipelined is not None:
            _commit_pipelined(conn, sql, sql.pipelined, writes)
            return
        if sql.direct:
            _commit_direct(conn, sql, writes)
            return
    with conn.begin():
        cursor = conn.connection.cursor()
        try:
            if sql.pipelined is not None:  # PostgreSQL: the rows in one pipeline (see :mod:`.parts`)
                with drained_pipeline(conn.connection.dbapi_connection):
                    _store_numbered(cursor, sql, writes)
            else:
                _store_numbered(cursor, sql, writes)
        finally:
            cursor.close()
        store_periods(conn, writes)
        set_statuses(conn, [s for w in writes for s in w.statuses])


def apply_numbered(
    conn: Connection, writes: Sequence[Write], marker: tuple[str, str], *, commit: bool = True,
    held: HeldStates | None = None,
) -> None:
    """Store ``writes`` numbered before (a journal's, :mod:`.journaled`: each :attr:`Write.seqs`
    set) in one transaction on SQLite's ``conn``, with the ``meta`` row ``marker`` (key, value).
    Each experiment's counter is raised by the batch's events as :func:`commit_writes` does,
    and must land on the last ``seq`` the batch gives it: else the numbers the journal handed
    out are not the database's (another process wrote to it meanwhile), and nothing is stored.
    Period starts and ends and statuses are stored as :func:`commit_writes` stores them: they
    read the rows as the writes before left them, so applying in the same order gives the same.
    Fencing epochs are not checked (one process per database: :mod:`.journaled`). A batch with
    neither goes on the driver's connection alone, as :func:`_commit_direct`'s; ``commit`` false
    leaves its transaction open for more (a batch with either commits it, and all before it).
    ``held``: the groups' states go there, written by whoever commits, before (see
    :mod:`.groupstates`); a batch that commits writes them, the ones held before first.
    The events' client ids go to ``client_ids`` later, in bulk (:mod:`.frameids`)."""
    sql = batch_statements(conn.engine)
    if rows_only(writes):
        with _on_the_driver(conn) as (raw, cursor):
            _store_renumbered(cursor, sql, writes, marker, held)
            if commit:
                if held is not None:
                    held.store(cursor, conn.engine)
                raw.commit()
        return
    with conn.begin():
        cursor = conn.connection.cursor()
        try:
            if held is not None:  # the periods' and statuses' statements read the groups' rows
                held.store(cursor, conn.engine)
            _store_renumbered(cursor, sql, writes, marker, None)
        finally:
            cursor.close()
        store_periods(conn, writes)
        set_statuses(conn, [s for w in writes for s in w.statuses])


#: SQLite: a ``meta`` row set, whether or not it was there
_SET_META = "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value"


def _store_renumbered(
    cursor: Any, sql: BatchStatements, writes: Sequence[Write], marker: tuple[str, str], held: HeldStates | None
) -> None:
    for experiment_id, (count, last) in sorted(_numbered_counts(writes).items()):
        raised = sql.next_seq.one(cursor, (experiment_id, count))
        if int(raised) != last:
            raise SeqMismatch(
                f"experiment {experiment_id}: its counter came to {raised} where the journal's "
                f"numbers end at {last}: another process wrote to the database"
            )
    if any(ev.client_id is not None for write in writes for ev in write.events):
        defer_client_ids(cursor)
    _store(cursor, sql, sql.numbered, writes, [w.seqs for w in writes], client_ids=False, held=held)
    cursor.execute(_SET_META, marker)


class SeqMismatch(RuntimeError):
    """A journal's numbers are not the database's (:func:`apply_numbered`)."""


def _numbered_counts(writes: Iterable[Write]) -> dict[int, tuple[int, int]]:
    """Per experiment: how many events the writes number, and the last ``seq`` of them."""
    counts: dict[int, tuple[int, int]] = {}
    for write in writes:
        if write.seqs:
            count, _ = counts.get(write.experiment_id, (0, 0))
            counts[write.experiment_id] = (count + len(write.seqs), write.seqs[-1])
    return counts


def _store_numbered(cursor: Any, sql: BatchStatements, writes: Sequence[Write]) -> None:
    """The rows of the writes still their groups' (:func:`unfenced`), each event numbered from
    its experiment's counter, raised here."""
    store_numbered(cursor, sql, unfenced(cursor, sql, writes))


def store_numbered(cursor: Any, sql: BatchStatements, writes: Sequence[Write]) -> None:
    """The rows of ``writes`` (none fenced), each event numbered from its experiment's counter, raised here."""
    next_seq: dict[int, int] = {}
    for experiment_id, count in sorted(_event_counts(writes).items()):  # sorted: a fixed lock order
        last = sql.next_seq.one(cursor, (experiment_id, count))
        next_seq[experiment_id] = int(last) - count + 1
    for write in writes:
        seq = next_seq.get(write.experiment_id, 0)
        write.seqs = list(range(seq, seq + len(write.events)))
        next_seq[write.experiment_id] = seq + len(write.events)
    _store(cursor, sql, sql.numbered, writes, [w.seqs for w in writes])


def _commit_direct(conn: Connection, sql: BatchStatements, writes: Sequence[Write]) -> None:
    """:func:`commit_writes` on SQLite's own connection: the driver begins the transaction at
    the first statement (its default), and it is committed or rolled back here. SQLAlchemy's
    transaction (its objects, events and bookkeeping) cost a tenth of the batch's own work."""
    with _on_the_driver(conn) as (raw, cursor):
        _store_numbered(cursor, sql, writes)
        raw.commit()


@contextlib.contextmanager
def _on_the_driver(conn: Connection) -> Iterator[tuple[Any, Any]]:
    """The driver's own connection under ``conn`` and a cursor on it (closed after); what fails
    meanwhile rolls the transaction back."""
    raw: Any = conn.connection.dbapi_connection
    cursor = raw.cursor()
    try:
        yield raw, cursor
    except BaseException:
        with contextlib.suppress(Exception):
            raw.rollback()
        raise
    finally:
        cursor.close()


def _commit_pipelined(conn: Connection, sql: BatchStatements, relative: SeqStatements, writes: Sequence[Write]) -> None:
    """:func:`commit_writes` on PostgreSQL in one round trip, the experiments' rows locked for it only.

    Every writer of an experiment (one per worker in a cluster) raises the experiment's
    ``last_seq``, and holds that row lock until its commit: the others' batches wait meanwhile.
    Sent statement by statement, the lock would also be held while this process's thread gets
    the answer of each and sends the next, which on a busy machine is the thread's wait for a
    core, several times a batch. So everything goes in one pipeline: the fence (the batch's own
    groups' rows locked, every epoch as expected or the transaction fails), the counters raised,
    the rows with their ``seq`` computed by PostgreSQL from the raised counter
    (``last_seq - back``), the commit; each ``seq`` is set from its counter's answer once
    committed. A fence that fails (an authority lost its group: rare) rolls all of it back, and
    the batch goes again with the fence a round trip of its own, which leaves the fenced writes
    out (:func:`_fence_first`).
    """
    expected = _expected_epochs(writes)
    if expected is None:
        _fence_first(conn, sql, relative, writes)
        return
    try:
        _pipeline(conn, sql, relative, writes, expected)
    except DivisionByZero:  # the fence: a group's epoch is no longer a write's
        _fence_first(conn, sql, relative, writes)


def _expected_epochs(writes: Sequence[Write]) -> dict[int, int] | None:
    """Each fenced group's epoch as the batch's writes expect it; ``None`` when one write cannot be
    checked in the pipeline (fenced without a group, or its group under two epochs in one batch)."""
    expected: dict[int, int] = {}
    for write in writes:
        if write.epoch is None:
            continue
        if write.group is None or expected.setdefault(write.group.group_id, write.epoch) != write.epoch:
            return None
    return expected


def _fence_first(conn: Connection, sql: BatchStatements, relative: SeqStatements, writes: Sequence[Write]) -> None:
    """:func:`_commit_pipelined` with the fence a round trip before the pipeline: what it keeps goes."""
    with _on_the_driver(conn) as (_, cursor):
        kept = unfenced(cursor, sql, writes)
    _pipeline(conn, sql, relative, kept, {})


def _pipeline(
    conn: Connection, sql: BatchStatements, relative: SeqStatements, writes: Sequence[Write], fence: dict[int, int]
) -> None:
    """``writes`` committed in one pipeline, ``fence``'s groups locked first (their epochs as given,
    or the transaction fails with a division by zero)."""
    with _on_the_driver(conn) as (raw, cursor):
        store_pipelined(raw, cursor, sql, relative, writes, fence, raw.commit)


def store_pipelined(
    raw: Any,
    cursor: Any,
    sql: BatchStatements,
    relative: SeqStatements,
    writes: Sequence[Write],
    fence: dict[int, int],
    end: Callable[[], object],
    begin: str | None = None,
) -> None:
    """``writes`` stored in one pipeline on psycopg's connection ``raw``: ``begin`` (a statement)
    first, ``fence``'s groups locked (their epochs as given, or the transaction fails with a
    division by zero), the counters raised, the rows, and last ``end()`` (the commit, or a
    savepoint's release: :mod:`.parts`); each ``seq`` set from its counter's answer after."""
    answers: list[Any] = []
    counts = sorted(_event_counts(writes).items())
    left = dict(counts)
    backs: list[list[int]] = []
    for write in writes:
        n = left.get(write.experiment_id, 0)
        backs.append(list(range(n - 1, n - 1 - len(write.events), -1)))
        left[write.experiment_id] = n - len(write.events)
    try:
        with drained_pipeline(raw):
            if begin is not None:
                cursor.execute(begin)
            if fence:
                ids = sorted(fence)
                cursor.execute(sql.FENCE_OR_FAIL, {"n": len(ids), "ids": ids, "epochs": [fence[g] for g in ids]})
            for experiment_id, count in counts:  # sorted: a fixed lock order
                answers.append(raw.cursor())
                sql.next_seq.run(answers[-1], [(experiment_id, count)])
            _store(cursor, sql, relative, writes, backs)
            end()
        lasts = {experiment_id: int(answer.fetchall()[0][0]) for (experiment_id, _), answer in zip(counts, answers, strict=True)}
    finally:
        for answer in answers:
            answer.close()
    for write, back in zip(writes, backs, strict=True):
        last = lasts.get(write.experiment_id, 0)
        write.seqs = [last - b for b in back]


def _store(
    cursor: Any, sql: BatchStatements, by: SeqStatements, writes: Sequence[Write], seqs: Sequence[list[int]], *,
    client_ids: bool = True, held: HeldStates | None = None,
) -> None:
    """The rows of ``writes``: events, groups' states, connections, results, ticks, and the
    client ids of the events that carry one (a repeated one refuses the batch), unless not
    ``client_ids`` (the journal's apply: :mod:`.frameids` adds them later, in bulk).

    ``seqs``: each write's events' ``seq``, or what ``by``'s statements take for it. ``held``:
    the groups' states are held there, not written (the journal's apply: :mod:`.groupstates`).
    """
    time, as_json, flag = sql.time, sql.json, sql.flag
    known, made = time.known, time.made  # looked up here, the call only on a miss (see StoredTimes)
    texts = iter(sql.json_texts([ev.value for write in writes for ev in write.events]))
    if client_ids:  # first: a repeated id refuses the batch before any other row is tried
        by.client_ids.run(cursor, [
            (ev.participant_id, ev.client_id, write.experiment_id, s)
            for write, numbers in zip(writes, seqs, strict=True)
            for ev, s in zip(write.events, numbers, strict=True)
            if ev.client_id is not None and ev.participant_id is not None
        ])
    by.events.run(cursor, [
        (
            write.experiment_id,
            s,
            known.get(ev.timestamp) or made(ev.timestamp),
            ev.group_id,
            ev.participant_id,
            ev.channel,
            next(texts),
            ev.client_id,
            flag[ev.bot], ev.recipient_id,
        )
        for write, numbers in zip(writes, seqs, strict=True)
        for ev, s in zip(write.events, numbers, strict=True)
    ])
    if held is None:
        store_states(cursor, sql, by, latest_states(writes, seqs))
    else:
        held.hold(writes, seqs)
    _store_connections(cursor, sql, [w.connection for w in writes if w.connection is not None])
    by.results.run(cursor, [
        (r.session_id, w.experiment_id, numbers[r.event], r.subperiod, as_json(r.decision), r.score)
        for w, numbers in zip(writes, seqs, strict=True)
        for r in w.results
    ])
    sql.ticks.run(cursor, [
        (w.experiment_id, t.group_id, t.kind, t.index, time(t.scheduled_at), time(t.actual_at), flag[t.late], as_json(t.snapshot))
        for w in writes
        for t in w.ticks
    ])


def _event_counts(writes: Iterable[Write]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for write in writes:
        if write.events:
            counts[write.experiment_id] = counts.get(write.experiment_id, 0) + len(write.events)
    return counts


def unfenced(cursor: Any, sql: BatchStatements, writes: Sequence[Write]) -> list[Write]:
    """The writes whose epoch is still their group's; the others marked fenced (rows locked first,
    by a statement prepared like the rest of the batch's)."""
    checked = sorted({w.group.group_id for w in writes if w.epoch is not None and w.group is not None})
    if not checked:
        return list(writes)
    fence, row = sql.fence(checked)
    stored = dict(fence.rows(cursor, row))
    kept = []
    for write in writes:
        if write.epoch is not None and (write.group is None or stored.get(write.group.group_id) != write.epoch):
            write.fenced = True
        else:
            kept.append(write)
    return kept


def _store_connections(cursor: Any, sql: BatchStatements, changes: Sequence[ConnectionChange]) -> None:
    """The connections opened and closed. What the client may say of itself is cut to its column
    (PostgreSQL refuses a longer one, and with it the member's arrival): its user agent, and its
    address, which uvicorn takes from ``X-Forwarded-For`` when a host it trusts sends the request
    (with ``FORWARDED_ALLOW_IPS=*`` the header's first entry, whatever the client put there)."""
    sql.opened.run(cursor, [
        (
            c.id,
            c.participant_id,
            c.experiment_id,
            sql.time(c.opened),
            (c.user_agent or "")[:512] or None,
            (c.address or "")[:64] or None,
            c.route,
            c.worker,
        )
        for c in changes
        if c.opened is not None
    ])
    sql.closed.run(cursor, [
        (c.id, sql.time(c.closed), c.close_code)
        for c in changes
        if c.closed is not None
    ])

