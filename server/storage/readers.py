"""A command that reads an experiment's data (``export``, ``verify``) or the tokens (``token``):
the schema checked before anything is written, and a reader's mark held while it reads.

``synclab export`` streams page by page, each page its own query: on a schema this synclab cannot
read (a database downgraded, or upgraded by a newer synclab) a page's query failed only once the
pages before it were written, and stdout held half a JSON or CSV document. And a ``db upgrade``
started during a long export changed the tables between its pages. So the command holds the mark
a running server holds (:mod:`.serving`) from before it reads the revision to its end: shared, so
servers and other readers run beside it, and ``db upgrade`` or ``downgrade`` refuses while it is
held, naming the command's process (SQLite) or session (PostgreSQL), as it refuses a server.

- SQLite file: an ``flock`` shared on the database file. A server with the journal holds it
  exclusively for its whole run; the command then reads without a mark of its own, as before (that
  server keeps the ``db`` commands out for as long as it runs).
- PostgreSQL: :data:`.serving.SERVING_LOCK` shared on a session of the command's own
  (:func:`.serving.hold_serving`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator

from sqlalchemy import Engine

from ..exceptions import SchemaError
from .engine import normalise_url, sqlite_file
from .readmark import mark_reading
from .recovery import reading
from .schema import schema_state
from .serving import hold_serving, wait_for_change

#: the reader's mark held with each database file's descriptor (:func:`_share_file`)
_marks: dict[int, int] = {}


@contextlib.contextmanager
def reading_current(url: str) -> Iterator[Engine]:
    """:func:`.recovery.reading`, with a reader's mark held (see the module) and the database
    at this synclab's revision, else :class:`SchemaError` in one line (the revision found, the
    one needed and what to run) before the caller reads or writes anything."""
    with reading(url) as engine:
        path = sqlite_file(url)
        held: int | None = None
        mark = None
        try:
            if path is not None:
                held = _share_file(path, url)
            elif normalise_url(url).get_backend_name() == "postgresql":
                mark = hold_serving(url, server=False)
            # read under the mark: a change that took it first has committed (or was waited for)
            state = schema_state(engine)
            if not state.current:
                raise SchemaError(state.refusal() or (
                    f"the database {state.where} has no table 'experiments' (no synclab tables, no revision): "
                    "is DATABASE_URL a synclab database? (`synclab db upgrade` or the server's start makes them)"))
            yield engine
        finally:
            # SQLite's connections first: closing a descriptor of the file drops the process's fcntl locks
            engine.dispose()
            if held is not None:
                os.close(held)
                mark_fd = _marks.pop(held, None)
                if mark_fd is not None:
                    os.close(mark_fd)
            if mark is not None:
                mark.close()


def _share_file(path: str, url: str) -> int | None:
    """The database file's descriptor holding an ``flock`` shared; ``None`` when another process
    holds it exclusively: a server with the journal, or a ``db`` command (waited for, then tried again)."""
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    # the reader's own mark first: a server that finds the file's lock taken then finds it, and
    # waits for this command rather than being refused as beside another server (:mod:`.readmark`)
    mark = mark_reading(path)
    try:
        for _ in range(2):
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                if mark is not None:
                    _marks[fd] = mark
                return fd
            except BlockingIOError:
                wait_for_change(url)  # a schema change under way ends first; a server's lock does not
        os.close(fd)
        if mark is not None:
            os.close(mark)
        return None
    except BaseException:
        os.close(fd)
        if mark is not None:
            os.close(mark)
        raise
