"""A stored experiment stays playable whatever its game's ``config_schema`` says today.

A game's schema is checked when a config comes in (``POST /api/experiments``), not when a
stored group is built again: an experiment created before the schema was enforced (or before
the game's schema said more) with a config the schema refuses could no longer be joined, every
participant's handshake a 500 (``ConfigError: config.step: ...``) after a restart.
"""

from __future__ import annotations

from typing import Any, ClassVar

from groups import DecisionGroup
from server.experiments import parse_request, plan
from server.storage import create_schema, make_engine
from server.storage.catalog import insert_experiment
from tests.server.harness import running_server

GAME = "tests.server.test_stored_config:Stepped"


class Stepped(DecisionGroup):
    """A game whose config is checked by its schema alone: ``step`` an integer in [1, 5]."""

    config_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {"step": {"type": "integer", "minimum": 1, "maximum": 5}},
    }
    default_config: ClassVar[dict[str, Any]] = {"step": 1}


def store_as_an_older_release_did(database_url: str, config: dict[str, Any]) -> dict[str, Any]:
    """An experiment of :class:`Stepped` with ``config``, inserted through the storage layer
    directly (no check of the schema, as a release before it was enforced stored it)."""
    spec = plan(parse_request({"game": GAME, "participants": 2, "group_size": 2}))
    spec.config = config
    engine = make_engine(database_url)
    try:
        create_schema(engine)
        insert_experiment(engine, spec)
    finally:
        engine.dispose()
    return {"code": spec.code, "participants": spec.participant_codes}


async def test_a_stored_config_its_schema_refuses_is_still_played(database_url: str) -> None:
    """A participant of an experiment stored with ``step`` 9 connects to a server started on that
    database and gets ``hello``; its group starts with both members; creating the same config
    over the API is still a 400 naming ``config.step``."""
    stored = store_as_an_older_release_did(database_url, {"step": 9})
    async with running_server(database_url) as server:
        first = await server.connect(stored["participants"][0])
        hello = await first.next()
        assert hello["channel"] == "hello", hello
        assert hello["payload"]["participant"] == stored["participants"][0]
        second = await server.connect(stored["participants"][1])
        assert (await second.next())["channel"] == "hello"
        detail = await server.http.get(f"/api/experiments/{stored['code']}")
        assert detail.status_code == 200, detail.text
        assert detail.json()["config"] == {"step": 9}
        refused = await server.http.post(
            "/api/experiments", json={"game": GAME, "participants": 2, "group_size": 2, "config": {"step": 9}}
        )
        assert refused.status_code == 400, refused.text
        assert refused.json()["field"] == "config.step"
        assert "an integer in [1, 5]" in refused.json()["error"]
