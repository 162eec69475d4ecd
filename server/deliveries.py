"""The way back to oTree: each participant's score posted to oTree's REST API, retried until it lands.

When a participant's run ends (:meth:`Deliveries.run_ended`: their last block's period ended, or
the lobby released them) in an experiment whose ``online`` settings name an ``otree_url``, a
delivery is stored; this process's loop posts it as
``POST {otree_url}/api/participant_vars/{label}`` with the header ``otree-rest-key`` and the body
``{"vars": {"synclab_score", "synclab_status", "synclab_completion_code", "synclab_experiment"}}``,
where ``label`` is the oTree participant code the participant arrived with. oTree 6 answers 200
(``participant.vars.update(vars)``), 404 for an unknown participant, 403 for a missing or wrong
key. Anything but 2xx, or no answer, is an attempt that failed: its error is stored and the next
one comes after an exponential backoff (``delivery_retry`` doubled per attempt, at most
``delivery_retry_max``), for as long as it takes. Every worker of a cluster runs the loop; a
delivery is claimed in the database before each attempt, so one worker at a time posts it.

None of this is on the participant's way: they are sent back to oTree at once
(:func:`otree_way_back`), and oTree's next page reads ``participant.vars`` when the score has
landed. The REST key is read from the experiment's settings for each attempt; it is never logged,
stored with a delivery, or returned by the API.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from urllib.parse import quote

import httpx

from .exceptions import NotPersisted
from .online import OnlineSettings
from .settings import Settings
from .storage import (
    Claimed,
    Database,
    add_otree_deliveries,
    claim_delivery,
    delivery_done,
    delivery_failed,
    due_deliveries,
    finished_without_delivery,
    next_delivery_at,
    to_epoch,
)
from .tasks import ended

log = logging.getLogger("synclab.deliveries")
#: oTree's header for its REST key (``otree/views/cbv.py``: ``REST_KEY_HEADER``)
REST_KEY_HEADER = "otree-rest-key"
#: deliveries claimed per look at the table
BATCH = 20
#: attempts under way at once in this process
CONCURRENCY = 8


def otree_way_back(settings: OnlineSettings | None, label: str | None) -> str | None:
    """Where the participant goes at the end when they came from oTree: ``{otree_url}/InitializeParticipant/{label}``.

    Only when the experiment has an ``otree_url`` and no ``completion_url`` (which wins), and the
    participant arrived with a label (their oTree participant code). oTree answers that address
    with a redirect to the page the participant is on (``otree/views/participant.py``).
    """
    if settings is None or settings.otree_url is None or settings.completion_url is not None or not label:
        return None
    return f"{settings.otree_url}/InitializeParticipant/{quote(label, safe='')}"


def backoff(settings: Settings, attempt: int) -> float:
    """Seconds before the attempt after ``attempt`` (1, 2, ...): doubling from ``delivery_retry``, capped."""
    return float(min(settings.delivery_retry_max, settings.delivery_retry * 2 ** min(attempt - 1, 30)))


class Deliveries:
    """This process's poster of deliveries: stores them as runs end, posts what is due, retries."""

    def __init__(self, database: Database, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        self.database = database
        self.settings = settings
        self.clock = clock
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._attempts: set[asyncio.Task[None]] = set()
        self._stores: set[asyncio.Task[None]] = set()
        #: deliveries being attempted here now (not claimed again by this process meanwhile)
        self._busy: set[int] = set()
        self._limit = asyncio.Semaphore(CONCURRENCY)
        self._http: httpx.AsyncClient | None = None
        self._closed = False

    def start(self) -> None:
        self._http = httpx.AsyncClient(timeout=self.settings.delivery_timeout, follow_redirects=False)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="synclab-deliveries")

    async def close(self) -> None:
        """Stop posting: the loop and the attempts under way are cancelled (a claimed delivery is
        taken again by any worker once its lease has passed). Runs that end from now on are
        left to the next start's sweep."""
        self._closed = True
        await ended([self._task, *self._attempts, *self._stores])
        if self._http is not None:
            await self._http.aclose()

    # ------------------------------------------------------------------ storing

    def run_ended(self, experiment_id: int, participant_ids: list[int]) -> None:
        """These participants' runs ended: store their deliveries (if the experiment has an
        ``otree_url``) and post them soon. Never waits; safe to call again for the same people."""
        if self._closed:
            return
        task = asyncio.get_running_loop().create_task(self._store(experiment_id, list(participant_ids)))
        self._stores.add(task)
        task.add_done_callback(self._stores.discard)

    async def _store(self, experiment_id: int, participant_ids: list[int]) -> None:
        try:
            added = await self.database.write(add_otree_deliveries, experiment_id, participant_ids, self.clock())
        except NotPersisted as exc:
            log.warning("experiment %s: deliveries not stored: %s (the start-up sweep stores them)", experiment_id, exc)
            return
        except Exception:
            log.exception("experiment %s: storing deliveries failed", experiment_id)
            return
        if added:
            self._wake.set()

    # ------------------------------------------------------------------ posting

    async def _run(self) -> None:
        try:
            # runs that ended while no process could store their deliveries (a stop between the writes)
            for experiment_id, people in await self.database.read(finished_without_delivery):
                await self._store(experiment_id, people)
        except Exception:
            log.exception("the deliveries' start-up sweep failed")
        while not self._closed:
            try:
                await self._round()
                pause = await self._pause()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("looking for due deliveries failed")
                pause = self.settings.delivery_poll
            self._wake.clear()
            # not ``wait_for``: in Python 3.11 it swallows a cancel that comes in the same turn as
            # the wake-up (an attempt cancelled by close() sets it just so), and the loop went on
            # with close() waiting for it; ``timeout`` cancels this task's own wait
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pause):
                    await self._wake.wait()

    async def _round(self) -> None:
        for delivery_id in await self.database.read(due_deliveries, self.clock(), BATCH):
            if delivery_id in self._busy:
                continue
            self._busy.add(delivery_id)
            task = asyncio.get_running_loop().create_task(self._attempt(delivery_id))
            self._attempts.add(task)
            task.add_done_callback(self._attempts.discard)

    async def _pause(self) -> float:
        """Until the next due attempt, at most ``delivery_poll`` (other workers store deliveries too).

        While attempts are under way here, ``delivery_poll``: those not yet claimed are still due in
        the table, and each attempt wakes the loop when it ends.
        """
        if self._busy:
            return self.settings.delivery_poll
        due = to_epoch(await self.database.read(next_delivery_at))
        if due is None:
            return self.settings.delivery_poll
        return min(self.settings.delivery_poll, max(0.01, due - self.clock()))

    async def _attempt(self, delivery_id: int) -> None:
        try:
            async with self._limit:
                lease = self.settings.delivery_timeout + 5.0
                claimed = await self.database.write(claim_delivery, delivery_id, self.clock(), lease)
                if claimed is None:
                    return  # another worker has it, or it landed meanwhile
                error = await self._post(claimed)
                if error is None:
                    await self.database.write(delivery_done, delivery_id, self.clock())
                    log.info("delivery %s landed at %s (attempt %d)", delivery_id, claimed.url, claimed.attempt)
                    return
                retry_at = self.clock() + backoff(self.settings, claimed.attempt)
                await self.database.write(delivery_failed, delivery_id, error, retry_at)
                log.warning(
                    "delivery %s to %s failed (attempt %d): %s; next attempt in %.1f s",
                    delivery_id, claimed.url, claimed.attempt, error, retry_at - self.clock(),
                )
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("delivery %s: the attempt failed", delivery_id)
        finally:
            self._busy.discard(delivery_id)
            self._wake.set()

    async def _post(self, claimed: Claimed) -> str | None:
        """One POST; ``None`` when oTree took it (2xx), else what went wrong (never the key)."""
        assert self._http is not None
        headers = {REST_KEY_HEADER: claimed.rest_key} if claimed.rest_key else {}
        try:
            response = await self._http.post(claimed.url, json={"vars": claimed.payload}, headers=headers)
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        else:
            if 200 <= response.status_code < 300:
                return None
            error = f"HTTP {response.status_code}: {' '.join(response.text.split())[:200]}"
        # whatever the other side answered, the key it was given is not repeated
        return error.replace(claimed.rest_key, "***") if claimed.rest_key else error
