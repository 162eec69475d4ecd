"""A command that reads an experiment's data (``export``, ``verify``): the schema checked before
anything is written.

``synclab export`` streams page by page, each page its own query: on a schema this synclab cannot
read (a database downgraded, or upgraded by a newer synclab) a page's query failed only once the
pages before it were written, and stdout held half a JSON or CSV document.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from sqlalchemy import Engine

from ..exceptions import SchemaError
from .recovery import reading
from .schema import schema_state


@contextlib.contextmanager
def reading_current(url: str) -> Iterator[Engine]:
    """:func:`.recovery.reading`, with the database at this synclab's revision, else
    :class:`SchemaError` in one line (the revision found, the one needed and what to run) before
    the caller reads or writes anything."""
    with reading(url) as engine:
        state = schema_state(engine)
        if not state.current:
            raise SchemaError(state.refusal() or (
                f"the database {state.where} has no table 'experiments' (no synclab tables, no revision): "
                "is DATABASE_URL a synclab database? (`synclab db upgrade` or the server's start makes them)"))
        yield engine
