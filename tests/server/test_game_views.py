"""A game's view file (``DecisionGroup.view``) is looked for before anybody is sent to a page
that cannot show it: creating an experiment with a game whose view is missing is a 400 naming
the game and the path; ``GET /api/games`` and the server's start say so of a registered one."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import ClassVar

import httpx
import pytest

from examples.stag_hunt import StagHunt
from tests.server.harness import Harness, running_server

HERE = Path(__file__).resolve().parent
MISSING_NAME = "tests.server.test_game_views:MissingView"
ENTRY_POINT = "missing_view_game"


class MissingView(StagHunt):
    """The stag hunt with a view file that does not exist."""

    name = "missing_view"
    view: ClassVar[str | None] = "no_such_view.js"


async def experiment_count(server: Harness) -> int:
    response = await server.http.get("/api/experiments")
    assert response.status_code == 200, response.text
    count: int = response.json()["count"]
    return count


async def test_a_game_whose_view_file_is_missing_is_a_400_naming_the_game_and_the_path(server: Harness) -> None:
    """Nothing is created: the 400's ``field`` is ``game`` and its message names the game and the file looked for."""
    response = await server.http.post(
        "/api/experiments", json={"game": MISSING_NAME, "participants": 2, "group_size": 2}
    )
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["field"] == "game"
    assert MISSING_NAME in body["error"]
    assert str(HERE / "no_such_view.js") in body["error"]
    assert "missing" in body["error"]
    assert await experiment_count(server) == 0


async def test_a_game_whose_view_file_is_there_is_created_and_its_view_served(server: Harness) -> None:
    """The example stag hunt (its view beside its file) is still created, and its page gets that view."""
    exp = await server.create(game="examples.stag_hunt:StagHunt")
    response = await server.http.get(f"/p/{exp['participants'][0]['code']}/view.js")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/javascript")
    assert response.text == (HERE.parent.parent / "examples" / "stag_hunt.js").read_text()


@pytest.fixture
async def registered(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> AsyncIterator[Harness]:
    """A server started while an installed package's entry point names :class:`MissingView`."""
    site = tmp_path / "site"
    dist = site / "missing_view_game-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: missing-view-game\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[synclab.games]\n{ENTRY_POINT} = {MISSING_NAME}\n")
    monkeypatch.syspath_prepend(str(site))
    caplog.set_level(logging.WARNING, logger="synclab")
    async with running_server(sqlite_url) as harness:
        yield harness


async def test_games_and_the_start_say_which_registered_game_has_no_view(
    registered: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """``GET /api/games`` gives the registered game's ``view_missing`` (null for the others), the
    start logs it, and creating an experiment with it by name is the 400 too."""
    response = await registered.http.get("/api/games")
    assert response.status_code == 200, response.text
    games = {game["name"]: game for game in response.json()["results"]}
    assert str(HERE / "no_such_view.js") in games[ENTRY_POINT]["view_missing"]
    assert games["bimatrix"]["view_missing"] is None
    assert games["public_goods"]["view_missing"] is None
    logged = [r.getMessage() for r in caplog.get_records("setup") if "cannot be played" in r.getMessage()]
    assert len(logged) == 1 and ENTRY_POINT in logged[0] and "no_such_view.js" in logged[0], logged
    created = await registered.http.post(
        "/api/experiments", json={"game": ENTRY_POINT, "participants": 2, "group_size": 2}
    )
    assert created.status_code == 400, created.text
    assert created.json()["field"] == "game" and ENTRY_POINT in created.json()["error"]


async def test_a_view_removed_after_creation_is_a_404_naming_the_file(
    server: Harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What creation cannot see (the file deleted later) the page's ``view.js`` still says plainly."""
    package = tmp_path / "gone_view"
    package.mkdir()
    (package / "__init__.py").write_text(
        "from examples.stag_hunt import StagHunt\n\n\nclass Gone(StagHunt):\n    name = 'gone'\n    view = 'gone.js'\n"
    )
    (package / "gone.js").write_text("export function createView() { return {}; }\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    exp = await server.create(game="gone_view:Gone")
    (package / "gone.js").unlink()
    async with httpx.AsyncClient(base_url=server.base) as anonymous:
        response = await anonymous.get(f"/p/{exp['participants'][0]['code']}/view.js")
    assert response.status_code == 404
    assert "gone.js" in response.text


RICH_STAG = (
    "from examples.stag_hunt import StagHunt\n\n\n"
    "class RichStag(StagHunt):\n    name = 'rich_stag'\n    default_config = {'stag': 5, 'hare': 1}\n"
)


@pytest.fixture
async def inherited(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> AsyncIterator[Harness]:
    """A server started while an installed package's entry point names ``rich_stag:RichStag``, a
    subclass of the example stag hunt in a folder of its own that inherits its ``view``."""
    package = tmp_path / "rich_stag"
    package.mkdir()
    (package / "__init__.py").write_text(RICH_STAG)
    site = tmp_path / "site"
    dist = site / "rich_stag-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: rich-stag\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[synclab.games]\nrich_stag = rich_stag:RichStag\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(site))
    caplog.set_level(logging.WARNING, logger="synclab")
    async with running_server(sqlite_url) as harness:
        yield harness


async def test_a_subclass_in_another_folder_that_inherits_view_is_shown_its_parents_view(
    inherited: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """The view is looked for beside the class that declares it, not the subclass: the subclass
    (other defaults, no view of its own) is created by import path and by name, its page gets
    the stag hunt's view, ``GET /api/games`` says nothing is missing and the start logs nothing."""
    response = await inherited.http.get("/api/games")
    assert response.status_code == 200, response.text
    games = {game["name"]: game for game in response.json()["results"]}
    assert games["rich_stag"]["view_missing"] is None, games["rich_stag"]
    logged = [r.getMessage() for r in caplog.get_records("setup") if "cannot be played" in r.getMessage()]
    assert logged == []
    view = (HERE.parent.parent / "examples" / "stag_hunt.js").read_text()
    for game in ("rich_stag:RichStag", "rich_stag"):
        exp = await inherited.create(game=game)
        assert exp["config"] == {"stag": 5, "hare": 1}
        async with httpx.AsyncClient(base_url=inherited.base) as anonymous:
            page = await anonymous.get(f"/p/{exp['participants'][0]['code']}/view.js")
        assert page.status_code == 200, page.text
        assert page.text == view
