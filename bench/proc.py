"""The processes under test: ``synclab serve``, the bare relay, or a cluster of ``synclab serve`` workers.

A target process is started with its output in a log file; its port is read from uvicorn's
``Uvicorn running on http://HOST:PORT`` line (it is asked for port 0, so runs never collide).
Its CPU time and memory are read from ``/proc/<pid>``. A :class:`Cluster` is several server
processes on ports of their own, sharing one PostgreSQL schema and one Redis prefix.
"""

from __future__ import annotations

import contextlib
import ctypes
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
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
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


def cores(interrupts: str | None = None) -> tuple[int | None, int | None]:
    """(the target's core, the generator's core), or ``(None, None)`` with fewer than two cores.

    Of the first two cores this process may use, the generator gets the one that has handled
    fewer of the devices' interrupts (:func:`device_interrupts`, ``interrupts`` the text of
    ``/proc/interrupts``, read when ``None``). The disk's interrupts come with every
    ``fdatasync`` the target makes: on the generator's core they stopped the generator for
    milliseconds at a time, and since it stamps each frame as it reads it, the target's
    latencies grew with them (bench/README.md, "The generator on the disk's core").
    """
    mine = sorted(os.sched_getaffinity(0))
    if len(mine) < 2:
        return None, None
    first, second = mine[0], mine[1]
    counts = device_interrupts(read_interrupts() if interrupts is None else interrupts)
    if counts.get(second, 0) > counts.get(first, 0):
        return second, first
    return first, second


def read_interrupts() -> str:
    """``/proc/interrupts``, or nothing where there is none."""
    try:
        return Path("/proc/interrupts").read_text()
    except OSError:
        return ""


def device_interrupts(text: str) -> dict[int, int]:
    """Per CPU, the interrupts its devices raised (``/proc/interrupts``' numbered lines), since boot.

    The kernel's own per-CPU lines (timer, rescheduling, calls between CPUs: ``LOC``, ``RES``,
    ``CAL`` and the like) are left out: every core has those.
    """
    lines = text.splitlines()
    if not lines:
        return {}
    cpus = [int(name[3:]) for name in lines[0].split() if name.startswith("CPU") and name[3:].isdigit()]
    counts = dict.fromkeys(cpus, 0)
    for line in lines[1:]:
        label, _, rest = line.partition(":")
        if not label.strip().isdigit():
            continue
        for cpu, count in zip(cpus, rest.split(), strict=False):
            if not count.isdigit():
                break
            counts[cpu] += int(count)
    return counts


def pin_self(core: int | None) -> None:
    if core is not None:
        os.sched_setaffinity(0, {core})


def _stat_fields(path: Path) -> list[str]:
    """The fields of a ``/proc`` ``stat`` file after the command's name (which may hold spaces):
    the state is ``[0]``, user time ``[11]``, system time ``[12]``, the start ``[19]``."""
    return path.read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of process ``pid`` (every thread)."""
    fields = _stat_fields(Path(f"/proc/{pid}/stat"))
    return (int(fields[11]) + int(fields[12])) / _TICK


#: what :func:`thread_times` gives per thread: user and system CPU seconds, voluntary and
#: involuntary context switches
ThreadTimes = tuple[float, float, int, int]


def thread_times(pid: int) -> dict[int, ThreadTimes]:
    """Each thread of process ``pid`` (by thread id): its CPU seconds and context switches so far.

    A thread that ends between two readings takes what it used since the first with it.
    """
    out: dict[int, ThreadTimes] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, IndexError, ValueError):  # ended meanwhile
            fields = _stat_fields(task / "stat")
            switches = {}
            for line in (task / "status").read_text().splitlines():
                name, _, value = line.partition(":")
                if name in ("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches"):
                    switches[name] = int(value)
            out[int(task.name)] = (
                int(fields[11]) / _TICK,
                int(fields[12]) / _TICK,
                switches["voluntary_ctxt_switches"],
                switches["nonvoluntary_ctxt_switches"],
            )
    return out


def threads_used(pid: int, before: dict[int, ThreadTimes], after: dict[int, ThreadTimes]) -> dict[str, dict[str, float]]:
    """What the main thread (``pid``'s own: the event loop) and the other threads together used
    between two :func:`thread_times` readings: ``user`` and ``system`` seconds, ``voluntary`` and
    ``involuntary`` switches; and the busiest other thread alone (``busiest``: a server's writer)."""
    names = ("user", "system", "voluntary", "involuntary")

    def delta(tid: int) -> dict[str, float]:
        start = before.get(tid, (0.0, 0.0, 0, 0))
        return {name: float(a - b) for name, a, b in zip(names, after[tid], start, strict=True)}

    main = delta(pid) if pid in after else dict.fromkeys(names, 0.0)
    others = [delta(tid) for tid in after if tid != pid]
    # by CPU, then (a short run's CPU may be under a clock tick) by switches
    busiest = max(others, key=lambda d: (d["user"] + d["system"], d["voluntary"] + d["involuntary"]),
                  default=dict.fromkeys(names, 0.0))
    return {
        "main": main,
        "others": {name: sum(d[name] for d in others) for name in names},
        "busiest": busiest,
    }


def start_ticks(pid: int) -> int:
    """When process ``pid`` started (clock ticks since boot): with the pid, it names one process."""
    fields = _stat_fields(Path(f"/proc/{pid}/stat"))
    return int(fields[19])


def rss_bytes(pid: int, name: str = "VmRSS") -> int:
    """Resident memory of ``pid`` (``VmRSS``, or ``VmHWM`` for the peak), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1]) * 1024
    raise LookupError(f"/proc/{pid}/status has no {name}")


@dataclass
class Target:
    """A running server or relay."""

    kind: str  # "server" or "relay"
    process: subprocess.Popen[bytes]
    base: str
    token: str
    workdir: Path
    log: Path
    #: the server's DATABASE_URL ('' for the relay)
    database_url: str = ""

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def pids(self) -> tuple[int, ...]:
        """Every process of the target (one; a :class:`Cluster` has one per worker)."""
        return (self.process.pid,)

    @property
    def bases(self) -> tuple[str, ...]:
        """Where participants may connect (one address; a :class:`Cluster` has one per worker)."""
        return (self.base,)

    @property
    def database(self) -> Path:
        """The SQLite file of a server on SQLite (see :attr:`database_url`)."""
        return self.workdir / "bench.db"

    @property
    def sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

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


def pinned_command(command: list[str], core: int | None) -> list[str]:
    """``command`` under ``taskset -c core`` when there is a core and ``taskset``."""
    return ["taskset", "-c", str(core), *command] if core is not None and shutil.which("taskset") else command


def run_pinned(module: str, args: list[str], core: int | None, timeout: float = 120.0) -> str:
    """``python -m module *args`` pinned to ``core``; its standard output (it must exit 0)."""
    command = pinned_command([sys.executable, "-m", module, *args], core)
    done = subprocess.run(command, env={**os.environ, "PYTHONPATH": _pythonpath()}, capture_output=True,
                          timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{module} exited with {done.returncode}: {done.stderr.decode(errors='replace')[-2000:]}")
    return done.stdout.decode()


@contextlib.contextmanager
def running(
    kind: str, core: int | None, extra: list[str] | None = None, env: dict[str, str] | None = None, token: str | None = None
) -> Iterator[Target]:
    """Start ``synclab serve`` (fresh SQLite database unless ``env`` names another) or the relay,
    pinned to ``core`` (``None``: unpinned); stop it after, and remove its files (its database, its
    log) unless the run failed."""
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-{kind}-"))
    token = token or secrets.token_urlsafe(24)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SYNCLAB_") and k not in ("DATABASE_URL", "REDIS_URL")}
    environ.update(
        DATABASE_URL=f"sqlite:///{workdir}/bench.db",
        SYNCLAB_ADMIN_TOKEN=token,
        PYTHONPATH=_pythonpath(),
        PYTHONUNBUFFERED="1",
    )
    environ.update(env or {})
    command = pinned_command(_command(kind, extra or []), core)
    log = workdir / f"{kind}.log"
    with log.open("wb") as out:
        # the working directory is the empty workdir: no stray .env changes the settings
        process = subprocess.Popen(
            command, cwd=workdir, env=environ, stdout=out, stderr=subprocess.STDOUT, preexec_fn=ended_with_parent
        )
    if core is not None and not shutil.which("taskset"):
        os.sched_setaffinity(process.pid, {core})
    target = Target(kind, process, "", token, workdir, log, environ["DATABASE_URL"] if kind == "server" else "")
    failed = True
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
        failed = False
    finally:
        stop(process)
        if failed:
            print(f"the {kind}'s files are kept for a look: {workdir}", file=sys.stderr)
        else:  # a run's database is tens of megabytes: a matrix with repeats would fill the temp dir
            shutil.rmtree(workdir, ignore_errors=True)


PR_SET_PDEATHSIG = 1  # Linux's prctl: a signal to the process when its parent ends
#: looked up here, not in the child: a forked child of a process with threads must not take the loader's lock
_PRCTL = ctypes.CDLL(None).prctl if sys.platform.startswith("linux") else None


def ended_with_parent() -> None:
    """In a target's child: SIGTERM when the bench ends, however it ends (Linux only). A killed
    bench left its idle server on the target's core through a matrix and a verdict after it
    (bench/README.md, "The groups' rows once a commit")."""
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGINT (uvicorn shuts down cleanly), then SIGKILL if it lingers."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_SECONDS)


@dataclass
class Cluster:
    """The worker processes of one cluster; the first answers the harness's REST calls."""

    workers: list[Target] = field(default_factory=list)
    kind: str = "cluster"

    @property
    def base(self) -> str:
        return self.workers[0].base

    @property
    def token(self) -> str:
        return self.workers[0].token

    @property
    def pid(self) -> int:
        return self.workers[0].pid

    @property
    def pids(self) -> tuple[int, ...]:
        return tuple(w.pid for w in self.workers)

    @property
    def bases(self) -> tuple[str, ...]:
        return tuple(w.base for w in self.workers)

    @property
    def database_url(self) -> str:
        return self.workers[0].database_url

    @property
    def sqlite(self) -> bool:
        return False

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(f"[worker {i}] {w.log_tail(lines)}" for i, w in enumerate(self.workers))


#: seconds a worker has to say it reaches Redis (``/healthz`` 200) once it serves
HEALTHY_SECONDS = 20.0


def _healthy(target: Target) -> None:
    """Until the worker's ``/healthz`` answers 200 (it reaches Redis), bounded by :data:`HEALTHY_SECONDS`."""
    deadline = time.monotonic() + HEALTHY_SECONDS
    last = ""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(target.base + "/healthz", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        if target.process.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError(f"worker {target.base} not healthy within {HEALTHY_SECONDS:g} s ({last}):\n{target.log_tail()}")


@contextlib.contextmanager
def running_cluster(
    count: int, core: int | None, database_url: str, redis_url: str, prefix: str, env: dict[str, str] | None = None
) -> Iterator[Cluster]:
    """``count`` ``synclab serve`` workers of one cluster, each on a port of its own, pinned to
    ``core`` (``None``: unpinned); stopped after, the last started first.

    They start one after the other (each upgrades the schema under PostgreSQL's advisory lock;
    one at a time is quicker than waiting for the lock) and each is healthy before the run.
    """
    token = secrets.token_urlsafe(24)
    env = {**(env or {}), "DATABASE_URL": database_url, "REDIS_URL": redis_url, "SYNCLAB_CLUSTER": prefix}
    with contextlib.ExitStack() as stack:
        cluster = Cluster()
        for _ in range(count):
            cluster.workers.append(stack.enter_context(running("server", core, env=env, token=token)))
        for worker in cluster.workers:
            _healthy(worker)
        yield cluster
