"""A real oTree 6 for the oTree tests: ``otree prodserver`` on a free loopback port, the project of
``tests/otree_project`` in a temp dir with its own SQLite database, and oTree's own REST API.

oTree pins old Starlette and SQLAlchemy, so it lives in a virtual environment of its own:
``.venv-otree`` at the repository's root (``.ci/run`` makes it: ``python3 -m venv .venv-otree &&
.venv-otree/bin/pip install otree==6.0.0``), or the ``otree`` command ``SYNCLAB_OTREE_BIN`` names.
Without it the tests skip loudly, except with ``CI=true``, where they fail. The REST API runs
with ``OTREE_AUTH_LEVEL=STUDY``, so every call must carry the right ``otree-rest-key``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.server.harness import timeout

ROOT = Path(__file__).resolve().parent.parent
PROJECT = Path(__file__).resolve().parent / "otree_project"
OTREE_BIN = Path(os.environ.get("SYNCLAB_OTREE_BIN") or ROOT / ".venv-otree" / "bin" / "otree")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REST_KEY = "otree-rest-key-of-the-tests-7c1f"
CONFIG = "synclab_round_trip"


def otree_or_skip() -> Path:
    """The ``otree`` command of oTree 6's own virtual environment, or a loud skip (a failure in CI)."""
    if not os.access(OTREE_BIN, os.X_OK):
        message = (
            f"no oTree at {OTREE_BIN}: python3 -m venv .venv-otree && .venv-otree/bin/pip install otree==6.0.0 "
            "(or set SYNCLAB_OTREE_BIN)"
        )
        if IN_CI:
            pytest.fail(f"{message} (CI=true: the oTree tests must run; .ci/run makes .venv-otree)")
        pytest.skip(f"SKIPPING OTREE TESTS — {message}")
    return OTREE_BIN


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class OTree:
    """One oTree server of a test, which the test may stop and start again (same port, same database)."""

    def __init__(self, directory: Path, port: int) -> None:
        self.directory = directory
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.log = directory / "otree.log"
        self.http = httpx.Client(base_url=self.base, headers={"otree-rest-key": REST_KEY}, timeout=timeout(10))

    def start(self) -> None:
        binary = otree_or_skip()
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DATABASE_URL", "VIRTUAL_ENV")}
        env.update(
            # prodserver starts ``otree timeoutsubprocess`` by name: its own bin first on the PATH
            PATH=f"{binary.parent}{os.pathsep}{env.get('PATH', '')}",
            OTREE_REST_KEY=REST_KEY,
            OTREE_AUTH_LEVEL="STUDY",
            OTREE_ADMIN_PASSWORD="otree-admin-of-the-tests",
            OTREE_PRODUCTION="1",
        )
        with self.log.open("ab") as out:
            # a session of its own: stop() ends the server and the child it starts, and only them
            self.process = subprocess.Popen(
                [str(binary), "prodserver", f"127.0.0.1:{self.port}"],
                cwd=self.directory, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + timeout(60)
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"oTree exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if self.http.get("/api/otree_version").status_code == 200:
                    return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"oTree did not answer on port {self.port}:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout(10))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout(10))

    def create_session(self, participants: int, **config: Any) -> str:
        """A session of the project's one config through oTree's REST API; returns its code."""
        response = self.http.post("/api/sessions", json={
            "session_config_name": CONFIG, "num_participants": participants,
            "modified_session_config_fields": config,
        })
        assert response.status_code == 200, response.text
        return str(response.json()["code"])

    def participants(self, session: str, *fields: str) -> list[dict[str, Any]]:
        """The session's participants (``code``, ``label``...) with the ``participant.vars`` ``fields`` they have."""
        response = self.http.post(f"/api/get_session/{session}", json={"participant_vars": list(fields)})
        assert response.status_code == 200, response.text
        people: list[dict[str, Any]] = response.json()["participants"]
        return people

    def close(self) -> None:
        self.stop()
        self.http.close()


@contextlib.contextmanager
def running_otree(tmp_path: Path, *, start: bool = True) -> Iterator[OTree]:
    """oTree on a free port with the tests' project copied to ``tmp_path/otree`` (its database there)."""
    otree_or_skip()
    directory = tmp_path / "otree"
    shutil.copytree(PROJECT, directory, ignore=shutil.ignore_patterns("__pycache__", "db.sqlite3"))
    server = OTree(directory, free_port())
    try:
        if start:
            server.start()
        yield server
    finally:
        server.close()
