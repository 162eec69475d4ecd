"""Every resource of a server process, opened by the app's lifespan and closed by it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from dataclasses import dataclass

from sqlalchemy import Engine

from .cluster import Node
from .deliveries import Deliveries
from .hub import Hub, MemoryHub
from .routing import LiveGroups
from .settings import Settings
from .storage import Database, EventWriter, get_or_create_meta, prepare_schema

log = logging.getLogger("synclab")


#: where the generated experimenter token is stored (the ``meta`` table)
ADMIN_TOKEN_KEY = "admin_token"


def admin_token(engine: Engine, settings: Settings) -> tuple[str, bool]:
    """The experimenter token: from the environment, else the stored one, else a new one."""
    if settings.admin_token:
        return settings.admin_token, False
    return get_or_create_meta(engine, ADMIN_TOKEN_KEY, lambda: secrets.token_urlsafe(24))


@dataclass(eq=False)
class Runtime:
    settings: Settings
    database: Database
    writer: EventWriter
    hub: Hub
    groups: LiveGroups
    admin_token: str
    #: this worker in a cluster (``REDIS_URL``); ``None`` in one process
    node: Node | None = None
    #: the scores on their way back to oTree (``server.deliveries``)
    deliveries: Deliveries | None = None

    @classmethod
    async def open(cls, settings: Settings) -> Runtime:
        settings.check_cluster()
        database = Database(settings.database_url)
        try:
            # a new database is made; one that is behind is refused (synclab db upgrade)
            await database.write(prepare_schema)
            token, created = await database.write(admin_token, settings)
        except Exception:
            database.close()
            raise
        if created:
            log.warning("synclab: generated the experimenter token %s (stored in the database)", token)
        writer = EventWriter(database, max_batch=settings.writer_max_batch)
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
        return cls(settings, database, writer, hub, groups, token, node, deliveries)

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
            await asyncio.to_thread(self.database.close, max(0.0, deadline - loop.time()))
