"""Every resource of a server process, opened by the app's lifespan and closed by it."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import FrameType
from weakref import WeakValueDictionary

from sqlalchemy import Engine

from groups import available_games

from .accounts import Accounts
from .cluster import Node
from .deliveries import Deliveries
from .exceptions import StoppedWaiting
from .frames import corked
from .hub import Hub, MemoryHub
from .meter import Meter
from .routing import LiveGroups
from .settings import Settings
from .storage import (
    LOCK_WAIT,
    RENEW_EVERY,
    Database,
    EventWriter,
    ServingMark,
    check_startable,
    close_connections_left_open,
    first_token,
    hold_serving,
    prepare_schema,
    set_schema_wait,
    wait_for_change,
)
from .viewfiles import missing_view

log = logging.getLogger("synclab")
#: seconds into a shutdown after which it logs where its tasks and threads are (it may go on up to
#: ``SYNCLAB_SHUTDOWN_TIMEOUT`` for the writes queued, and should be over well before)
SLOW_SHUTDOWN = 10.0


@contextlib.contextmanager
def stopped_while_waiting() -> Iterator[None]:
    """SIGTERM and SIGINT end a server's wait for its database at its start at once (a ``db``
    command's schema change, up to ``SYNCLAB_SCHEMA_WAIT``; another process's lock): :class:`StoppedWaiting`.

    The wait blocks the main thread: ``synclab serve``'s before uvicorn starts, or the app's
    startup on its event loop (``uvicorn server.app:app``), where uvicorn's handlers only note
    the signal: the server went on waiting, then started, and only then stopped. Off the main
    thread nothing changes (signals are the main thread's).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, _frame: FrameType | None) -> None:
        raise StoppedWaiting(f"stopped by {signal.Signals(signum).name} while waiting for the database; "
                             "nothing was started")

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def generated_token(engine: Engine, settings: Settings) -> str | None:
    """The token made at the first start, to be shown once: the account ``admin``, stored hashed.

    ``None`` when ``SYNCLAB_ADMIN_TOKEN`` is set or the database has tokens already (made then,
    or with ``synclab token create``): a token cannot be shown again, only its account.
    """
    if settings.admin_token:
        return None
    return first_token(engine)


@dataclass(eq=False)
class Runtime:
    settings: Settings
    database: Database
    writer: EventWriter
    hub: Hub
    groups: LiveGroups
    #: who a bearer token is (``server.accounts``)
    accounts: Accounts
    #: ``SYNCLAB_ADMIN_TOKEN``, or the token this process generated at the first start; else ``None``
    #: (a stored token is only a hash)
    admin_token: str | None
    #: this worker in a cluster (``REDIS_URL``); ``None`` in one process
    node: Node | None = None
    #: the scores on their way back to oTree (``server.deliveries``)
    deliveries: Deliveries | None = None
    #: each watched experiment's meter, shared by its monitors in this process (``server.monitor``)
    meters: WeakValueDictionary[int, Meter] = field(default_factory=WeakValueDictionary)
    #: PostgreSQL: the session whose lock marks the database served (``server.storage.serving``)
    serving: ServingMark | None = None
    #: the task that takes that mark again when its session ended (a restart of PostgreSQL)
    _renewing: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, settings: Settings) -> Runtime:
        settings.check()
        set_schema_wait(settings.schema_wait)
        with stopped_while_waiting():
            # its SQLite file's lock (a `db` command's schema change: up to SYNCLAB_SCHEMA_WAIT), waited for on the
            # event loop under `uvicorn server.app:app` (`synclab serve` waited before, and keeps it),
            # then kept for the Database; no longer than the Database itself waits for it
            check_startable(settings.database_url, settings.journaled, keep=True, why=settings.journal_in_force,
                            wait=LOCK_WAIT)
            # PostgreSQL: the same wait, here rather than in hold_serving's on a thread, which a
            # signal could not end (the mark is taken after it, at once unless another change began)
            wait_for_change(settings.database_url, server=True)
        # a writer stopped inside a transaction holds its groups' rows no longer than a lease
        database = Database(
            settings.database_url,
            stall_timeout=settings.lease_seconds,
            lock_timeout=settings.lock_timeout,
            synced=settings.durability == "power-loss",
            journal=settings.journaled,
            journal_why=settings.journal_in_force,
            apply_every=settings.apply_every,
            journal_size=settings.journal_size,
        )
        serving: ServingMark | None = None
        try:
            # PostgreSQL: this server's mark, which keeps `synclab db upgrade|downgrade` out while it
            # runs (SQLite's is the file's lock the Database holds), taken before the revision is read
            serving = await asyncio.to_thread(hold_serving, settings.database_url)
            # a new database is made; one that is behind is refused (synclab db upgrade)
            await database.write(prepare_schema)
            # what a run stopped by a crash left in the journal, before anything reads (SQLite)
            recovered = await database.recover()
            if recovered:
                log.warning("synclab: applied %d writes the last run had acknowledged from its journal", recovered)
            generated = await database.write(generated_token, settings)
        except Exception:
            if serving is not None:
                await asyncio.to_thread(serving.close)
            database.close()
            raise
        if not settings.clustered:  # see server.storage.leftover: a cluster's worker cannot tell
            left_open = await database.write(close_connections_left_open, time.time())
            if left_open:
                log.warning("synclab: closed %d connections the last run left open (code 1006)", left_open)
        if not database.synced:
            log.warning(
                "synclab: SYNCLAB_DURABILITY=crash: an acknowledged decision survives a crash of this process, "
                "but a power loss may take the last second's"
            )
        for name, game in sorted(available_games().items()):  # refused at creation, said here first
            missing = missing_view(game, name)
            if missing is not None:
                log.warning("synclab: game %r cannot be played: %s", name, missing)
        if generated is not None:  # the only time it can be shown: the database keeps its hash
            log.warning("synclab: generated the experimenter token %s (the account 'admin'; shown once)", generated)
        writer = EventWriter(
            database, max_batch=settings.writer_max_batch, commit_delay=settings.group_commit_wait, delivering=corked
        )
        writer.start()
        node = Node(settings, database) if settings.clustered else None
        hub: Hub = node.hub if node is not None else MemoryHub()
        deliveries = Deliveries(database, settings)
        groups = LiveGroups(
            database, writer, hub, node=node, run_ended=deliveries.run_ended, grace=settings.group_grace
        )
        if node is not None:
            await node.start(groups)
            log.warning("synclab: worker %s joined cluster %r", node.worker, settings.cluster_name)
        resumed = await groups.resume_all()
        if resumed:
            log.warning("synclab: resumed %d running periods from the database", resumed)
        deliveries.start()
        accounts = Accounts(database, settings.admin_token)
        runtime = cls(
            settings, database, writer, hub, groups, accounts, settings.admin_token or generated, node, deliveries,
            serving=serving,
        )
        if serving is not None:
            runtime._renewing = asyncio.create_task(_renewed(serving), name="synclab-serving-mark")
        return runtime

    async def close(self) -> None:
        """The end of the lifespan: nothing new is computed, what was submitted is stored, then the database closes.

        uvicorn runs it once it has stopped accepting, closed every socket (1012) and seen their
        tasks end, so the connections' last writes are queued by then. The live groups' clocks
        stop; the writer takes no new write and stores what is queued, whose outcomes reach the
        groups on the loop; then the writer thread ends. The queue is waited for at most
        ``settings.shutdown_timeout`` seconds in all: past it, what is left is refused and the
        count logged (:meth:`.storage.Database.close`), so the process can exit. In a cluster
        the worker then hands its groups over (their leases released at once) and leaves.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.shutdown_timeout
        slow = loop.call_later(SLOW_SHUTDOWN, _say_where_the_shutdown_waits)
        try:
            await self._close(loop, deadline)
        finally:
            slow.cancel()

    async def _close(self, loop: asyncio.AbstractEventLoop, deadline: float) -> None:
        if self._renewing is not None:
            self._renewing.cancel()
        self.groups.close()
        if self.deliveries is not None:
            await self.deliveries.close()
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.writer.close(), self.settings.shutdown_timeout)
            if self.node is not None:  # stored: the groups go to other workers at once
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.node.drain(), max(0.1, deadline - loop.time()))
                await self.node.close()
        finally:
            # on a thread: the loop goes on delivering the last batches' outcomes meanwhile
            try:
                await asyncio.to_thread(self.database.close, max(0.0, deadline - loop.time()))
            finally:
                if self.serving is not None:  # the last: no schema change while anything was stored
                    await asyncio.to_thread(self.serving.close)


def _say_where_the_shutdown_waits() -> None:
    """The shutdown has taken :data:`SLOW_SHUTDOWN` seconds: where each task and thread is, for the log."""
    where = io.StringIO()
    for task in asyncio.all_tasks():
        task.print_stack(limit=8, file=where)
    frames = sys._current_frames()
    for thread in threading.enumerate():
        if thread.ident in frames and thread is not threading.current_thread():
            where.write(f"Thread {thread.name}:\n{''.join(traceback.format_stack(frames[thread.ident], limit=8))}")
    log.warning("synclab: the shutdown has taken over %g s; its tasks and threads:\n%s", SLOW_SHUTDOWN, where.getvalue())


async def _renewed(serving: ServingMark, every: float = RENEW_EVERY) -> None:
    """Every ``every`` seconds: the server's mark on its PostgreSQL database held, or taken again."""
    while True:
        await asyncio.sleep(every)
        try:
            await asyncio.to_thread(serving.renew)
        except Exception:  # never the end of the renewals: the next one tries again
            log.exception("synclab: the look at this server's mark on the database failed")
