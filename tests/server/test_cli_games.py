"""A game named by import path, found by the ``synclab`` console script in the directory it runs in."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from server.experiments import parse_request, plan
from server.storage import insert_experiment, make_engine, prepare_schema
from tests.server.harness import timeout
from tests.server.test_cli import environment

#: what pip writes as the ``synclab`` console script: its own directory, not the current one,
#: starts ``sys.path`` (``python -c``, which tests/server/test_cli.py runs, starts it with '')
CONSOLE_SCRIPT = "import sys\nfrom server.cli import main\nsys.exit(main())\n"

GAME = '''
from groups import DecisionGroup


class Coordination(DecisionGroup):
    """A researcher's game in a file of their own, beside nothing of synclab's."""

    def payoff(self, participant, decisions):
        return 1.0
'''


def console_script(tmp_path: Path) -> Path:
    """The ``synclab`` console script as pip installs it, in a ``bin`` of its own."""
    script = tmp_path / "bin" / "synclab"
    script.parent.mkdir()
    script.write_text(CONSOLE_SCRIPT)
    return script


def stored_experiment(lab: Path, database: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """An experiment of ``lab/coordination.py``'s game, stored in ``database``; its code."""
    monkeypatch.syspath_prepend(str(lab))  # this process imports it to plan the experiment
    spec = plan(parse_request({"game": "coordination:Coordination", "participants": 2, "group_size": 2}))
    engine = make_engine(database)
    try:
        prepare_schema(engine)
        insert_experiment(engine, spec)
    finally:
        engine.dispose()
    return spec.code


def test_synclab_run_in_a_games_directory_imports_the_game_by_its_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The guide: run synclab from the directory that can import your game. The console script
    did not look there (``No module named 'coordination'``, exit 2); ``python -m`` and
    ``uvicorn server.app:app`` did."""
    lab = tmp_path / "lab"
    lab.mkdir()
    (lab / "coordination.py").write_text(textwrap.dedent(GAME))
    # a file of the directory never hides an installed module: it is looked in last
    (lab / "orjson.py").write_text("raise ImportError('the directory shadowed an installed module')\n")
    env = environment(tmp_path)
    code = stored_experiment(lab, env["DATABASE_URL"], monkeypatch)

    result = subprocess.run(
        [sys.executable, str(console_script(tmp_path)), "verify", code],
        cwd=lab, env=env, capture_output=True, text=True, timeout=timeout(60), check=False,
    )

    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    assert ": OK" in result.stdout, result.stdout


def test_a_game_module_nowhere_to_import_says_where_synclab_looks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run elsewhere, the same experiment cannot load its game: the message says where synclab
    looked for it and what to do, not only Python's ``No module named``."""
    lab = tmp_path / "lab"
    lab.mkdir()
    (lab / "coordination.py").write_text(textwrap.dedent(GAME))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = environment(tmp_path)
    code = stored_experiment(lab, env["DATABASE_URL"], monkeypatch)

    result = subprocess.run(
        [sys.executable, str(console_script(tmp_path)), "verify", code],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=timeout(60), check=False,
    )

    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "No module named 'coordination'" in result.stderr, result.stderr
    assert "PYTHONPATH" in result.stderr and "the directory synclab runs in" in result.stderr, result.stderr
