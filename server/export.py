"""Exports: an experiment's rows as CSV or JSON, streamed page by page in constant memory.

An export is a list of :class:`Part` s: literal bytes (a CSV header, the brackets of a JSON
document) or a table read in pages. Each page is one short query on its own connection, keyed on
the last row sent (keyset paging, never ``OFFSET``), so a million events cost one page of memory,
and no connection or thread is held between pages. The HTTP stream runs each page on the
database's reader threads (:func:`stream`); ``synclab export`` loops on an engine (:func:`chunks`).

A run may store events while an export streams. The export reads the experiment's row, with its
``last_seq``, once at the start, and every table is cut there, so a CSV or JSON downloaded
mid-run is one snapshot of the run as it stood at that ``seq``:

- events and results: those with ``seq`` at most ``last_seq`` (``seq`` is handed out in the same
  transaction that stores an event and its result);
- sessions: ``started_at`` only if the group's ``period_start`` is among those events;
  ``finished_at`` and ``final_score`` only if its ``period_end`` is too (else null and 0.0, as
  the database held them; a period ended without its game has its score and no ``finished_at``);
- participants: completion, ``final_score``, ``rank``, ``percentile_rank`` and ``group`` (the
  first group not ended) from those sessions and groups;
- the document's groups (``phase``, ``started_at``, ``ended_at``) and blocks (``status``) as
  those events left them; the experiment is the row read at the start.

Each page reads the rows as they are now and takes them back to ``last_seq`` through the groups'
``state`` events (``storage.asof``): a period's start and end are committed with their state
event. What the event log does not record stays as read by the page: a participant's
``connected`` and ``connected_since``, a session's ``json_data``, and whether a running group is
``paused``. Neither does it record the ``connections`` and ``ticks`` tables: they are read as
they are (:mod:`server.exportlogs`).
"""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any, Literal

import orjson
from sqlalchemy import Engine, and_, or_
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from . import exportlogs
from .exceptions import BadRequest
from .experimentapi import experiment_fields
from .participantapi import completion_codes
from .progress import participant_progress
from .queries import path_experiment, query_value, require_admin, runtime
from .settings import Settings
from .storage import (
    Database,
    blocks,
    blocks_and_groups_as_of,
    experiment_row,
    list_events,
    list_results,
    participants,
    periods_as_of,
    reading_current,
    results_by_session,
    session_query,
    session_row,
    sessions,
)

Format = Literal["csv", "json"]
#: where a table's paging stands: the sort key of the last row sent; ``()`` before the first page
Cursor = tuple[Any, ...]

TABLES = ("events", "results", "sessions", "participants", "connections", "ticks")
FORMATS = ("csv", "json")
#: rows per page: one query each, and the most rows an export holds at once
PAGE_ROWS = 2000

#: the CSV columns of each table, in order; ``completion`` is flattened into three columns
CSV_COLUMNS: dict[str, tuple[str, ...]] = {
    # ``recipient`` (an extension of CONTRACT §2's event) last: the older columns keep their places
    "events": ("seq", "timestamp", "group", "participant", "channel", "value", "bot", "recipient"),
    "results": ("participant", "block", "subperiod", "decision", "score", "seq"),
    "sessions": ("participant", "block", "group", "started_at", "finished_at", "final_score", "json_data"),
    "participants": (
        "code",
        "label",
        "group",
        "connected",
        "connected_since",
        "completion_earned",
        "completion_possible",
        "completion_ratio",
        "final_score",
        "rank",
        "percentile_rank",
        "join_label",
        "joined_at",
        "completion_code",
        "status",
    ),
    **exportlogs.CSV_COLUMNS,
}
#: columns holding any JSON value: written as compact JSON text in CSV, so a string keeps its quotes
JSON_COLUMNS = frozenset({"value", "decision", "json_data", "snapshot"})


@dataclass(frozen=True, slots=True)
class Part:
    """One piece of an export: ``literal`` bytes, or the rows of ``table`` page by page."""

    #: the experiment row as read when the export started (its ``last_seq`` bounds the export)
    experiment: dict[str, Any]
    table: str | None = None
    fmt: Format = "json"
    literal: bytes = b""
    #: sessions carry their results (the whole JSON document)
    nested: bool = False
    limit: int = PAGE_ROWS


def plan(experiment: dict[str, Any], table: str | None, fmt: Format, *, limit: int = PAGE_ROWS) -> list[Part]:
    """The parts of an export of ``experiment`` (its row, read once, now).

    CSV needs a table. JSON with a table is an array of its rows; without one it is the whole
    document: experiment, blocks, groups, participants, sessions with their results, events,
    connections, ticks.
    """
    if table is not None and table not in TABLES:
        raise ValueError(f"table: expected one of {list(TABLES)}, got {table!r}")
    if fmt == "csv":
        if table is None:
            raise ValueError(f"table: CSV exports one table, one of {list(TABLES)}; got none")
        return [_literal(experiment, _csv_line(CSV_COLUMNS[table])), Part(experiment, table, "csv", limit=limit)]
    if table is not None:
        return [_literal(experiment, b"["), Part(experiment, table, limit=limit), _literal(experiment, b"]")]
    return [
        Part(experiment, "document"),
        _literal(experiment, b',"sessions":['),
        Part(experiment, "sessions", nested=True, limit=limit),
        _literal(experiment, b'],"events":['),
        Part(experiment, "events", limit=limit),
        _literal(experiment, b'],"connections":['),
        Part(experiment, "connections", limit=limit),
        _literal(experiment, b'],"ticks":['),
        Part(experiment, "ticks", limit=limit),
        _literal(experiment, b"]}"),
    ]


def _literal(experiment: dict[str, Any], data: bytes) -> Part:
    return Part(experiment, literal=data)


def page(engine: Engine, part: Part, cursor: Cursor) -> tuple[bytes, Cursor | None]:
    """The next chunk of ``part`` after ``cursor``, and the cursor to continue from (None: done)."""
    if part.table is None:
        return part.literal, None
    if part.table == "document":
        return _document_head(engine, part.experiment), None
    rows, after = _READERS[part.table](engine, part, cursor)
    if part.fmt == "csv":
        return _csv_rows(part.table, rows), after
    # one dumps per page, not per row: each result of orjson.dumps holds an ~8 KB buffer however
    # short the row, so a page of 2000 row-by-row dumps would hold 16 MB
    encoded = orjson.dumps(rows)[1:-1]
    # a JSON array continues across pages: every page but the first starts with a comma
    return (b"," + encoded if cursor and encoded else encoded), after


def chunks(engine: Engine, parts: Sequence[Part]) -> Iterator[bytes]:
    """The export's bytes, one page at a time, read on this thread (the CLI, tests)."""
    for part in parts:
        cursor: Cursor | None = ()
        while cursor is not None:
            chunk, cursor = _advanced(part, cursor, page(engine, part, cursor))
            if chunk:
                yield chunk


async def stream(database: Database, parts: Sequence[Part]) -> AsyncIterator[bytes]:
    """The export's bytes, each page read on a reader thread; nothing is held between pages."""
    for part in parts:
        if part.table is None:
            yield part.literal
            continue
        cursor: Cursor | None = ()
        while cursor is not None:
            chunk, cursor = _advanced(part, cursor, await database.read(page, part, cursor))
            if chunk:
                yield chunk


def _advanced(part: Part, before: Cursor, step: tuple[bytes, Cursor | None]) -> tuple[bytes, Cursor | None]:
    """``step``, checked to move forward: a pager stuck on one key would otherwise loop for ever."""
    after = step[1]
    if after is not None and before and not after > before:
        raise RuntimeError(f"export of {part.table}: the page after {before} did not move forward ({after})")
    return step


# --------------------------------------------------------------------------- the tables, page by page


def _events(engine: Engine, part: Part, cursor: Cursor) -> tuple[list[dict[str, Any]], Cursor | None]:
    """Events in ``seq`` order up to the ``last_seq`` read at the start, as the API lists them."""
    last_seq = part.experiment["last_seq"]
    after = cursor[0] if cursor else 0
    # list_events with an after_seq and no offset is already keyset paging; reuse it so the rows match
    rows = list_events(engine, part.experiment["id"], after, 0, part.limit)
    kept = [r for r in rows if r["seq"] <= last_seq]
    if len(kept) < part.limit or kept[-1]["seq"] == last_seq:
        return kept, None
    return kept, (kept[-1]["seq"],)


def _results(engine: Engine, part: Part, cursor: Cursor) -> tuple[list[dict[str, Any]], Cursor | None]:
    """Results in scoring order (their ``result`` event's ``seq``, one event each), as the API lists them."""
    after = cursor[0] if cursor else 0
    found = list_results(engine, part.experiment["id"], 0, part.limit, after, part.experiment["last_seq"])
    return found, ((found[-1]["seq"],) if len(found) == part.limit else None)


def _sessions(engine: Engine, part: Part, cursor: Cursor) -> tuple[list[dict[str, Any]], Cursor | None]:
    """Sessions in block order, then participant order, as the API lists them (keyed on both), as of ``last_seq``."""
    last_seq = part.experiment["last_seq"]
    query = (
        session_query()
        .add_columns(participants.c.index.label("participant_index"))
        .where(sessions.c.experiment_id == part.experiment["id"])
        .order_by(blocks.c.index, participants.c.index)
        .limit(part.limit)
    )
    if cursor:
        block, person = cursor
        query = query.where(
            or_(blocks.c.index > block, and_(blocks.c.index == block, participants.c.index > person))
        )
    with engine.connect() as conn:
        found = conn.execute(query).mappings().all()
        periods = periods_as_of(conn, last_seq, [r["group"] for r in found])
        nested = results_by_session(conn, [r["id"] for r in found], last_seq) if part.nested else {}
    rows = [session_row(periods[r["group"]].session(r)) for r in found]
    if part.nested:
        for row, r in zip(rows, found, strict=True):
            row["results"] = nested.get(r["id"], [])
    last = (found[-1]["block"], found[-1]["participant_index"]) if len(found) == part.limit else None
    return rows, last


def _participants(engine: Engine, part: Part, cursor: Cursor) -> tuple[list[dict[str, Any]], Cursor | None]:
    """Participants' progress as of ``last_seq``: one row each, so one page (bounded by the experiment)."""
    return participant_progress(engine, part.experiment["id"], upto_seq=part.experiment["last_seq"]), None


_READERS = {
    "events": _events,
    "results": _results,
    "sessions": _sessions,
    "participants": _participants,
    # as read by each page: the event log does not record them
    "connections": exportlogs.connections,
    "ticks": exportlogs.ticks,
}


def _document_head(engine: Engine, experiment: dict[str, Any]) -> bytes:
    """``{"experiment", "blocks", "groups", "participants"`` of the JSON document (all small), as of ``last_seq``."""
    with engine.connect() as conn:
        block_rows, group_rows = blocks_and_groups_as_of(conn, experiment["id"], experiment["last_seq"])
    head = {
        "experiment": experiment_fields(experiment),
        "blocks": block_rows,
        "groups": group_rows,
        "participants": participant_progress(engine, experiment["id"], upto_seq=experiment["last_seq"]),
    }
    return orjson.dumps(head)[:-1]  # left open: the sessions and events follow


# --------------------------------------------------------------------------- CSV


def _csv_line(cells: Sequence[str]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer).writerow(cells)
    return buffer.getvalue().encode()


def _csv_rows(table: str, rows: list[dict[str, Any]]) -> bytes:
    """RFC 4180 rows (the ``csv`` module's default dialect: quoted as needed, CRLF)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    columns = CSV_COLUMNS[table]
    for row in rows:
        flat = _flatten(row)
        writer.writerow([_csv_cell(name, flat[name]) for name in columns])
    return buffer.getvalue().encode()


def _flatten(row: dict[str, Any]) -> dict[str, Any]:
    """``{"completion": {"earned": 1}}`` → ``{"completion_earned": 1}``; other values stay."""
    flat: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, dict) and key not in JSON_COLUMNS:
            flat.update({f"{key}_{inner}": v for inner, v in value.items()})
        else:
            flat[key] = value
    return flat


def _csv_cell(column: str, value: Any) -> Any:
    """JSON columns as compact JSON text; null as an empty cell; booleans as ``true``/``false``."""
    if column in JSON_COLUMNS:
        return orjson.dumps(value).decode()
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


# --------------------------------------------------------------------------- HTTP


def _table(request: Request, *, required: bool) -> str | None:
    raw = query_value(request, "table")
    if raw is None:
        if required:
            raise BadRequest(f"table: expected one of {list(TABLES)}, got none", field="table")
        return None
    if raw not in TABLES:
        raise BadRequest(f"table: expected one of {list(TABLES)}, got {raw!r}", field="table")
    return raw


async def export_csv(request: Request) -> Response:
    """``?table=`` events, results, sessions, participants, connections or ticks, as a CSV attachment."""
    require_admin(request, "exporting experiments")
    row = await path_experiment(request)
    table = _table(request, required=True)
    if table == "participants":
        await completion_codes(runtime(request).database, row["id"])
    return StreamingResponse(
        stream(runtime(request).database, plan(row, table, "csv")),
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="synclab-{row["code"]}-{table}.csv"'},
    )


async def export_json(request: Request) -> Response:
    """The whole JSON document, or with ``?table=`` a JSON array of that table's rows."""
    require_admin(request, "exporting experiments")
    row = await path_experiment(request)
    table = _table(request, required=False)
    if table in ("participants", None):
        await completion_codes(runtime(request).database, row["id"])
    return StreamingResponse(
        stream(runtime(request).database, plan(row, table, "json")),
        media_type="application/json",
        headers={"Content-Disposition": f'attachment; filename="synclab-{row["code"]}-{table or "all"}.json"'},
    )


routes = [
    Route("/api/experiments/{code}/export.csv", export_csv),
    Route("/api/experiments/{code}/export.json", export_json),
]


# --------------------------------------------------------------------------- the command


def run_export(settings: Settings, code: str, table: str | None, fmt: str | None, out: IO[bytes] | None = None) -> int:
    """``synclab export``: write the export to ``out`` (stdout); the exit status.

    Without ``--format`` a table is CSV and no table is the whole JSON document.
    """
    chosen: Format = "json" if fmt == "json" or (fmt is None and table is None) else "csv"
    if chosen == "csv" and table is None:
        print(f"synclab: --format csv needs --table, one of {', '.join(TABLES)}", file=sys.stderr)
        return 2
    with reading_current(settings.database_url) as engine:
        row = experiment_row(engine, code)
        if row is None:
            print(f"synclab: no experiment with code {code!r}", file=sys.stderr)
            return 2  # as verify: 2 is "could not run" (1 means a mismatch there)
        target = out or sys.stdout.buffer
        sys.stdout.flush()  # anything printed before goes first
        for chunk in chunks(engine, plan(row, table, chosen)):
            target.write(chunk)
        target.flush()
    return 0
