"""Settings from the environment (a ``.env`` file in the working directory is read too)."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from dotenv import dotenv_values
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from .exceptions import SettingsError
from .storage import DEFAULT_JOURNAL_SIZE, sqlite_file


def _environ() -> dict[str, str]:
    values = {k: v for k, v in dotenv_values(Path(".env")).items() if v is not None}
    values.update(os.environ)
    return values


def _number(
    env: dict[str, str], name: str, default: float, *, minimum: float = 0, maximum: float = 1e12
) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}: expected a number, got {raw!r}") from None
    if not (math.isfinite(value) and minimum <= value <= maximum):
        raise SettingsError(f"{name}: expected a number from {minimum:g} to {maximum:g}, got {raw!r}")
    return value


def _name(env: dict[str, str], name: str, default: str) -> str:
    raw = env.get(name) or default
    if not raw.replace("-", "").replace("_", "").isalnum() or len(raw) > 64:
        raise SettingsError(f"{name}: expected letters, digits, '-' and '_' (at most 64), got {raw!r}")
    return raw


#: the values of ``SYNCLAB_DURABILITY``, and the group commit's wait that goes with each unless
#: ``SYNCLAB_COMMIT_DELAY`` is set: a commit that is not synced costs too little to wait for company
DURABILITIES = {"power-loss": 0.001, "crash": 0.0}


def _durability(env: dict[str, str]) -> str:
    raw = env.get("SYNCLAB_DURABILITY") or "power-loss"
    if raw not in DURABILITIES:
        raise SettingsError(f"SYNCLAB_DURABILITY: expected one of {', '.join(DURABILITIES)}, got {raw!r}")
    return raw


MIB = 1024 * 1024
#: the largest request body the server reads (``SYNCLAB_MAX_BODY_BYTES``): the largest valid
#: ``POST /api/experiments`` of a bundled game, every field at its longest, is 1,888 bytes (its
#: config 222), so a MiB leaves a game of one's own room for a config of thousands of values
DEFAULT_MAX_BODY_BYTES = MIB
#: the limit's own bounds: room for a create body at the least, never gigabytes
MAX_BODY_BYTES_RANGE = (4096, 256 * MIB)

#: the values of ``SYNCLAB_JOURNAL``
JOURNAL_CHOICES = ("auto", "on", "off")


def journal_supported() -> bool:
    """The system has the calls the journal makes (``fdatasync``, ``preadv``: Linux, the BSDs;
    not macOS, where ``SYNCLAB_JOURNAL=auto`` keeps the direct commit)."""
    return hasattr(os, "fdatasync") and hasattr(os, "preadv")


def _journal_refused(given: object) -> SettingsError:
    return SettingsError(f"SYNCLAB_JOURNAL: expected one of {', '.join(JOURNAL_CHOICES)}, got {given!r}")


def _journal(env: dict[str, str]) -> str:
    raw = (env.get("SYNCLAB_JOURNAL") or "auto").strip().lower()
    raw = {"1": "on", "true": "on", "yes": "on", "0": "off", "false": "off", "no": "off"}.get(raw, raw)
    if raw not in JOURNAL_CHOICES:
        raise _journal_refused(env.get("SYNCLAB_JOURNAL"))
    return raw


#: the databases synclab runs on, by SQLAlchemy's backend name (``postgres://`` is PostgreSQL too)
BACKENDS = ("sqlite", "postgresql", "postgres")


def _database_url(env: dict[str, str]) -> str:
    url = env.get("DATABASE_URL") or Settings.database_url
    shown = re.sub(r"(//[^/@:]*:)[^/@]*@", r"\1***@", url)  # its password never in a log
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        raise SettingsError(f"DATABASE_URL: expected an SQLAlchemy URL such as sqlite:///./synclab.db, got {shown!r}") from None
    if parsed.get_backend_name() not in BACKENDS:
        raise SettingsError(
            f"DATABASE_URL: synclab runs on SQLite (sqlite:///./synclab.db) or PostgreSQL "
            f"(postgresql://user@host/db), got {shown!r}"
        )
    if "+" in parsed.drivername:  # a driver named: one that cannot be loaded is refused here, not in a traceback
        try:
            parsed.get_dialect().import_dbapi()
        except (ArgumentError, ImportError) as exc:
            raise SettingsError(
                f"DATABASE_URL: cannot load the driver {parsed.drivername!r} ({exc}); "
                "postgresql://… uses psycopg 3, which synclab installs"
            ) from None
    return url


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Every setting of a server process. Build it with :meth:`from_env` or by hand in tests."""

    database_url: str = "sqlite:///./synclab.db"
    redis_url: str | None = None
    admin_token: str | None = None
    port: int = 8000
    #: a client frame larger than this is refused with an ``error`` frame
    max_frame_bytes: int = 16 * 1024
    #: a request body larger than this is refused with a 413 (``server.bodies``), never read whole
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    #: frames a connection may send per second, sustained, and in a burst
    frames_per_second: float = 50.0
    frame_burst: int = 100
    #: frames queued for one connection before it is cut off as too slow
    send_queue_frames: int = 2048
    #: the writer commits at most this many events in one transaction
    writer_max_batch: int = 2000
    #: what an acknowledged decision survives (see :data:`DURABILITIES`): ``"power-loss"`` (every
    #: commit synced to the disk) or ``"crash"`` (a crash of this process; the disk is synced about
    #: once a second, so a power loss may take the last second's)
    durability: str = "power-loss"
    #: seconds the writer waits before a commit while writes stream in (a batch had company):
    #: a group commit, fewer and larger transactions under load; 0 commits each batch at once;
    #: ``None``: the default that goes with the writer (see :attr:`group_commit_wait`)
    commit_delay: float | None = None
    #: SQLite: acknowledge a batch once it is in a journal synced to the disk, and apply it to the
    #: database a few milliseconds later on a thread of its own (``server.storage.journaled``);
    #: as durable as the direct commit, one process per database file. ``"auto"``: wherever it can
    #: be (see :attr:`journaled`); ``"on"`` refuses a database it cannot serve; ``"off"``
    journal: str = "auto"
    #: with the journal: its file's size in bytes, written once (zeros) and reused pass after pass
    journal_size: int = DEFAULT_JOURNAL_SIZE
    #: with the journal: seconds the apply gathers acknowledged batches before it stores them in
    #: one transaction (a read or a job that needs them has them applied at once)
    apply_every: float = 0.01
    #: seconds a shutdown waits for the requests and sockets under way, then for the writes
    #: queued; past it what is still queued is refused and logged (the commit under way finishes)
    shutdown_timeout: float = 30.0
    #: seconds a server or command waits for a ``db`` command's schema change (or a journal server
    #: for an export's read) before it gives up in one line
    schema_wait: float = 30.0
    #: the cluster's name: the prefix of its keys and channels in Redis (several clusters, one Redis)
    cluster_name: str = "synclab"
    #: seconds a group's lease lasts without renewal: a dead worker's groups move on within it
    lease_seconds: float = 3.0
    #: seconds a cluster's worker not heard from is gone (its heartbeat's TTL in Redis); it beats
    #: five times as often, and the connections it left open are closed once it stayed gone as
    #: long again (see :class:`server.cluster.heartbeats.BeatTimes`)
    heartbeat_seconds: float = 5.0
    #: PostgreSQL: seconds any statement of the server waits for a lock before it fails (a table
    #: locked by DDL, a migration, ``LOCK TABLE``): a REST read answers 503, a batch is refused
    #: and its decisions are sent again by their clients; 0 leaves the database's own setting
    lock_timeout: float = 10.0
    #: a cluster's worker whose event loop ran this many seconds late, on average over the last
    #: two seconds, is busy: a group nobody serves yet goes to a worker that is not; 0 turns it off
    busy_lag: float = 0.1
    #: seconds a busy worker stays busy before it hands a group it serves to a worker that is
    #: not, and then seconds between two such hand-overs while it stays busy (±50 %)
    shed_after: float = 5.0
    shed_every: float = 2.0
    #: seconds before a failed delivery to oTree is tried again, doubled per attempt up to the max
    delivery_retry: float = 2.0
    delivery_retry_max: float = 300.0
    #: seconds between looks for due deliveries (other workers store them too); one attempt's timeout
    delivery_poll: float = 2.0
    delivery_timeout: float = 10.0
    #: seconds a finished group (period over, nobody connected) stays in memory before it is
    #: dropped; it is loaded again from the database if somebody connects to it later
    group_grace: float = 2.0

    @property
    def clustered(self) -> bool:
        """Several processes or hosts through Redis (``REDIS_URL`` set)."""
        return self.redis_url is not None

    @property
    def journal_fits(self) -> bool:
        """The journal can serve this database: one process on a SQLite file, every commit synced,
        on a system with the calls the journal makes (:func:`journal_supported`)."""
        return (
            sqlite_file(self.database_url) is not None and self.redis_url is None
            and self.durability == "power-loss" and journal_supported()
        )

    @property
    def journaled(self) -> bool:
        """Whether this server stores through the journal (``SYNCLAB_JOURNAL``, ``auto`` resolved)."""
        return self.journal == "on" or (self.journal == "auto" and self.journal_fits)

    @property
    def journal_in_force(self) -> str:
        """``SYNCLAB_JOURNAL`` as it stands for this server, and why with ``auto``: for a message."""
        if self.journal != "auto":
            return f"SYNCLAB_JOURNAL={self.journal}"
        if self.journaled:
            return ("SYNCLAB_JOURNAL=auto, the default: the journal, for one process on a SQLite file "
                    "at SYNCLAB_DURABILITY=power-loss")
        why = (f"SYNCLAB_DURABILITY={self.durability}" if self.durability != "power-loss"
               else "a system without os.fdatasync or os.preadv" if not journal_supported()
               else "not one process on a SQLite file")
        return f"SYNCLAB_JOURNAL=auto, the default: the direct commit, with {why}"

    @property
    def group_commit_wait(self) -> float:
        """``commit_delay``, or its default: 1 ms for synced commits, none for the journal's appends.

        A journal's append is one write and one sync of a few hundred bytes a decision, and a
        commit that is not synced costs little: too cheap to wait for company.
        """
        if self.commit_delay is not None:
            return self.commit_delay
        return 0.0 if self.journaled else DURABILITIES[self.durability]

    def check(self) -> None:
        """Refuse what the server cannot run with: one line saying why (:class:`SettingsError`)."""
        if self.durability == "crash" and make_url(self.database_url).get_backend_name() != "sqlite":
            # PostgreSQL could lose the last commits in its own crash while the workers run on
            # with what those commits held (and their seqs): the server would not start afresh
            raise SettingsError(
                "SYNCLAB_DURABILITY=crash is for SQLite: on PostgreSQL every commit is synced "
                "(a crash of the PostgreSQL server, unlike a power loss on one machine, would leave "
                "the workers running on commits it lost); unset it"
            )
        if self.redis_url is not None and make_url(self.database_url).get_backend_name() == "sqlite":
            raise SettingsError(
                "REDIS_URL is set but DATABASE_URL is SQLite: a cluster's workers share one PostgreSQL "
                "database (DATABASE_URL=postgresql://…); unset REDIS_URL to run one process on SQLite"
            )
        if self.journal not in JOURNAL_CHOICES:
            raise _journal_refused(self.journal)
        if self.journal == "on" and not self.journal_fits:
            raise SettingsError(
                "SYNCLAB_JOURNAL=on is for one process on a SQLite file with SYNCLAB_DURABILITY=power-loss "
                "(PostgreSQL and a cluster keep the direct commit); unset it"
                if journal_supported() else
                "SYNCLAB_JOURNAL=on needs os.fdatasync and os.preadv, which this system lacks; unset it"
            )
        if self.redis_url is not None and 0 < self.lock_timeout <= self.lease_seconds:
            raise SettingsError(
                f"SYNCLAB_LOCK_TIMEOUT ({self.lock_timeout:g} s) must be longer than SYNCLAB_LEASE_SECONDS "
                f"({self.lease_seconds:g} s): a worker taking a group over waits up to a lease for the "
                "rows a stalled worker holds"
            )

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = _environ() if env is None else env
        durability = _durability(env)
        journal = _journal(env)
        return cls(
            database_url=_database_url(env),
            redis_url=env.get("REDIS_URL") or None,
            admin_token=env.get("SYNCLAB_ADMIN_TOKEN") or None,
            port=int(_number(env, "PORT", 8000, minimum=0, maximum=65535)),
            max_frame_bytes=int(_number(env, "SYNCLAB_MAX_FRAME_BYTES", 16 * 1024, minimum=64)),
            max_body_bytes=int(_number(env, "SYNCLAB_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES,
                                       minimum=MAX_BODY_BYTES_RANGE[0], maximum=MAX_BODY_BYTES_RANGE[1])),
            frames_per_second=_number(env, "SYNCLAB_FRAMES_PER_SECOND", 50.0, minimum=0.1),
            frame_burst=int(_number(env, "SYNCLAB_FRAME_BURST", 100, minimum=1)),
            send_queue_frames=int(_number(env, "SYNCLAB_SEND_QUEUE", 2048, minimum=16)),
            writer_max_batch=int(_number(env, "SYNCLAB_WRITER_MAX_BATCH", 2000, minimum=1)),
            durability=durability,
            commit_delay=(
                None if not env.get("SYNCLAB_COMMIT_DELAY")
                else _number(env, "SYNCLAB_COMMIT_DELAY", 0.0, minimum=0, maximum=0.1)
            ),
            journal=journal,
            apply_every=_number(env, "SYNCLAB_APPLY_EVERY", 0.01, minimum=0.001, maximum=60),
            journal_size=int(_number(env, "SYNCLAB_JOURNAL_SIZE", DEFAULT_JOURNAL_SIZE // MIB, minimum=1, maximum=65536)) * MIB,
            shutdown_timeout=_number(env, "SYNCLAB_SHUTDOWN_TIMEOUT", 30.0, minimum=0, maximum=24 * 3600),
            schema_wait=_number(env, "SYNCLAB_SCHEMA_WAIT", 30.0, minimum=0, maximum=24 * 3600),
            cluster_name=_name(env, "SYNCLAB_CLUSTER", "synclab"),
            lease_seconds=_number(env, "SYNCLAB_LEASE_SECONDS", 3.0, minimum=0.5, maximum=60),
            heartbeat_seconds=_number(env, "SYNCLAB_HEARTBEAT_SECONDS", 5.0, minimum=0.5, maximum=60),
            lock_timeout=_number(env, "SYNCLAB_LOCK_TIMEOUT", 10.0, minimum=0, maximum=3600),
            busy_lag=_number(env, "SYNCLAB_BUSY_LAG", 0.1, minimum=0, maximum=60),
            shed_after=_number(env, "SYNCLAB_SHED_AFTER", 5.0, minimum=0.5, maximum=3600),
            shed_every=_number(env, "SYNCLAB_SHED_EVERY", 2.0, minimum=0.1, maximum=600),
            delivery_retry=_number(env, "SYNCLAB_DELIVERY_RETRY", 2.0, minimum=0.01, maximum=3600),
            delivery_retry_max=_number(env, "SYNCLAB_DELIVERY_RETRY_MAX", 300.0, minimum=0.01, maximum=24 * 3600),
            delivery_poll=_number(env, "SYNCLAB_DELIVERY_POLL", 2.0, minimum=0.05, maximum=3600),
            delivery_timeout=_number(env, "SYNCLAB_DELIVERY_TIMEOUT", 10.0, minimum=0.1, maximum=600),
            group_grace=_number(env, "SYNCLAB_GROUP_GRACE", 2.0, minimum=0, maximum=24 * 3600),
        )
