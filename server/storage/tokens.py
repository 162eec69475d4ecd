"""The experimenters' tokens: named accounts with a role, stored as the SHA-256 of the token only.

A token is a random URL-safe string of 192 bits, shown once when it is made; the database keeps
its hex SHA-256 (``digest``). For a random secret of that size a plain hash is right: nothing
can be guessed from it and no slow hash is needed. A stolen database gives the names, roles and
digests, never a token that works. Revoking keeps the row (``revoked_at``), so ``token list``
shows who had access and when; the name cannot be taken again.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from .tables import tokens
from .times import iso, to_epoch

#: what a token may do: ``admin`` everything; ``watch`` read everything and open the monitor
ROLES = ("admin", "watch")
#: the name of the token generated at the first start (and of the one 0005_tokens moved)
FIRST_TOKEN = "admin"
#: a token's name: letters, digits and ``. _ @ -``, as an assistant's login or e-mail would be
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
#: the account name of ``SYNCLAB_ADMIN_TOKEN`` (a ``control`` event's ``by``): no stored token's
ENV_ACCOUNT = "SYNCLAB_ADMIN_TOKEN"


class TokenExists(ValueError):
    """A token of that name exists (or existed: revoked names are not reused)."""


def digest(token: str) -> str:
    """The hex SHA-256 of ``token``: what is stored and looked up."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A fresh token: 24 random bytes, URL-safe (32 characters)."""
    return secrets.token_urlsafe(24)


def check_name(name: str) -> str:
    if not NAME.match(name):
        raise ValueError(
            f"a token's name: expected 1 to 64 characters, each a letter, a digit or one of '._@-', "
            f"the first a letter or a digit, got {name!r}"
        )
    if name.upper() == ENV_ACCOUNT:  # else the records could not tell the two apart
        raise ValueError(f"a token's name: {name!r} is the name of the environment's SYNCLAB_ADMIN_TOKEN; choose another")
    return name


def check_role(role: str) -> str:
    if role not in ROLES:
        raise ValueError(f"a token's role: expected one of {list(ROLES)}, got {role!r}")
    return role


def add_token(engine: Engine, name: str, role: str, token: str | None = None) -> str:
    """Store a new token ``name`` with ``role``; returns the token (made here unless given), never stored."""
    check_name(name)
    check_role(role)
    token = token or new_token()
    try:
        with engine.begin() as conn:
            conn.execute(insert(tokens).values(name=name, role=role, digest=digest(token), created_at=_now()))
    except IntegrityError:
        raise TokenExists(f"a token named {name!r} exists already (names of revoked tokens are not reused)") from None
    return token


def first_token(engine: Engine) -> str | None:
    """The first start's token: made and stored as ``admin`` when there is no token at all; ``None`` otherwise.

    Two processes starting at once both try; the name is unique, so one makes it and the other
    gets ``None``.
    """
    with engine.connect() as conn:
        if conn.execute(select(func.count()).select_from(tokens)).scalar_one():
            return None
    try:
        return add_token(engine, FIRST_TOKEN, "admin")
    except TokenExists:
        return None


def token_account(engine: Engine, hashed: str) -> dict[str, Any] | None:
    """The account whose digest is ``hashed``: ``name``, ``role``, ``revoked`` and ``last_used_at`` (epoch s)."""
    with engine.connect() as conn:
        row = conn.execute(
            select(tokens.c.name, tokens.c.role, tokens.c.digest, tokens.c.revoked_at, tokens.c.last_used_at)
            .where(tokens.c.digest == hashed)
        ).first()
    if row is None:
        return None
    return {
        "name": row.name,
        "role": row.role,
        "digest": row.digest,
        "revoked": row.revoked_at is not None,
        "last_used_at": to_epoch(row.last_used_at),
    }


def token_used(engine: Engine, name: str, when: datetime) -> None:
    """Note that ``name`` was used at ``when`` (the accounts call it at most once a minute per token)."""
    with engine.begin() as conn:
        conn.execute(update(tokens).where(tokens.c.name == name).values(last_used_at=when))


def list_tokens(engine: Engine) -> list[dict[str, Any]]:
    """Every token in the order they were made: name, role, created, last used, revoked; never a digest."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(tokens.c.name, tokens.c.role, tokens.c.created_at, tokens.c.last_used_at, tokens.c.revoked_at)
            .order_by(tokens.c.id)
        ).all()
    return [
        {"name": r.name, "role": r.role, "created_at": iso(r.created_at), "last_used_at": iso(r.last_used_at),
         "revoked_at": iso(r.revoked_at)}
        for r in rows
    ]


def revoke_token(engine: Engine, name: str) -> bool:
    """Revoke ``name`` from now on; ``False`` when there is no such token or it was revoked already."""
    with engine.begin() as conn:
        done = conn.execute(
            update(tokens).where(tokens.c.name == name, tokens.c.revoked_at.is_(None)).values(revoked_at=_now())
        )
        return bool(done.rowcount)


def drop_token(engine: Engine, name: str) -> None:
    """Delete ``name`` altogether: for a command's own short-lived token (``synclab bots``), never a person's."""
    with engine.begin() as conn:
        conn.execute(delete(tokens).where(tokens.c.name == name))


def _now() -> datetime:
    return datetime.now(UTC)
