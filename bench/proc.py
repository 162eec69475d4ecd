"""The processes under test: ``synclab serve`` or the bare relay, each pinned to a core of its own.

A target process is started with its output in a log file; its port is read from uvicorn's
``Uvicorn running on http://HOST:PORT`` line (it is asked for port 0, so runs never collide).
Its CPU time and memory are read from ``/proc/<pid>``.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STARTUP_SECONDS = 30.0
STOP_SECONDS = 10.0
_RUNNING = re.compile(r"Uvicorn running on http://([\d.]+):(\d+)")
_TICK = os.sysconf("SC_CLK_TCK")


def raise_open_files() -> int:
    """Raise this process's soft limit on open files to the hard limit (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        wanted = 1 << 20 if hard == resource.RLIM_INFINITY else hard
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def cores() -> tuple[int | None, int | None]:
    """(the target's core, the generator's core), or ``(None, None)`` with fewer than two cores."""
    mine = sorted(os.sched_getaffinity(0))
    if len(mine) < 2:
        return None, None
    return mine[0], mine[1]


def pin_self(core: int | None) -> None:
    if core is not None:
        os.sched_setaffinity(0, {core})


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of process ``pid`` (every thread)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def rss_bytes(pid: int, field: str = "VmRSS") -> int:
    """Resident memory of ``pid`` (``VmRSS``, or ``VmHWM`` for the peak), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise LookupError(f"/proc/{pid}/status has no {field}")


@dataclass
class Target:
    """A running server or relay."""

    kind: str  # "server" or "relay"
    process: subprocess.Popen[bytes]
    base: str
    token: str
    workdir: Path
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def database(self) -> Path:
        return self.workdir / "bench.db"

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""


def _command(kind: str, extra: list[str]) -> list[str]:
    if kind == "server":
        code = "import sys; from server.cli import main; sys.exit(main())"
        return [sys.executable, "-c", code, "serve", "--host", "127.0.0.1", "--port", "0", *extra]
    if kind == "relay":
        return [sys.executable, "-m", "bench.relay", "--port", "0", *extra]
    raise ValueError(f"expected a target 'server' or 'relay', got {kind!r}")


def _pythonpath() -> str:
    """This checkout first on a child's path (the bench runs the code beside it)."""
    return os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)


def _pinned(command: list[str], core: int | None) -> list[str]:
    """``command`` under ``taskset -c core`` when there is a core and ``taskset``."""
    return ["taskset", "-c", str(core), *command] if core is not None and shutil.which("taskset") else command


def run_pinned(module: str, args: list[str], core: int | None, timeout: float = 120.0) -> str:
    """``python -m module *args`` pinned to ``core``; its standard output (it must exit 0)."""
    command = _pinned([sys.executable, "-m", module, *args], core)
    done = subprocess.run(command, env={**os.environ, "PYTHONPATH": _pythonpath()}, capture_output=True,
                          timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{module} exited with {done.returncode}: {done.stderr.decode(errors='replace')[-2000:]}")
    return done.stdout.decode()


@contextlib.contextmanager
def running(kind: str, core: int | None, extra: list[str] | None = None, env: dict[str, str] | None = None) -> Iterator[Target]:
    """Start ``synclab serve`` (fresh SQLite database) or the relay, pinned to ``core``; stop it after."""
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-{kind}-"))
    token = secrets.token_urlsafe(24)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SYNCLAB_") and k not in ("DATABASE_URL", "REDIS_URL")}
    environ.update(
        DATABASE_URL=f"sqlite:///{workdir}/bench.db",
        SYNCLAB_ADMIN_TOKEN=token,
        PYTHONPATH=_pythonpath(),
        PYTHONUNBUFFERED="1",
    )
    environ.update(env or {})
    command = _pinned(_command(kind, extra or []), core)
    log = workdir / f"{kind}.log"
    with log.open("wb") as out:
        # the working directory is the empty workdir: no stray .env changes the settings
        process = subprocess.Popen(command, cwd=workdir, env=environ, stdout=out, stderr=subprocess.STDOUT)
    if core is not None and not shutil.which("taskset"):
        os.sched_setaffinity(process.pid, {core})
    target = Target(kind, process, "", token, workdir, log)
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            found = _RUNNING.search(log.read_text(errors="replace"))
            if found:
                target.base = f"http://{found.group(1)}:{found.group(2)}"
                break
            if process.poll() is not None:
                raise RuntimeError(f"the {kind} exited with {process.returncode} before serving:\n{target.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the {kind} did not serve within {STARTUP_SECONDS:g} s:\n{target.log_tail()}")
            time.sleep(0.05)
        yield target
    finally:
        stop(process)


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGINT (uvicorn shuts down cleanly), then SIGKILL if it lingers."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_SECONDS)
