"""Where the participant page's view of a game is, and whether it is there.

A game names its view (``DecisionGroup.view``) relative to the file of the class that declares
``view``: a subclass that inherits it (``class RichStag(StagHunt)`` with other defaults, in a
folder of its own) is shown its parent's view, beside the parent's file. The page loads it from
``/p/{code}/view.js``. The core cannot look at files, so the server does: a
game whose view is missing cannot be shown to anybody, and is refused when an experiment is
created with it (``POST /api/experiments``, 400 naming the game and the path), marked in
``GET /api/games`` (``view_missing``), and logged at the server's start.
"""

from __future__ import annotations

import inspect
from pathlib import Path

from groups import DecisionGroup
from groups.registry import BUNDLED

STATIC = Path(__file__).resolve().parent / "static"
#: the view of a game that names none and is not bundled: a typed value and the group's decisions
GENERIC = STATIC / "games" / "generic.js"


def _declaring(game: type[DecisionGroup]) -> type:
    """The class whose own body sets ``view``: ``game`` itself, or the class it inherits it from."""
    return next((cls for cls in game.__mro__ if "view" in vars(cls)), game)


def _beside(game: type[DecisionGroup]) -> Path | None:
    """The directory of the file of the class that declares ``game``'s view (``None``: it has
    none, a class made at run time)."""
    try:
        return Path(inspect.getfile(_declaring(game))).resolve().parent
    except (TypeError, OSError):
        return None


def view_file(game: type[DecisionGroup]) -> Path:
    """The participant page's view of ``game``: the game's own ``view``, a bundled one, or the generic one."""
    if game.view:
        return (_beside(game) or Path.cwd()) / game.view
    bundled = STATIC / "games" / f"{game.name}.js"
    if game.name in BUNDLED and bundled.is_file():
        return bundled
    return GENERIC


def missing_view(game: type[DecisionGroup], name: str) -> str | None:
    """Why the view of ``game`` (called ``name``) cannot be served, or ``None`` when it can."""
    if not game.view:
        return None
    if _beside(game) is None:
        return (f"the view of game {name!r}, {game.view!r}, cannot be found: it is named relative to "
                f"the file of the class that declares it, and {_declaring(game).__module__!r} has none")
    path = view_file(game)
    if path.is_file():
        return None
    return (f"the view of game {name!r} is missing: {path} (view = {game.view!r}, named relative "
            f"to the file of {_declaring(game).__qualname__}, which declares it)")
