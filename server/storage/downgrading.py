"""Downgrading the schema to an earlier revision (``synclab db downgrade``), in one transaction.

A lab that upgraded and must go back to the release before runs that release's revision's
downgrade: every step from the database's revision down, each a migration's ``downgrade()``,
in the one transaction :func:`.schema.upgrade_schema` uses, under the same schema lock. On
SQLite that transaction is the explicit ``BEGIN IMMEDIATE`` … ``COMMIT`` of
:func:`.schema._sqlite_migration_engine` (the driver in autocommit, as SQLAlchemy documents for
pysqlite): by hand inside a plain ``engine.begin()`` pysqlite runs a DDL statement outside any
transaction, so a ``DROP INDEX`` stayed done when a later step's refusal rolled the rest back,
and the database was left at its revision without that index. Here a step that fails leaves the
database exactly as it was.

Before any step runs, each migration's ``lost_by_downgrade(conn)`` (where it has one) says what
its downgrade would drop or cut of the rows the database holds now, one line each; with any
such line the downgrade is refused (:class:`DataWouldBeLost`, nothing changed) unless the
caller accepts it. A migration's own refusal (``0009_delivery_url_text``: a delivery still
waiting whose URL the older column cannot hold) is not such a loss: it stops the downgrade
whatever the caller accepts, and the transaction is rolled back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from alembic.script import Script
from sqlalchemy import Engine
from sqlalchemy.engine import Connection

from ..exceptions import SchemaError
from .schema import BASELINE, SchemaState, _alembic, _locked, _script, _state, revisions
from .serving import NoServers

#: the releases a lab may name instead of a revision: each one's revision (README, "Upgrading")
RELEASES = {"0.1.0": BASELINE}


class DataWouldBeLost(SchemaError):
    """The downgrade would drop or cut stored values; refused unless accepted (``--yes``)."""


@dataclass(frozen=True, slots=True)
class Step:
    """One revision undone: ``revision`` down to ``down_to``."""

    revision: str
    down_to: str
    #: the migration's first line
    title: str
    #: what its downgrade would lose of the rows held now, one line each ("" for nothing)
    losses: tuple[str, ...]


def resolve(target: str) -> str:
    """The revision ``target`` names: a revision of this synclab's, or a release's name (``0.1.0``)."""
    revision = RELEASES.get(target, target)
    if revision not in revisions():
        named = ", ".join(f"{name} ({rev})" for name, rev in RELEASES.items())
        raise SchemaError(
            f"{target!r} is no revision of this synclab (`synclab db history` lists them) nor a release it "
            f"knows ({named})"
        )
    return revision


def downgrade_schema(
    engine: Engine,
    target: str,
    *,
    lose: bool = False,
    announce: Callable[[SchemaState, list[Step]], None] | None = None,
    alone: bool = True,
) -> tuple[SchemaState, SchemaState, list[Step]]:
    """Bring the database down to revision ``target`` (or a release's name): ``(before, after, steps)``.

    Under the schema lock, in one transaction. ``announce`` is told the state and the steps
    (with what each would lose) before any runs. No steps when the database is at ``target``
    already (a database synclab 0.1.0 made and nobody upgraded is at ``0.1.0``: it is left as it
    is, without a version table). Raises :class:`DataWouldBeLost` when a step would lose stored
    values and not ``lose``, and :class:`SchemaError` when the database is not at ``target`` or a
    revision above it, or a step fails; the database is then as it was. ``alone``: with any step
    to run, :class:`.ServerRunning` while a server runs on the database (:mod:`.serving`),
    before anything is announced.
    """
    revision = resolve(target)
    servers = NoServers(engine) if alone else None
    try:
        with _locked(engine) as conn:
            before = _state(conn, engine)
            _check(before, revision)
            steps = _steps(conn, before, revision)
            if servers is not None and steps:
                servers.check(conn, before.where)
            if announce is not None:
                announce(before, steps)
            lost = [f"{step.revision}: {line}" for step in steps for line in step.losses]
            if lost and not lose:
                raise DataWouldBeLost(
                    "the downgrade would lose what the database holds: " + "; ".join(lost)
                    + ". Nothing changed; back the database up and run it again with --yes to lose that"
                )
            for step in steps:
                try:
                    _alembic(conn, "downgrade", step.down_to)
                except Exception as exc:  # a migration's refusal, or the database's: all rolled back
                    raise SchemaError(
                        f"undoing {step.revision} failed, so nothing changed (the database is still at "
                        f"{before.revision}): {exc}"
                    ) from exc
            after = _state(conn, engine)
    finally:
        if servers is not None:  # once the transaction is over (its lock on a SQLite file)
            servers.close()
    return before, after, steps


def _check(state: SchemaState, revision: str) -> None:
    if state.empty:
        raise SchemaError(f"the database {state.where} is empty: there is nothing to downgrade")
    if state.legacy and revision != BASELINE:
        raise SchemaError(
            f"the database {state.where} was made by synclab 0.1.0 and never upgraded: it is at that release's "
            f"schema ({BASELINE}) already, before {revision}; to go forward, run `synclab db upgrade`"
        )
    if not state.known:
        raise SchemaError(
            f"the database {state.where} is at revision {state.revision}, which this synclab does not know: "
            "downgrade it with the synclab that upgraded it"
        )


def _steps(conn: Connection, state: SchemaState, revision: str) -> list[Step]:
    """The revisions from the database's down to ``revision`` (exclusive), newest first."""
    if state.legacy:  # 0.1.0's own tables, without a version table: at the baseline already (_check)
        return []
    chain: list[Script] = []
    at = state.revision
    while at != revision:
        script = _script().get_revision(at) if at is not None else None
        if not isinstance(script, Script) or script.down_revision is None:
            raise SchemaError(
                f"{revision} is not before the database's revision {state.revision}: "
                "to go forward, run `synclab db upgrade`"
            )
        if not isinstance(script.down_revision, str):
            raise SchemaError(f"revision {at} merges {script.down_revision}: only one line of revisions is downgraded")
        chain.append(script)
        at = script.down_revision
    return [Step(s.revision, str(s.down_revision), _title(s), tuple(_losses(s, conn))) for s in chain]


def _title(script: Script) -> str:
    lines = (script.doc or "").strip().splitlines()
    return lines[0] if lines else ""


def _losses(script: Script, conn: Connection) -> list[str]:
    check = getattr(script.module, "lost_by_downgrade", None)
    return [line for line in check(conn) if line] if check is not None else []
