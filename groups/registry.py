"""Finding a game by name: bundled, an installed entry point, or an import path.

``load_game("bimatrix")`` finds a bundled game; ``load_game("mylab.games:Auction")`` imports
a user's class; a package that declares an entry point in the ``synclab.games`` group makes
its game known by name without editing synclab::

    [project.entry-points."synclab.games"]
    auction = "mylab.games:Auction"
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from .bimatrix import Bimatrix
from .exceptions import UnknownGame
from .group import DecisionGroup
from .public_goods import PublicGoods

ENTRY_POINT_GROUP = "synclab.games"

BUNDLED: dict[str, type[DecisionGroup]] = {game.name: game for game in (Bimatrix, PublicGoods)}


def available_games() -> dict[str, type[DecisionGroup]]:
    """Every game known by name: the bundled ones and the installed entry points."""
    games = dict(BUNDLED)
    for point in entry_points(group=ENTRY_POINT_GROUP):
        if point.name in games:
            continue
        try:
            games[point.name] = _checked(point.load(), point.value)
        except Exception:
            continue  # a broken plug-in must not hide the others; load_game reports it
    return games


def load_game(name: str) -> type[DecisionGroup]:
    """The game class for ``name`` (a registered name or ``"module:Class"``)."""
    if name in BUNDLED:
        return BUNDLED[name]
    for point in entry_points(group=ENTRY_POINT_GROUP, name=name):
        try:
            return _checked(point.load(), point.value)
        except UnknownGame:
            raise
        except Exception as exc:
            raise UnknownGame(f"game {name!r}: entry point {point.value!r} failed: {exc}") from exc
    if ":" in name:
        module_name, _, attribute = name.partition(":")
        try:
            target = getattr(importlib.import_module(module_name), attribute)
        except Exception as exc:
            raise UnknownGame(f"game {name!r}: cannot import it: {exc}{_where_to_put(exc, module_name)}") from exc
        return _checked(target, name)
    known = sorted(available_games())
    raise UnknownGame(f"expected a game in {known} or an import path 'module:Class', got {name!r}")


def game_name(game: type[DecisionGroup]) -> str:
    """The name a game is stored under: its registered name or its import path."""
    if game.name and available_games().get(game.name) is game:
        return game.name
    return f"{game.__module__}:{game.__qualname__}"


def _where_to_put(exc: Exception, module_name: str) -> str:
    """Where a game's module that was not found is looked for, when that is what failed (not a
    module the game imports in turn, whose own install is the remedy)."""
    missing = getattr(exc, "name", None) if isinstance(exc, ModuleNotFoundError) else None
    if not missing or not (module_name == missing or module_name.startswith(f"{missing}.")):
        return ""
    return " (a game's module is imported from the directory synclab runs in, PYTHONPATH or an installed package)"


def _checked(target: object, where: str) -> type[DecisionGroup]:
    if not (isinstance(target, type) and issubclass(target, DecisionGroup)):
        raise UnknownGame(f"{where} is not a DecisionGroup subclass: {target!r}")
    return target
