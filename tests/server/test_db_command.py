"""``synclab db``: what each action accepts, and a database that is where it is asked to go already."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.storage import head
from tests.server.test_downgrade import db, snapshot
from tests.server.test_migrations import release_database


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_database_0_1_0_made_and_never_upgraded_is_at_0_1_0_already(
    tmp_path: Path, kind: str, request: pytest.FixtureRequest,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``db downgrade 0.1.0`` (or its revision) of the release's own database says it is there
    already and exits 0, changing nothing (no version table is added); a revision after the
    release's is refused (exit 2) with the command that goes forward."""
    monkeypatch.chdir(tmp_path)
    url = release_database(tmp_path, "sqlite://" if kind == "sqlite" else str(request.getfixturevalue("postgres_url")))
    before = snapshot(url)
    assert before[0] is None and "alembic_version" not in before[1]
    for target in ("0.1.0", "0001_baseline"):
        status, out, err = db(capsys, monkeypatch, url, "downgrade", target)
        assert status == 0, err
        assert "already at synclab 0.1.0's schema (0001_baseline): it was never upgraded; nothing changed" in out
        assert snapshot(url) == before
    status, _, err = db(capsys, monkeypatch, url, "downgrade", "0004_online")
    assert status == 2 and "made by synclab 0.1.0 and never upgraded" in err
    assert "before 0004_online" in err and "synclab db upgrade" in err
    assert snapshot(url) == before


def test_yes_is_refused_by_every_action_but_downgrade(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--yes`` means "lose the values the older schema cannot hold": the actions that lose nothing
    refuse it (exit 2, one line, nothing done) rather than ignore it; downgrade still takes it."""
    monkeypatch.chdir(tmp_path)
    url = release_database(tmp_path, "sqlite://")
    before = snapshot(url)
    for action in ("upgrade", "current", "history", "check"):
        status, out, err = db(capsys, monkeypatch, url, action, "--yes")
        assert status == 2, (action, out, err)
        assert out == "" and err == f"synclab: synclab db {action} takes no --yes: it loses nothing " \
            "(only `synclab db downgrade` asks for it)\n"
    assert snapshot(url) == before  # the upgrade refused did not run
    assert db(capsys, monkeypatch, url, "upgrade")[0] == 0
    status, out, err = db(capsys, monkeypatch, url, "downgrade", "0.1.0", "--yes")
    assert status == 0, err
    assert snapshot(url)[0] == "0001_baseline" and snapshot(url)[0] != head()
