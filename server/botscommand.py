"""``synclab bots CODE``, the command: the token the bots read with, the run, its report and exit status.

:func:`run_bots_command` exits 0 when the run ended (every bot done, or the experiment ended), 1 on
the time limit or when a bot gave up, 2 when it cannot run (no token, unknown experiment, server
unreachable). The run itself is :func:`server.bots.run_bots`.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sys
from collections.abc import Iterator

from sqlalchemy.engine import make_url

from .bots import BotsError, run_bots
from .exceptions import SettingsError
from .settings import Settings
from .storage import add_token, drop_token, reading


@contextlib.contextmanager
def bots_token(settings: Settings, given: str | None = None) -> Iterator[str]:
    """The token the bots read the experiment with: ``given``, else ``SYNCLAB_ADMIN_TOKEN``, else one of their own.

    Their own is a ``watch`` token (they only read) made in the database for this run and deleted
    after it: the stored tokens are hashes, so none can be read back.
    """
    if given or settings.admin_token:
        yield str(given or settings.admin_token)
        return
    where = make_url(settings.database_url).render_as_string(hide_password=True)
    name = f"bots-{secrets.token_hex(4)}"
    try:
        with reading(settings.database_url) as engine:
            token = add_token(engine, name, "watch")
    except SettingsError as exc:
        raise BotsError(
            f"no experimenter token: pass --token or set SYNCLAB_ADMIN_TOKEN (none could be made in {where}: {exc})"
        ) from None
    try:
        yield token
    finally:
        with contextlib.suppress(SettingsError), reading(settings.database_url) as engine:
            drop_token(engine, name)


def run_bots_command(
    settings: Settings,
    code: str,
    *,
    url: str | None = None,
    token: str | None = None,
    rate: float | None = None,
    seed: int | None = None,
    timeout: float | None = None,
) -> int:
    """``synclab bots CODE``: 0 when the run ended, 1 on the time limit or a failed bot, 2 when it cannot run.

    ``url`` defaults to ``http://127.0.0.1:$PORT``; the token to :func:`bots_token`'s choice.
    """
    try:
        with bots_token(settings, token) as found:
            report = asyncio.run(run_bots(
                url or f"http://127.0.0.1:{settings.port}",
                code,
                found,
                rate=rate,
                seed=seed,
                time_limit=timeout,
                log=lambda line: print(f"synclab: {line}", flush=True),
            ))
    except BotsError as exc:
        print(f"synclab: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("synclab: interrupted; the bots closed their connections", file=sys.stderr)
        return 130
    for error in report.errors:
        print(f"synclab: {error}", file=sys.stderr)
    if report.bots:
        print(f"synclab: {report.summary()}", flush=True)
    return 0 if report.ok else 1
