"""The target's REST API as the load generator calls it: create the benchmark's experiment, read
back its stored decisions, read ``GET /api/server``, end the experiment.

Through urllib on a thread: the benchmark needs no HTTP client package.
"""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from typing import Any

import orjson

from .record import Load

#: the endowment of the benchmark's public goods game: every decision number is a valid contribution
ENDOWMENT = 1e9
HTTP_TIMEOUT = 60.0


class Api:
    """The REST API through urllib on a thread (the benchmark needs no HTTP client package)."""

    def __init__(self, base: str, token: str) -> None:
        self.base = base
        self.token = token

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        return await asyncio.to_thread(self._call, method, path, body)

    def _call(self, method: str, path: str, body: Any) -> Any:
        data = None if body is None else orjson.dumps(body)
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:
                return orjson.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"{method} {path}: HTTP {exc.code}: {exc.read()[:500]!r}") from None

    async def create(self, load: Load, period_length: float) -> dict[str, Any]:
        body: dict[str, Any] = {
            "game": "public_goods",
            "participants": load.participants,
            "group_size": load.group_size,
            "period_length": period_length,
            "block_pause": 0,
            "config": {"endowment": ENDOWMENT},
        }
        if load.subperiod is not None:
            body["num_subperiods"] = max(1, round(period_length / load.subperiod))
        created: dict[str, Any] = await self.call("POST", "/api/experiments", body)
        return created

    async def decisions(self, code: str) -> set[tuple[str, int]]:
        """Every stored ``decisions`` event of experiment ``code`` as (participant, value), read page by page."""
        stored: set[tuple[str, int]] = set()
        after = 0
        while True:
            page = await self.call("GET", f"/api/experiments/{code}/events?after_seq={after}&page_size=1000")
            for row in page["results"]:
                after = max(after, int(row["seq"]))
                if row["channel"] == "decisions" and row["participant"] is not None:
                    stored.add((row["participant"], int(row["value"])))
            if page["next"] is None or not page["results"]:
                return stored
