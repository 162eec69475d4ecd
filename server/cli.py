"""The ``synclab`` command: ``serve``, ``demo``, ``bots``, ``export``, ``verify``, ``db`` and ``token``."""

from __future__ import annotations

import argparse
import contextlib
import gc
import math
import os
import select
import signal
import socket
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from .dbcommand import DB_ACTIONS, run_db
from .exceptions import SchemaError, SettingsError, StoppedWaiting
from .export import FORMATS, TABLES, run_export
from .settings import Settings
from .storage import (
    check_startable,
    experiment_participants,
    experiment_row,
    insert_experiment,
    make_engine,
    prepare_schema,
    set_schema_wait,
    wait_for_change,
)
from .tokencommand import TOKEN_ACTIONS, run_token

if TYPE_CHECKING:
    import uvicorn

# What serves (uvicorn, the app's runtime, Redis's client), the bots (httpx) and `verify`'s replay
# are imported by the command that needs them: each synclab command started in its own process paid
# some 0.4 s of CPU for them (`token list` 1.3-1.4 s, now 0.9-1.0), and `export`, `db` and `token` need none.

#: young objects allocated (net) before the collector runs; CPython's default is 700
GC_THRESHOLD = 10_000
#: uvicorn's exit status when the server could not start (the port taken, the app's startup failed)
STARTUP_FAILURE = 3
#: the exit status when stdout's reader closed it early, as the shell reports a process SIGPIPE killed
CLOSED_PIPE = 128 + signal.SIGPIPE


def _prepare(settings: Settings, upgrade: bool, *, serving_here: bool) -> str | None:
    """Bring the schema to this synclab's (before the server starts); the token made at the first start, if so.

    A new database is made; one that is behind is upgraded with ``--upgrade``, else refused.
    ``serving_here``: the server runs in this process (one worker), which keeps the SQLite
    file's lock from the check on (:func:`check_startable`).
    """
    from .runtime import generated_token, stopped_while_waiting

    settings.check()
    with stopped_while_waiting():  # either wait, up to SYNCLAB_SCHEMA_WAIT (30 s): SIGTERM or Ctrl-C ends it in one line
        check_startable(settings.database_url, settings.journaled, keep=serving_here, why=settings.journal_in_force)
        # PostgreSQL: a `db` command's change under way is waited for before the revision is read
        # here (the app's own mark waits too, but only after this look; SQLite's waited just above)
        wait_for_change(settings.database_url, server=True)
    engine = make_engine(settings.database_url)
    try:
        before = prepare_schema(engine, upgrade=upgrade)
        if upgrade and not before.current and not before.empty:
            print(f"synclab: upgraded the database from revision {before.describe()} to {before.head}", flush=True)
        token = generated_token(engine, settings)
    finally:
        engine.dispose()
    if token is not None:
        print("synclab: generated the experimenter token of the account 'admin'; it is shown this once "
              "(the database keeps only its hash; more with `synclab token create NAME`)", flush=True)
    return token


def _check_port(host: str, port: int) -> None:
    """The address is free to listen on (bound and let go as uvicorn binds it), else the refusal.

    Checked before the database is prepared: a port in use was found by uvicorn only after the
    first start's token had been made, stored and printed with the monitor's link. A port taken
    in the moment between is still refused by uvicorn (exit 3), its token shown all the same.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise PortRefused(f"cannot listen on {host}:{port}: {exc.strerror or exc}; nothing was started, "
                              "made or changed (another server there? choose --port or PORT)") from None


class PortRefused(Exception):
    """The address to listen on is taken or not this machine's: exit 3 before anything is made."""


def _base_url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return f"http://{shown}:{port}"


def _check_workers(settings: Settings, workers: int) -> None:
    """``--workers`` is 1, or several of a cluster (``REDIS_URL``); else :class:`SettingsError`."""
    if workers < 1:
        raise SettingsError(f"--workers: expected 1 or more, got {workers}")
    if workers > 1 and not settings.clustered:
        raise SettingsError(
            f"--workers {workers}: several processes serve as one through Redis: set REDIS_URL "
            "(and DATABASE_URL to PostgreSQL), or run one worker"
        )


def _serve(settings: Settings, host: str, port: int, workers: int) -> int:
    """Serve until SIGTERM or SIGINT, then shut down in order; the exit status (0: a clean stop).

    On the signal uvicorn stops accepting, closes every socket with 1012 and waits for the
    requests and sockets under way (at most ``settings.shutdown_timeout`` seconds); then the
    app's lifespan ends (:meth:`server.runtime.Runtime.close`): the live groups stop, the
    writes they submitted are stored, the writer thread ends.
    """
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from .frames import WEBSOCKET_OPTIONS

    _check_workers(settings, workers)
    tune_gc()
    config = uvicorn.Config(
        "server.app:app",
        host=host,
        port=port,
        **WEBSOCKET_OPTIONS,
        log_level="info",
        timeout_graceful_shutdown=math.ceil(settings.shutdown_timeout),  # uvicorn takes whole seconds
    )
    if workers > 1:  # uvicorn's supervisor: one socket, N processes, each a worker of the cluster
        config.workers = workers
        supervisor = Multiprocess(config, sockets=[config.bind_socket()])
        supervisor.run()
        # a worker that could not start stops the supervisor, which then returns as from a clean stop
        return STARTUP_FAILURE if any(p.exitcode == STARTUP_FAILURE for p in supervisor.processes) else 0
    server = uvicorn.Server(config)
    # a refusal at the app's startup is logged in one line: server.app's import sees to it, in
    # this process and in each of a cluster's workers (exceptions.one_line_refusal)
    with _stopped_by_signals(server):
        server.run()
    return 0 if server.started else STARTUP_FAILURE


@contextlib.contextmanager
def _stopped_by_signals(server: uvicorn.Server) -> Iterator[None]:
    """SIGTERM and SIGINT stop ``server`` gracefully, also just before and after uvicorn handles them.

    While it serves, uvicorn handles both signals itself; once shut down it raises the signal it
    caught again, for the handler that was in place before it. The default one would kill the
    process then, after a clean shutdown, and a supervisor would see it die of SIGTERM: here that
    handler is the server's own, which does nothing more, and the process exits 0.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers belong to the main thread; uvicorn does not install its own either
        return
    previous = {sig: signal.signal(sig, server.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def tune_gc() -> None:
    """Fewer and shorter pauses of the cyclic garbage collector while serving.

    Under load the collector paused the event loop and the writer together: at the default
    threshold a young collection ran every few hundred decisions, and every full collection
    walked the whole heap of imported modules (SQLAlchemy's alone is tens of thousands of
    objects), tens of milliseconds each time on this 2-core machine. What is imported before
    serving lives as long as the process, so it is frozen (never walked again), and young
    collections run at ``GC_THRESHOLD`` net allocations instead of 700; cycles are still
    collected, in fewer and similar-length pauses.
    """
    from . import app  # noqa: F401  (imported here so that the app's modules are frozen too)

    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_THRESHOLD, older, oldest)


def main(argv: Sequence[str] | None = None) -> int:
    _games_from_here()
    try:
        return _run(argv)
    except BrokenPipeError:
        if not _stdout_closed():  # another pipe or socket of the command's: a fault, with its traceback
            raise
        # stdout's reader went away (`synclab export CODE | head`): no traceback; the output still
        # buffered would raise again when Python flushes it at exit, so stdout goes to /dev/null
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return CLOSED_PIPE


def _games_from_here() -> None:
    """Find a game named by import path (``"mygame:MyGame"``) in the directory synclab runs in.

    ``python -m server.cli`` and ``uvicorn server.app:app`` look there; the console script did
    not (``sys.path`` starts with its own ``bin``), so a researcher's game file beside them was
    ``No module named …`` to ``synclab serve``, ``bots`` and ``verify``. The directory is looked
    in last: a file there never hides an installed module. A cluster's workers inherit the path.
    """
    try:
        here = os.getcwd()
    except OSError:  # the directory was removed under the shell: nothing to look in
        return
    if all(os.path.abspath(entry or os.curdir) != here for entry in sys.path):
        sys.path.append(here)


def _stdout_closed() -> bool:
    """Whether stdout is a pipe whose reader has gone (``poll`` says ``POLLERR`` for it on Linux)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, ValueError, OSError):  # replaced by an object without a descriptor
        return False
    watch = select.poll()
    watch.register(fd, select.POLLOUT)
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in watch.poll(0))


def _run(argv: Sequence[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="synclab", description="A real-time multiplayer experiment server.")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (("serve", "serve the app"), ("demo", "serve, with a demo experiment")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--host", default="127.0.0.1")
        sub.add_argument("--port", type=int, default=None)
        sub.add_argument("--workers", type=int, default=1)
        sub.add_argument("--upgrade", action="store_true", help="upgrade the database first (see: synclab db upgrade)")
    exporting = commands.add_parser("export", help="write an experiment's data to stdout")
    exporting.add_argument("code")
    exporting.add_argument("--table", choices=TABLES, help="one table (default: the whole JSON document)")
    exporting.add_argument("--format", choices=FORMATS, help="default: csv for a table, json for everything")
    playing = commands.add_parser("bots", help="simulated participants play everyone not connected")
    playing.add_argument("code")
    playing.add_argument("--url", help="the server (default: http://127.0.0.1:$PORT, port 8000)")
    playing.add_argument("--token", help="the experimenter token (default: SYNCLAB_ADMIN_TOKEN, else the stored one)")
    playing.add_argument("--rate", type=float, help="decisions per second per bot, on average (default 1)")
    playing.add_argument("--seed", type=int, help="seed of the bots' strategies")
    playing.add_argument("--timeout", type=float, help="seconds before giving up (default: the experiment's length + 120)")
    checking = commands.add_parser("verify", help="recompute every result and score from the event log")
    checking.add_argument("code")
    checking.add_argument("--json", action="store_true", help="print the report as JSON")
    schema = commands.add_parser("db", help="the database's schema: upgrade, downgrade REVISION, current, history, check")
    schema.add_argument("action", choices=DB_ACTIONS)
    schema.add_argument("revision", nargs="?", help="downgrade: the revision (or release, 0.1.0) to go back to")
    schema.add_argument("--yes", action="store_true", help="downgrade: lose the values the older schema cannot hold")
    accounts = commands.add_parser("token", help="experimenter tokens: create NAME [--role], list, revoke NAME")
    accounts.add_argument("action", choices=TOKEN_ACTIONS)
    accounts.add_argument("name", nargs="?", help="the token's name (create, revoke)")
    accounts.add_argument("--role", help="create: admin (the default) or watch: reads and watches only")
    accounts.add_argument("--json", action="store_true", help="list: print JSON")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
        set_schema_wait(settings.schema_wait)
        if args.command == "export":
            return run_export(settings, args.code, args.table, args.format)
        if args.command == "bots":
            from .botscommand import run_bots_command

            return run_bots_command(
                settings, args.code, url=args.url, token=args.token, rate=args.rate, seed=args.seed, timeout=args.timeout
            )
        if args.command == "verify":
            from .verify import run_verify

            return run_verify(settings, args.code, as_json=args.json)
        if args.command == "db":
            return run_db(settings, args.action, args.revision, yes=args.yes)
        if args.command == "token":
            return run_token(settings, args.action, args.name, args.role, as_json=args.json)
        port = settings.port if args.port is None else args.port
        if not 0 <= port <= 65535:
            raise SettingsError(f"--port: expected a port from 0 to 65535, got {port}")
        _check_workers(settings, args.workers)  # refused before the database is made or touched
        _check_port(args.host, port)  # so is a port in use, before a first start's token is made
        token = _prepare(settings, args.upgrade, serving_here=args.workers == 1)
        base = _base_url(args.host, port)
        # the generated token, once, in the fragment: a browser never sends it, so no access log or
        # proxy sees it; SYNCLAB_ADMIN_TOKEN is the operator's own and is never printed
        print(f"synclab: monitor at {base}/monitor" + (f"#token={token}" if token else ""), flush=True)
        if args.command == "demo":
            _demo(settings, base)
        return _serve(settings, args.host, port, args.workers)
    except StoppedWaiting as exc:  # as asked, before anything started: a stop, not a failure
        print(f"synclab: {exc}", file=sys.stderr)
        return 0
    except (SettingsError, SchemaError) as exc:
        print(f"synclab: {exc}", file=sys.stderr)
        return 2
    except PortRefused as exc:
        print(f"synclab: {exc}", file=sys.stderr)
        return STARTUP_FAILURE
    except OperationalError as exc:  # the database away (serve, demo): cannot start, in one line
        where = make_url(settings.database_url).render_as_string(hide_password=True)
        reason = str(exc.orig or exc).strip().splitlines()[0]
        print(f"synclab: cannot reach the database {where}: {reason}", file=sys.stderr)
        return STARTUP_FAILURE


def _demo(settings: Settings, base: str) -> None:
    from .experiments import parse_request, plan

    spec = plan(parse_request({"game": "bimatrix", "participants": 4, "group_size": 2, "period_length": 120}))
    engine = make_engine(settings.database_url)
    try:
        insert_experiment(engine, spec)
        row = experiment_row(engine, spec.code)
        assert row is not None
        people = experiment_participants(engine, row["id"])
    finally:
        engine.dispose()
    print(f"synclab: demo experiment {spec.code} (bimatrix, 2 groups of 2, 120 s)", flush=True)
    for person in people:
        print(f"  {person['label']}: {base}/p/{person['code']}", flush=True)


if __name__ == "__main__":  # `python -m server.cli …`, as the console script `synclab …`
    raise SystemExit(main())
