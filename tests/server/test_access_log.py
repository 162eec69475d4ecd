"""No secret in the server's log: a real ``synclab serve`` with uvicorn's access log on, a monitor
session over real HTTP and WebSocket clients (as the monitor page makes it), then the whole log read.

The experimenter tokens travel in the bearer header and in the monitor socket's first frame, never
in a URL; an old-style ``?token=`` (a bookmark, a script) is refused on the socket and masked in the
log. Participant codes stay in their paths (``/p/{code}``): they are the participant's own key, as
in oTree, and the log shows them.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path

import httpx
import orjson
from websockets.asyncio.client import connect

from server.redaction import redact
from tests.server.harness import timeout
from tests.server.test_cli import Running, environment, free_port, run, started, wait_until_healthy

ENV_TOKEN = "env-secret-token-0123456789abcdef"
MONITOR_LINE = re.compile(r"monitor at ")


def _whole_log(running: Running) -> str:
    """Everything the process wrote: stdout (uvicorn's access log) and stderr (its error log)."""
    lines = list(running.seen)
    while not running.lines.empty():
        line = running.lines.get()
        if line is not None:
            lines.append(line)
    return "\n".join(lines) + "\n" + running.stderr_path.read_text(errors="replace")


async def _monitor_session(base: str, token: str, code: str) -> list[str]:
    """The page's socket: the token in the first frame; the snapshot and a stats frame come."""
    channels: list[str] = []
    async with connect(f"{base.replace('http', 'ws', 1)}/ws/monitor/{code}", open_timeout=timeout(5)) as ws:
        await ws.send(orjson.dumps({"channel": "auth", "payload": {"token": token}}).decode())
        async with asyncio.timeout(timeout(10)):
            while "stats" not in channels:
                channels.append(orjson.loads(await ws.recv())["channel"])
    return channels


async def _old_style_socket(base: str, token: str, code: str, name: str = "token") -> str:
    """The contract's older client: the token in the socket's URL (still taken); its first frame's channel."""
    async with connect(f"{base.replace('http', 'ws', 1)}/ws/monitor/{code}?{name}={token}",
                       open_timeout=timeout(5)) as ws:
        channel: str = orjson.loads(await asyncio.wait_for(ws.recv(), timeout(5)))["channel"]
        return channel


def test_a_monitor_session_leaves_no_token_in_the_servers_log(tmp_path: Path) -> None:
    """Tokens made with ``synclab token create`` and the environment's: a session of the monitor
    page (its page, the API with the bearer header, its socket with the first frame, a pause, an
    export), a participant playing, and an old link with ``?token=``: the log has every request,
    no token, and the old link's token masked."""
    made = run(tmp_path, "token", "create", "ta-anna", "--role", "watch")
    assert made.returncode == 0, made.stderr
    watch = made.stdout.strip()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with started(tmp_path, "serve", "--port", str(port), SYNCLAB_ADMIN_TOKEN=ENV_TOKEN) as running:
        running.wait_for(MONITOR_LINE)
        wait_until_healthy(base)
        admin = {"Authorization": f"Bearer {ENV_TOKEN}"}
        with httpx.Client(base_url=base, timeout=timeout(5)) as http:
            assert http.get("/monitor").status_code == 200
            created = http.post("/api/experiments", headers=admin,
                                json={"game": "bimatrix", "participants": 2, "group_size": 2, "period_length": 30})
            assert created.status_code == 201, created.text
            code = created.json()["code"]
            people = [p["code"] for p in created.json()["participants"]]
            assert http.get(f"/p/{people[0]}").status_code == 200
            for token in (ENV_TOKEN, watch):
                channels = asyncio.run(_monitor_session(base, token, code))
                assert channels[0] == "snapshot", channels
                assert http.get(f"/api/experiments/{code}", headers={"Authorization": f"Bearer {token}"}).is_success
            assert http.post(f"/api/experiments/{code}/pause", headers=admin).status_code == 200
            assert http.get(f"/api/experiments/{code}/export.csv", params={"table": "events"},
                            headers=admin).status_code == 200
            # an old bookmark of the page, and an old page's socket
            assert http.get("/monitor", params={"token": watch, "experiment": code}).status_code == 200
            assert asyncio.run(_old_style_socket(base, watch, code)) == "snapshot"
            # the same with the name percent-encoded, which the server reads as ``token`` all the same
            assert http.get(f"/monitor?%74oken={watch}&experiment={code}").status_code == 200
            assert asyncio.run(_old_style_socket(base, watch, code, name="%74oken")) == "snapshot"
    log = _whole_log(running)
    # the log is on and has the session's requests
    assert f'"POST /api/experiments/{code}/pause HTTP/1.1" 200' in log, log[-3000:]
    assert f"/ws/monitor/{code}" in log and "[accepted]" in log, log[-3000:]
    assert f"/p/{people[0]}" in log  # a participant's code stays in its path, as in oTree
    for secret in (ENV_TOKEN, watch):
        assert secret not in log, f"a token is in the server's log:\n{log}"
    assert "token=[redacted]" in log and "%74oken=[redacted]" in log, log[-3000:]


def test_a_debug_log_of_the_monitors_first_frame_masks_its_token() -> None:
    """At ``--log-level debug`` uvicorn's WebSocket protocol writes each frame to the error log,
    the monitor's first frame with its token among them: as text, or inside a repr."""
    frame = orjson.dumps({"channel": "auth", "payload": {"token": ENV_TOKEN}}).decode()
    for line in (f"< TEXT {frame!r} [{len(frame)} bytes]", repr(frame.replace('"', '\\"')), frame):
        masked = redact(line)
        assert ENV_TOKEN not in masked and "[redacted]" in masked, masked
    online = orjson.dumps({"online": {"otree_url": "http://o", "otree_rest_key": ENV_TOKEN}}).decode()
    assert ENV_TOKEN not in redact(online)


def test_plain_uvicorn_at_debug_logs_the_monitors_first_frame_without_its_token(tmp_path: Path) -> None:
    """``uvicorn server.app:app --log-level debug`` (a documented way to serve) writes every frame
    of every socket to its error log, the monitor's first frame with its token among them: masked."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "uvicorn.log"
    with log_path.open("w") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "server.app:app", "--port", str(port), "--log-level", "debug"],
            cwd=tmp_path, env={**environment(tmp_path), "SYNCLAB_ADMIN_TOKEN": ENV_TOKEN,
                               "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
            stdout=log_file, stderr=subprocess.STDOUT,
        )
    try:
        wait_until_healthy(base)
        with httpx.Client(base_url=base, timeout=timeout(5)) as http:
            created = http.post("/api/experiments", headers={"Authorization": f"Bearer {ENV_TOKEN}"},
                                json={"game": "bimatrix", "participants": 2, "group_size": 2})
            assert created.status_code == 201, created.text
        assert asyncio.run(_monitor_session(base, ENV_TOKEN, created.json()["code"]))[0] == "snapshot"
    finally:
        process.terminate()
        process.wait(timeout(15))
    log = log_path.read_text(errors="replace")
    assert "< TEXT" in log, log[-2000:]  # the frames are in it
    assert ENV_TOKEN not in log, f"the token is in the debug log:\n{log[-3000:]}"
    assert '"token":"[redacted]"' in log, log[-3000:]
