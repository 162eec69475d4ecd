"""Tasks ended at a shutdown or a connection's end: cancelled, and cancelled again while they go on.

A cancel can be swallowed by the code a task is in when it comes: Python 3.11's
``asyncio.wait_for`` returns a result that arrived in the same turn as the cancel, and redis-py
(8.2) lets about one cancel in thirty that lands inside a pipeline's ``execute`` go. A loop
around such a call then goes on as if nothing had happened, and a shutdown that cancelled it once
and awaited it waited for ever: a cluster's worker that a SIGTERM never ended, its heartbeat
still beating.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger("synclab")

#: how many times a task that goes on is cancelled, and the seconds given it after each cancel
ROUNDS, WAIT = 5, 0.5


async def ended(tasks: Iterable[asyncio.Task[Any] | None], rounds: int = ROUNDS, wait: float = WAIT) -> bool:
    """Cancel ``tasks`` and wait until each has ended, cancelling again each that goes on; whether all did.

    Bounded: after ``rounds`` cancels, ``wait`` seconds apart, a task still running is left
    behind and named in the log. What the tasks raised is not raised here (they are being
    stopped, and each has been awaited as it was before: its error seen, not logged).
    """
    pending = {task for task in tasks if task is not None}
    for _ in range(rounds):
        for task in pending:
            task.cancel()
        done, pending = await asyncio.wait(pending, timeout=wait) if pending else (set(), set())
        for task in done:
            if not task.cancelled():
                task.exception()  # seen: a task stopped here is not one whose error nobody retrieved
        if not pending:
            return True
    for task in pending:
        log.error("synclab: the task %s did not end after %d cancels; left behind", task.get_name(), rounds)
    return False
