"""``synclab db``: where the database's schema stands, and upgrading it (Alembic's migrations).

    synclab db upgrade   bring the database to this synclab's revision (a new one is made)
    synclab db current   the database's revision; exit 1 unless it is the newest
    synclab db history   every revision, newest first; the database's marked
    synclab db check     exit 1 unless the database is at the newest revision and its tables
                         are exactly this synclab's (Alembic's autogenerate comparison)

Exit 2 when the database cannot be read or upgraded.
"""

from __future__ import annotations

import sys

from .exceptions import SchemaError, SettingsError
from .settings import Settings
from .storage import (
    BASELINE,
    differences,
    head,
    history,
    make_engine,
    reading,
    recover_file,
    schema_state,
    upgrade_schema,
)

DB_ACTIONS = ("upgrade", "current", "history", "check")


def run_db(settings: Settings, action: str) -> int:
    """Run ``synclab db ACTION``; the exit status."""
    if action == "upgrade":
        return _upgrade(settings)
    if action == "history":
        return _history(settings)
    with reading(settings.database_url) as engine:
        state = schema_state(engine)
        if action == "current":
            print(f"{state.where}: {state.describe()}")
            if not state.current:
                print(f"synclab: {state.refusal() or f'this synclab needs {state.head}: run `synclab db upgrade`'}",
                      file=sys.stderr)
                return 1
            return 0
        if not state.current:
            print(f"synclab: {state.refusal() or f'the database is empty; this synclab needs {state.head}'}",
                  file=sys.stderr)
            return 1
        found = differences(engine)
    for line in found:
        print(f"synclab: the database differs from this synclab's tables: {line}", file=sys.stderr)
    if not found:
        print(f"{state.where}: at {state.head}, and its tables are this synclab's")
    return 1 if found else 0


def _upgrade(settings: Settings) -> int:
    engine = make_engine(settings.database_url)
    try:
        before, after = upgrade_schema(engine)
        recovered = recover_file(engine, settings.database_url)
    except SchemaError as exc:
        print(f"synclab: {exc}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    if recovered:
        print(f"synclab: applied {recovered} writes a server had acknowledged from its journal")
    if before.current:
        print(f"synclab: {after.where} is already at {after.head}")
    elif before.legacy:
        print(f"synclab: upgraded {after.where} from synclab 0.1.0 (stamped {BASELINE}, no row changed) "
              f"to {after.revision}")
    else:
        print(f"synclab: upgraded {after.where} from {before.describe()} to {after.revision}")
    return 0


def _history(settings: Settings) -> int:
    try:
        with reading(settings.database_url) as engine:
            revision: str | None = schema_state(engine).revision
    except SettingsError:  # no database yet: the revisions are still worth listing
        revision = None
    newest = head()
    for name, before, title in history():
        marks = [mark for mark, on in (("head", name == newest), ("the database", name == revision)) if on]
        print(f"{name}  (after {before or 'nothing'}){'  [' + ', '.join(marks) + ']' if marks else ''}  {title}")
    return 0
