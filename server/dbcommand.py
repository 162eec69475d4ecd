"""``synclab db``: where the database's schema stands, and upgrading it (Alembic's migrations).

    synclab db upgrade   bring the database to this synclab's revision (a new one is made)
    synclab db downgrade REVISION [--yes]
                         back to an earlier revision (or a release: ``0.1.0``), every step in
                         one transaction; refused (exit 1, nothing changed) when it would drop
                         or cut stored values, unless ``--yes``; at REVISION already
                         (a database 0.1.0 made and nobody upgraded, at ``0.1.0``): exit 0
    synclab db current   the database's revision; exit 1 unless it is the newest
    synclab db history   every revision, newest first; the database's marked
    synclab db check     exit 1 unless the database is at the newest revision and its tables
                         are exactly this synclab's (Alembic's autogenerate comparison)

``--yes`` belongs to ``downgrade``: the other actions refuse it (exit 2), as they lose nothing.
Exit 2 when the database cannot be read, upgraded or downgraded.
"""

from __future__ import annotations

import sys

from .exceptions import SchemaError, SettingsError
from .settings import Settings
from .storage import (
    BASELINE,
    RELEASES,
    DataWouldBeLost,
    SchemaState,
    Step,
    differences,
    downgrade_schema,
    head,
    history,
    make_engine,
    reading,
    recover_file,
    schema_state,
    upgrade_schema,
    wait_for_change,
)

DB_ACTIONS = ("upgrade", "downgrade", "current", "history", "check")


def run_db(settings: Settings, action: str, revision: str | None = None, *, yes: bool = False) -> int:
    """Run ``synclab db ACTION`` (``downgrade`` takes ``revision``, and ``yes`` to lose values); the exit status."""
    if (revision is not None) != (action == "downgrade"):
        raise SettingsError(
            "synclab db downgrade needs the revision to go back to (`synclab db history` lists them)"
            if action == "downgrade" else f"synclab db {action} takes no revision"
        )
    if yes and action != "downgrade":
        # refused, not ignored: only a downgrade can lose stored values, and only it asks
        raise SettingsError(f"synclab db {action} takes no --yes: it loses nothing (only `synclab db downgrade` asks for it)")
    if action == "downgrade":
        assert revision is not None
        return _downgrade(settings, revision, yes)
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
        # another command's change under way: waited for and said, as the other commands do (the
        # schema lock alone would keep this one waiting without a word, and on PostgreSQL unbounded)
        wait_for_change(settings.database_url)
        before, after = upgrade_schema(engine, alone=True)
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


def _downgrade(settings: Settings, target: str, yes: bool) -> int:
    # reading(): a missing SQLite file is refused, not made, and a journal a crash left is
    # applied first, while the schema is still the one its writes were made for
    with reading(settings.database_url) as engine:
        try:
            before, after, steps = downgrade_schema(engine, target, lose=yes, announce=_announce, alone=True)
        except DataWouldBeLost as exc:
            print(f"synclab: {exc}", file=sys.stderr)
            return 1
        except SchemaError as exc:
            print(f"synclab: {exc}", file=sys.stderr)
            return 2
    if not steps:
        at = f"synclab 0.1.0's schema ({BASELINE}): it was never upgraded" if after.legacy else after.revision
        print(f"synclab: {after.where} is already at {at}; nothing changed")
        return 0
    release = next((f" (synclab {name})" for name, rev in RELEASES.items() if rev == after.revision), "")
    print(f"synclab: downgraded {after.where} from {before.revision} to {after.revision}{release}; "
          "this synclab will not serve it until `synclab db upgrade`")
    return 0


def _announce(state: SchemaState, steps: list[Step]) -> None:
    """What the downgrade will do, before it does it: each revision it undoes, and what that loses."""
    if not steps:
        return
    print(f"synclab: {state.where} is at {state.revision}; undoing {len(steps)} revision(s) in one transaction:")
    for step in steps:
        print(f"  {step.revision} -> {step.down_to}  {step.title}")
        for line in step.losses:
            print(f"      loses {line}")
    sys.stdout.flush()


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
