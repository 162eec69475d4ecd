"""Finding games: bundled names, import paths and ``synclab.games`` entry points."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from groups import (
    Bimatrix,
    DecisionGroup,
    PublicGoods,
    UnknownGame,
    available_games,
    game_name,
    load_game,
    registry,
)

HERE = __name__  # "tests.groups.test_registry"


class SomeGame(DecisionGroup):
    """A user's game without a registered name, loaded by import path."""


class NamedGame(DecisionGroup):
    """A user's game that sets a name but is registered nowhere."""

    name = "named_game"


class Impostor(DecisionGroup):
    """A user's game that happens to reuse a bundled game's name."""

    name = "bimatrix"


class PluginGame(DecisionGroup):
    """A game published through an entry point."""

    name = "auction"


NOT_A_GAME = 42


@dataclass
class FakeEntryPoint:
    """Just what the registry uses of importlib.metadata.EntryPoint."""

    name: str
    value: str
    loader: Callable[[], object]

    def load(self) -> object:
        return self.loader()


def install_entry_points(monkeypatch: pytest.MonkeyPatch, *points: FakeEntryPoint) -> None:
    """Make ``points`` the registry's ``synclab.games`` entry points."""

    def fake_entry_points(*, group: str, name: str | None = None) -> list[FakeEntryPoint]:
        assert group == registry.ENTRY_POINT_GROUP
        return [p for p in points if name is None or p.name == name]

    monkeypatch.setattr(registry, "entry_points", fake_entry_points)


def broken(exc: BaseException) -> Callable[[], object]:
    """A loader that fails with ``exc``."""

    def load() -> object:
        raise exc

    return load


# ---------------------------------------------------------------------- load_game


@pytest.mark.parametrize(("name", "game"), [("bimatrix", Bimatrix), ("public_goods", PublicGoods)])
def test_load_game_finds_the_bundled_games_by_name(name: str, game: type[DecisionGroup]) -> None:
    """The contract's two games load by their names."""
    assert load_game(name) is game


def test_load_game_imports_a_module_colon_class_path() -> None:
    """A DecisionGroup subclass loads by its import path."""
    assert load_game(f"{HERE}:SomeGame") is SomeGame
    assert load_game("groups.bimatrix:Bimatrix") is Bimatrix


def test_load_game_of_an_unknown_name_lists_the_known_games() -> None:
    """An unknown name raises UnknownGame naming it and the games that exist."""
    with pytest.raises(UnknownGame) as info:
        load_game("chess")
    message = str(info.value)
    assert "'chess'" in message
    assert "['bimatrix', 'public_goods']" in message
    assert "module:Class" in message


@pytest.mark.parametrize(
    "path",
    [
        f"{HERE}:NOT_A_GAME",
        f"{HERE}:FakeEntryPoint",
        "groups.state:Timing",
        "groups.bimatrix:PRISONERS_DILEMMA",
    ],
)
def test_load_game_of_a_path_to_something_else_is_unknown_game(path: str) -> None:
    """A path to a non-DecisionGroup object raises UnknownGame saying so."""
    with pytest.raises(UnknownGame, match="is not a DecisionGroup subclass"):
        load_game(path)


@pytest.mark.parametrize(
    "path",
    [
        "no_such_module_for_synclab:Game",
        f"{HERE}:NoSuchGame",
        f"{HERE}:",
        ":SomeGame",
        "groups..bimatrix:Bimatrix",
    ],
)
def test_load_game_of_a_path_that_does_not_import_is_unknown_game(path: str) -> None:
    """Missing modules, missing attributes and malformed paths raise UnknownGame, nothing else."""
    with pytest.raises(UnknownGame, match="cannot import it"):
        load_game(path)


def test_load_game_finds_an_entry_point_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """A plug-in's entry point makes its game known by name."""
    install_entry_points(
        monkeypatch, FakeEntryPoint("auction", f"{HERE}:PluginGame", lambda: PluginGame)
    )
    assert load_game("auction") is PluginGame
    assert available_games()["auction"] is PluginGame


def test_load_game_reports_a_broken_entry_point(monkeypatch: pytest.MonkeyPatch) -> None:
    """An entry point that fails to import raises UnknownGame naming it."""
    install_entry_points(
        monkeypatch,
        FakeEntryPoint("auction", "gone:Auction", broken(ImportError("no module gone"))),
    )
    with pytest.raises(UnknownGame, match="entry point 'gone:Auction' failed"):
        load_game("auction")


def test_load_game_refuses_an_entry_point_to_a_non_game(monkeypatch: pytest.MonkeyPatch) -> None:
    """An entry point to something else is UnknownGame too."""
    install_entry_points(
        monkeypatch, FakeEntryPoint("auction", f"{HERE}:NOT_A_GAME", lambda: NOT_A_GAME)
    )
    with pytest.raises(UnknownGame, match="not a DecisionGroup subclass"):
        load_game("auction")


# ---------------------------------------------------------------------- available_games


def test_available_games_contains_the_bundled_games() -> None:
    """bimatrix and public_goods map to their classes."""
    games = available_games()
    assert games["bimatrix"] is Bimatrix
    assert games["public_goods"] is PublicGoods


def test_available_games_is_a_copy() -> None:
    """Changing the returned dict does not register anything."""
    available_games()["chess"] = SomeGame
    assert "chess" not in available_games()
    with pytest.raises(UnknownGame):
        load_game("chess")


def test_available_games_skips_broken_plugins_and_keeps_the_bundled_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A failing plug-in is left out; a plug-in reusing a bundled name does not replace it."""
    install_entry_points(
        monkeypatch,
        FakeEntryPoint("broken", "gone:Game", broken(ImportError("no module gone"))),
        FakeEntryPoint("typo", f"{HERE}:Nope", broken(AttributeError("Nope"))),
        FakeEntryPoint("number", f"{HERE}:NOT_A_GAME", lambda: NOT_A_GAME),
        FakeEntryPoint("bimatrix", f"{HERE}:Impostor", lambda: Impostor),
        FakeEntryPoint("auction", f"{HERE}:PluginGame", lambda: PluginGame),
    )
    assert available_games() == {
        "bimatrix": Bimatrix,
        "public_goods": PublicGoods,
        "auction": PluginGame,
    }
    assert load_game("bimatrix") is Bimatrix


def test_a_plugin_that_crashes_on_import_does_not_hide_the_other_games(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A NameError (any exception) while importing a plug-in must not break available_games."""
    install_entry_points(
        monkeypatch,
        FakeEntryPoint("buggy", "buggy:Game", broken(NameError("name 'x' is not defined"))),
    )
    assert set(available_games()) == {"bimatrix", "public_goods"}
    with pytest.raises(UnknownGame):
        load_game("chess")


# ---------------------------------------------------------------------- game_name


def test_game_name_of_a_bundled_game_is_its_name() -> None:
    """Bundled games are stored under their registered names."""
    assert game_name(Bimatrix) == "bimatrix"
    assert game_name(PublicGoods) == "public_goods"


def test_game_name_of_an_unnamed_game_is_its_import_path_and_loads_back() -> None:
    """An unnamed user game is stored as module:Class, which load_game accepts."""
    assert game_name(SomeGame) == f"{HERE}:SomeGame"
    assert load_game(game_name(SomeGame)) is SomeGame


@pytest.mark.parametrize("game", [Bimatrix, PublicGoods, SomeGame])
def test_game_name_round_trips_through_load_game(game: type[DecisionGroup]) -> None:
    """load_game(game_name(G)) is G for bundled and import-path games."""
    assert load_game(game_name(game)) is game


@pytest.mark.parametrize("game", [NamedGame, Impostor], ids=["unregistered_name", "bundled_name"])
def test_game_name_of_a_named_unregistered_game_loads_back_the_same_game(
    game: type[DecisionGroup],
) -> None:
    """A game named but not registered must be stored under a name that loads it back."""
    try:
        loaded = load_game(game_name(game))
    except UnknownGame as exc:
        raise AssertionError(
            f"game_name({game.__name__}) = {game_name(game)!r} does not load"
        ) from exc
    assert loaded is game, (
        f"game_name({game.__name__}) = {game_name(game)!r} loads {loaded.__name__}"
    )
