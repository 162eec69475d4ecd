"""``synclab token``: the experimenters' tokens, each an account with a name and a role.

    synclab token create NAME [--role admin|watch]   make a token; it is printed once, on stdout
    synclab token list [--json]                      names, roles, created, last used, revoked (every token)
    synclab token revoke NAME                        refused from then on (within a second or two)

The database keeps the SHA-256 of each token, never the token: a lost token cannot be shown
again (revoke it and make another). ``watch`` reads everything and opens the monitor; ``admin``
also creates, controls and exports experiments. Exit 1 when the name is taken or unknown, 2 when
the database cannot be used or an option is refused (``--role`` is create's alone).
"""

from __future__ import annotations

import sys

import orjson

from .settings import Settings
from .storage import (
    TokenExists,
    add_token,
    check_name,
    check_role,
    list_tokens,
    make_engine,
    prepare_schema,
    reading_current,
    revoke_token,
    wait_for_change,
)

TOKEN_ACTIONS = ("create", "list", "revoke")
#: why ``--role`` means nothing to the other actions (they refuse it)
_ROLE_ELSEWHERE = {
    "list": "list shows every token with its role; filter it, say with grep or --json",
    "revoke": "revoke names the token alone",
}
_COLUMNS = (("name", "name"), ("role", "role"), ("created_at", "created"), ("last_used_at", "last used"),
            ("revoked_at", "revoked"))


def run_token(settings: Settings, action: str, name: str | None = None, role: str | None = None,
              as_json: bool = False) -> int:
    """Run ``synclab token ACTION``; the exit status. ``role``: create's (``None``: admin); refused
    for list and revoke, which would otherwise ignore it."""
    if role is not None and action != "create":
        print(f"synclab: token {action}: --role is for create only ({_ROLE_ELSEWHERE[action]})", file=sys.stderr)
        return 2
    role = role or "admin"
    if action == "list":
        with reading_current(settings.database_url) as engine:
            rows = list_tokens(engine)
        _print_list(rows, as_json)
        return 0
    if not name:
        print(f"synclab: token {action}: expected a NAME", file=sys.stderr)
        return 2
    try:
        check_name(name)
        check_role(role)
    except ValueError as exc:
        print(f"synclab: {exc}", file=sys.stderr)
        return 2
    if action == "create":
        return _create(settings, name, role)
    with reading_current(settings.database_url) as engine:
        if revoke_token(engine, name):
            print(f"synclab: revoked the token {name!r}; every worker refuses it within two seconds", file=sys.stderr)
            return 0
        known = {row["name"]: row for row in list_tokens(engine)}
    if name in known:
        print(f"synclab: the token {name!r} was revoked already, at {known[name]['revoked_at']}", file=sys.stderr)
    else:
        print(f"synclab: no token named {name!r} (see: synclab token list)", file=sys.stderr)
    return 1


def _create(settings: Settings, name: str, role: str) -> int:
    url = settings.database_url
    wait_for_change(url)  # as reading() does: a schema change under way is waited for
    engine = make_engine(url)  # a new database is made, as serve makes one
    try:
        prepare_schema(engine)
    finally:
        engine.dispose()
    try:
        # the token stored under a reader's mark, as list and revoke read and write: a `db upgrade`
        # or `downgrade` begun meanwhile refuses, one under way is waited for (:mod:`.storage.readers`)
        with reading_current(url) as engine:
            token = add_token(engine, name, role)
            where = engine.url.render_as_string(hide_password=True)
    except TokenExists as exc:
        print(f"synclab: {exc}", file=sys.stderr)
        return 1
    print(token, flush=True)
    print(
        f"synclab: made the token {name!r} with the role {role} in {where}; it is shown this once "
        "(the database keeps only its hash)",
        file=sys.stderr,
    )
    return 0


def _print_list(rows: list[dict[str, object]], as_json: bool) -> None:
    if as_json:
        print(orjson.dumps(rows).decode())
        return
    table = [[title for _, title in _COLUMNS]]
    table += [[str(row[key] or "-") for key, _ in _COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(_COLUMNS))]
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
