"""Every resource of a server process, opened by the app's lifespan and closed by it."""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass

from sqlalchemy import Engine

from .hub import MemoryHub
from .live import LiveGroups
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
    hub: MemoryHub
    groups: LiveGroups
    admin_token: str

    @classmethod
    async def open(cls, settings: Settings) -> Runtime:
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
        hub = MemoryHub()
        groups = LiveGroups(database, writer, hub)
        resumed = await groups.resume_all()
        if resumed:
            log.warning("synclab: resumed %d running periods from the database", resumed)
        return cls(settings, database, writer, hub, groups, token)

    async def close(self) -> None:
        self.groups.close()
        await self.writer.close()
        self.database.close()
