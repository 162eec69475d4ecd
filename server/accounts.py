"""Who is calling: experimenter tokens looked up by their hash, with their role, cached for a second.

A bearer token is an account (``synclab token create NAME --role admin|watch``, stored as its
SHA-256 in the ``tokens`` table, see :mod:`server.storage.tokens`), or ``SYNCLAB_ADMIN_TOKEN``
from the environment, which is always ``admin``. ``admin`` may do everything; ``watch`` reads
everything and opens the monitor, but cannot create, control or export experiments.

Every request is checked. A lookup is kept :data:`CACHE_SECONDS` (positive or not), so a revoke
takes effect within that on every worker: each reads the database itself. Digests are compared
with :func:`hmac.compare_digest`. :class:`Authenticate` resolves the bearer header of each HTTP
request before the endpoint runs, so the endpoints' checks (:func:`server.queries.require_admin`)
stay plain calls.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from .storage import ENV_ACCOUNT, Database, digest, token_account, token_used

log = logging.getLogger("synclab.accounts")

#: seconds a lookup is trusted: a revoked token is refused everywhere within this
CACHE_SECONDS = 1.0
#: lookups kept at most (the cache starts over past it: a flood of wrong tokens stays bounded)
CACHE_SIZE = 1024
#: a token's ``last_used_at`` is written at most this often (seconds)
USED_EVERY = 60.0
#: where :class:`Authenticate` leaves the caller in the request's scope
SCOPE_KEY = "synclab.account"


@dataclass(frozen=True, slots=True)
class Account:
    """A token that is known and not revoked: its name and role."""

    name: str
    role: str

    def may(self, role: str) -> bool:
        """Whether this account has ``role`` (``admin`` has every role)."""
        return self.role == "admin" or self.role == role


@dataclass(frozen=True, slots=True)
class Refused:
    """A token that is not accepted, and why (unknown, or revoked: with its name)."""

    reason: str


class Accounts:
    """Looks tokens up: the environment's first, then the database's, each lookup kept a second."""

    def __init__(
        self, database: Database, env_token: str | None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._database = database
        self._env = digest(env_token) if env_token else None
        self._clock = clock
        #: digest -> (the answer, until when it holds)
        self._cache: dict[str, tuple[Account | Refused, float]] = {}
        #: account name -> when (clock) its use was last written here
        self._noted: dict[str, float] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    async def identify(self, token: str) -> Account | Refused:
        """The account of ``token``, or why it is refused."""
        hashed = digest(token)
        if self._env is not None and hmac.compare_digest(hashed, self._env):
            return Account(ENV_ACCOUNT, "admin")
        now = self._clock()
        cached = self._cache.get(hashed)
        if cached is not None and cached[1] > now:
            return cached[0]
        row = await self._database.read(token_account, hashed)
        answer: Account | Refused
        if row is None or not hmac.compare_digest(row["digest"], hashed):
            answer = Refused("the experimenter token is not known (wrong, or never made)")
        elif row["revoked"]:
            answer = Refused(f"the token {row['name']!r} was revoked")
        else:
            answer = Account(row["name"], row["role"])
            self._note_use(answer.name, row["last_used_at"])
        if len(self._cache) >= CACHE_SIZE:
            self._cache.clear()
        self._cache[hashed] = (answer, now + CACHE_SECONDS)
        return answer

    def _note_use(self, name: str, stored: float | None) -> None:
        """Write the token's ``last_used_at`` if it is a minute old (in the background, at most once a minute here)."""
        wall = time.time()
        if stored is not None and wall - stored < USED_EVERY:
            return
        now = self._clock()
        if now - self._noted.get(name, -USED_EVERY) < USED_EVERY:
            return
        self._noted[name] = now
        task = asyncio.get_running_loop().create_task(
            self._database.write(token_used, name, datetime.fromtimestamp(wall, UTC))
        )
        self._tasks.add(task)
        task.add_done_callback(self._written)

    def _written(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("a token's last use could not be stored: %s", task.exception())


def bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header; ``None`` when there is none."""
    scheme, _, token = (header or "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


class Authenticate:
    """ASGI middleware: resolves each HTTP request's bearer token to its account (or refusal) in the scope.

    The endpoints decide what the account may do; a request without the header passes as it is.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            token = bearer(_header(scope, b"authorization"))
            if token is not None:
                accounts: Accounts = scope["app"].state.runtime.accounts
                scope[SCOPE_KEY] = await accounts.identify(token)
        await self.app(scope, receive, send)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None
