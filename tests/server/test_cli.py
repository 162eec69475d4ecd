"""The ``synclab`` console command, run for real in a subprocess (contract section 1)."""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from tests.server.harness import timeout

#: the console script's entry point, run by this interpreter
SYNCLAB = [sys.executable, "-c", "from server.cli import main; raise SystemExit(main())"]
#: the same, its imports done first (then it creates the file named by its first argument plus
#: ``.imported``), run once the file named by its first argument exists (bounded)
CUED = [sys.executable, "-c", (
    "import pathlib, sys, time; from server.cli import main\n"
    "cue, deadline = pathlib.Path(sys.argv.pop(1)), time.monotonic() + 600\n"
    "pathlib.Path(f'{cue}.imported').touch()\n"
    "while not cue.exists():\n"
    "    if time.monotonic() > deadline: raise SystemExit('no cue came')\n"
    "    time.sleep(0.01)\n"
    "raise SystemExit(main())"
)]
#: variables of the developer's shell that would change what the command does
CLEARED = (
    "DATABASE_URL",
    "REDIS_URL",
    "PORT",
    "SYNCLAB_ADMIN_TOKEN",
    "SYNCLAB_MAX_FRAME_BYTES",
    "SYNCLAB_MAX_BODY_BYTES",
    "SYNCLAB_FRAMES_PER_SECOND",
    "SYNCLAB_FRAME_BURST",
    "SYNCLAB_SEND_QUEUE",
    "SYNCLAB_WRITER_MAX_BATCH",
    "SYNCLAB_SHUTDOWN_TIMEOUT",
    "SYNCLAB_SCHEMA_WAIT",
)
#: MiB of a test server's journal: the default's 64, written at the first start, made a whole
#: suite write about 25 GB
TEST_JOURNAL_MB = "4"
#: seconds a started server has to answer: its imports, schema check and journal take about 8 s on
#: the test machine idle, 16 to 20 s with four busy processes on its two cores (15 s was too short)
HEALTHY_SECONDS = 90.0
PARTICIPANT_LINK = re.compile(r"^\s+(\S+): (http://\S+/p/([A-Za-z0-9_-]+))$")
#: the monitor's link; the token, when one was generated, in the fragment (never sent to the server)
MONITOR_LINE = re.compile(r"monitor at (http://\S+/monitor)(?:#token=([A-Za-z0-9_-]+))?$")
DEMO_LINE = re.compile(r"demo experiment ([A-Za-z0-9_-]+)")


def free_port() -> int:
    """A port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def environment(tmp_path: Path, **values: str) -> dict[str, str]:
    """This process's environment without synclab settings, on a SQLite file in ``tmp_path``."""
    env = {k: v for k, v in os.environ.items() if k not in CLEARED}
    env["DATABASE_URL"] = f"sqlite:///{tmp_path}/synclab.db"
    env["PYTHONUNBUFFERED"] = "1"
    env["SYNCLAB_JOURNAL_SIZE"] = TEST_JOURNAL_MB
    env.update(values)
    return env


def run(tmp_path: Path, *args: str, wait: float = HEALTHY_SECONDS, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``synclab ARGS`` to its end, in ``tmp_path`` (so no stray ``.env`` is read), within
    ``wait`` seconds: a command imports as much as a server, and on a loaded machine as slowly."""
    return subprocess.run(
        [*SYNCLAB, *args],
        cwd=tmp_path,
        env=environment(tmp_path, **env),
        capture_output=True,
        text=True,
        timeout=timeout(wait),
        check=False,
    )


@dataclass
class Running:
    """A ``synclab`` process whose stdout lines are read by a thread, so no read ever blocks."""

    process: subprocess.Popen[str]
    stderr_path: Path
    lines: queue.Queue[str | None] = field(default_factory=queue.Queue)
    seen: list[str] = field(default_factory=list)

    def read_lines(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_for(self, pattern: re.Pattern[str], wait: float = HEALTHY_SECONDS) -> re.Match[str]:
        """The first stdout line (from now on) that matches ``pattern``."""
        deadline = time.monotonic() + timeout(wait)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no line matching {pattern.pattern!r} in {self.seen!r}; {self.stderr()}")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(
                    f"synclab exited ({self.process.poll()}) before printing {pattern.pattern!r}: "
                    f"{self.seen!r}; {self.stderr()}"
                )
            self.seen.append(line)
            match = pattern.search(line)
            if match:
                return match

    def stderr(self) -> str:
        return f"stderr: {self.stderr_path.read_text(errors='replace')[-2000:]!r}"


@contextlib.contextmanager
def started(tmp_path: Path, *args: str, cue: Path | None = None, **env: str) -> Iterator[Running]:
    """Start ``synclab ARGS``; on exit, SIGTERM then (after a bounded wait) SIGKILL it.

    With ``cue``: the process imports synclab at once but runs the command only once the file
    ``cue`` exists (``cue.touch()``): its start then takes no import time, which on a loaded
    machine is most of it, where a test needs it to start within a time.
    """
    stderr_path = tmp_path / "stderr.txt"
    with stderr_path.open("w") as stderr:
        process = subprocess.Popen(
            [*SYNCLAB, *args] if cue is None else [*CUED, str(cue), *args],
            cwd=tmp_path,
            env=environment(tmp_path, **env),
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    running = Running(process, stderr_path)
    reader = threading.Thread(target=running.read_lines, daemon=True)
    reader.start()
    try:
        yield running
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout(10))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout(10))
        reader.join(timeout(5))
        assert process.stdout is not None
        process.stdout.close()


def wait_until_healthy(base: str, wait: float = HEALTHY_SECONDS, server: Running | None = None) -> httpx.Response:
    """Poll ``/healthz`` until it answers (the links are printed before the server listens); a
    ``server`` that exits meanwhile fails at once, with its stderr, instead of at the bound. Given
    the ``server``, only its own answer counts: another test process's server could take the port
    between :func:`free_port` and the server's bind, and answer in its place."""
    deadline = time.monotonic() + timeout(wait)
    port = int(base.rsplit(":", 1)[1])
    while True:
        try:
            answer = httpx.get(f"{base}/healthz", timeout=timeout(2))
        except httpx.TransportError as exc:
            answer, failure = None, exc
        else:
            failure = None
        if answer is not None and (server is None or listens(server.process.pid, port)):
            return answer
        if server is not None and server.process.poll() is not None:
            raise AssertionError(
                f"the server exited ({server.process.returncode}) before answering at {base}"
                + ("" if answer is None else " (another process answers there)") + f"; {server.stderr()}"
            ) from failure
        if time.monotonic() > deadline:
            raise AssertionError(f"no answer of the server's at {base}/healthz within {timeout(wait):g} s: {failure!r}") from failure
        time.sleep(0.05)


def listens(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds the socket listening on 127.0.0.1:``port`` (Linux's ``/proc``)."""
    local = f"0100007F:{port:04X}"
    inodes = set()
    with open("/proc/net/tcp") as table:
        for line in list(table)[1:]:
            fields = line.split()
            if fields[1] == local and fields[3] == "0A":  # LISTEN
                inodes.add(f"socket:[{fields[9]}]")
    try:
        held = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
    except OSError:  # ended meanwhile
        return False
    return bool(inodes & held)


class _Healthy(BaseHTTPRequestHandler):
    """Another test process's server, as far as ``/healthz`` tells: 200 to everything."""

    def do_GET(self) -> None:
        body = b'{"status": "ok"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def another_server() -> Iterator[int]:
    """A server of another process's kind listening on a loopback port: the port."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Healthy)
    thread = threading.Thread(target=server.serve_forever, name="another-server", daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout(5))


@dataclass
class Demo:
    base: str
    #: the generated token, printed once (``None``: not generated this time)
    token: str | None
    experiment: str
    links: list[str]


def start_demo(running: Running, port: int) -> Demo:
    """The demo's monitor URL token, experiment code and participant links, read from stdout."""
    monitor = running.wait_for(MONITOR_LINE)
    experiment = running.wait_for(DEMO_LINE)[1]
    links = [running.wait_for(PARTICIPANT_LINK)[2] for _ in range(4)]
    base = f"http://127.0.0.1:{port}"
    assert monitor[1] == f"{base}/monitor"
    for link in links:
        assert link.startswith(f"{base}/p/")
    return Demo(base, monitor[2], experiment, links)


# --------------------------------------------------------------------------- demo


def test_demo_prints_a_monitor_url_with_a_token_and_four_links_and_stops_on_sigterm(
    tmp_path: Path,
) -> None:
    """``synclab demo`` prints the monitor URL with its token and 4 links, serves, and exits 0 on SIGTERM."""
    port = free_port()
    with started(tmp_path, "demo", "--port", str(port)) as running:
        demo = start_demo(running, port)
        codes = [link.rsplit("/", 1)[1] for link in demo.links]
        assert len(set(codes)) == 4
        assert all(len(code) >= 22 for code in codes)

        health = wait_until_healthy(demo.base)
        assert health.status_code == 200
        assert health.json() == {"status": "ok"}

        # the printed token is this server's experimenter token, and the demo experiment exists
        detail = httpx.get(
            f"{demo.base}/api/experiments/{demo.experiment}",
            headers={"Authorization": f"Bearer {demo.token}"},
            timeout=timeout(5),
        )
        assert detail.status_code == 200, detail.text
        assert sorted(p["code"] for p in detail.json()["participants"]) == sorted(codes)
        assert detail.json()["status"] == "pending"

        started_at = time.monotonic()
        running.process.send_signal(signal.SIGTERM)
        try:
            code = running.process.wait(timeout(10))
        except subprocess.TimeoutExpired:
            pytest.fail("synclab demo did not exit within 10 s of SIGTERM")
        assert time.monotonic() - started_at < timeout(10)
        assert code == 0, f"a SIGTERM is a clean stop, exit status 0; got {code}: {running.stderr()}"


def test_demo_generates_an_admin_token_once_and_it_works_on_the_next_start(tmp_path: Path) -> None:
    """Without SYNCLAB_ADMIN_TOKEN the first start prints a generated token (in the link's fragment);
    the next start prints none (the database keeps only its hash) and still accepts it."""
    port = free_port()
    with started(tmp_path, "demo", "--port", str(port)) as running:
        token = start_demo(running, port).token
    assert token is not None and len(token) >= 22
    port = free_port()
    with started(tmp_path, "demo", "--port", str(port)) as running:
        demo = start_demo(running, port)
        assert demo.token is None
        wait_until_healthy(demo.base)
        detail = httpx.get(f"{demo.base}/api/experiments/{demo.experiment}",
                           headers={"Authorization": f"Bearer {token}"}, timeout=timeout(5))
        assert detail.status_code == 200, detail.text
    assert token.encode() not in (tmp_path / "synclab.db").read_bytes()


def test_demo_never_prints_the_configured_admin_token(tmp_path: Path) -> None:
    """With SYNCLAB_ADMIN_TOKEN set, the monitor link carries no token (the operator has it) and the API accepts it."""
    port = free_port()
    with started(tmp_path, "demo", "--port", str(port), SYNCLAB_ADMIN_TOKEN="lab-secret") as running:
        demo = start_demo(running, port)
        assert demo.token is None
        assert not any("lab-secret" in line for line in running.seen)
        wait_until_healthy(demo.base)
        response = httpx.post(
            f"{demo.base}/api/experiments",
            json={"game": "bimatrix", "participants": 2, "group_size": 2},
            headers={"Authorization": "Bearer lab-secret"},
            timeout=timeout(5),
        )
        assert response.status_code == 201, response.text


def test_a_demo_participant_link_serves_the_participant_page(tmp_path: Path) -> None:
    """A participant link printed by ``synclab demo`` answers 200 with the participant page."""
    port = free_port()
    with started(tmp_path, "demo", "--port", str(port)) as running:
        demo = start_demo(running, port)
        wait_until_healthy(demo.base)
        response = httpx.get(demo.links[0], timeout=timeout(5))
        assert response.status_code == 200
        assert "html" in response.headers["content-type"]


# --------------------------------------------------------------------------- refusals


def test_serve_with_several_workers_is_refused_naming_redis_url(tmp_path: Path) -> None:
    """``synclab serve --workers 2`` exits 2 with a message on stderr that names REDIS_URL, before
    it makes anything: it made the database and printed the first start's token, then refused."""
    result = run(tmp_path, "serve", "--port", str(free_port()), "--workers", "2")
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "REDIS_URL" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == "" and not (tmp_path / "synclab.db").exists()


BAD_ENVIRONMENT = [
    pytest.param("SYNCLAB_MAX_FRAME_BYTES", "abc", id="max-frame-bytes-abc"),
    pytest.param("SYNCLAB_MAX_FRAME_BYTES", "10", id="max-frame-bytes-below-minimum"),
    pytest.param("SYNCLAB_FRAMES_PER_SECOND", "fast", id="frames-per-second-word"),
    pytest.param("SYNCLAB_FRAMES_PER_SECOND", "0", id="frames-per-second-0"),
    pytest.param("SYNCLAB_FRAME_BURST", "0", id="frame-burst-0"),
    pytest.param("SYNCLAB_SEND_QUEUE", "-5", id="send-queue-negative"),
    pytest.param("SYNCLAB_WRITER_MAX_BATCH", "many", id="writer-max-batch-word"),
    pytest.param("SYNCLAB_SHUTDOWN_TIMEOUT", "soon", id="shutdown-timeout-word"),
    pytest.param("SYNCLAB_SHUTDOWN_TIMEOUT", "-1", id="shutdown-timeout-negative"),
    pytest.param("SYNCLAB_SCHEMA_WAIT", "a minute", id="schema-wait-words"),
    pytest.param("SYNCLAB_SCHEMA_WAIT", "-1", id="schema-wait-negative"),
    pytest.param("PORT", "abc", id="port-abc"),
    pytest.param("PORT", "-1", id="port-negative"),
    pytest.param("SYNCLAB_FRAME_BURST", "inf", id="frame-burst-inf"),
    pytest.param("SYNCLAB_MAX_FRAME_BYTES", "nan", id="max-frame-bytes-nan"),
    pytest.param("SYNCLAB_MAX_BODY_BYTES", "1GB", id="max-body-bytes-word"),
    pytest.param("SYNCLAB_MAX_BODY_BYTES", "1073741824", id="max-body-bytes-past-256-mib"),
    pytest.param("DATABASE_URL", "not a database url", id="database-url-garbage"),
]


@pytest.mark.parametrize("command", ["serve", "demo"])
def test_a_port_in_use_is_refused_before_a_token_is_made_or_printed(tmp_path: Path, command: str) -> None:
    """On a port another process listens on, ``serve`` made and stored the first start's token,
    printed it with the monitor's link, and only then found the port taken (exit 3): it exits 3
    in one line naming the address before anything is made; no database, no token, no link."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run(tmp_path, command, "--port", str(port))
    assert result.returncode == 3, result.stdout + result.stderr
    assert result.stdout == "", result.stdout
    assert result.stderr.startswith(f"synclab: cannot listen on 127.0.0.1:{port}: Address already in use"), result.stderr
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "synclab.db").exists()


@pytest.mark.parametrize(("name", "value"), BAD_ENVIRONMENT)
def test_a_bad_environment_value_exits_2_naming_the_variable(
    tmp_path: Path, name: str, value: str
) -> None:
    """A refused environment value stops ``synclab serve`` with exit 2 and a message naming it."""
    env = {name: value}
    args = ["serve"] if name == "PORT" else ["serve", "--port", str(free_port())]
    try:
        # refused before anything is served: seconds, but a loaded machine took over 20 to import synclab
        result = run(tmp_path, *args, **env)
    except subprocess.TimeoutExpired as exc:
        # it started serving instead of refusing; the subprocess was killed by run()
        pytest.fail(f"synclab served with {name}={value!r}: {exc.stdout!r}")
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert name in result.stderr
    assert "Traceback" not in result.stderr


def test_a_port_above_65535_exits_2_naming_port(tmp_path: Path) -> None:
    """PORT=70000-ish is refused with exit 2 naming PORT instead of serving on a wrapped port."""
    wrapped = free_port()
    with started(tmp_path, "serve", PORT=str(wrapped + 65536)) as running:
        deadline = time.monotonic() + timeout(HEALTHY_SECONDS)  # until it exits: its imports first
        while running.process.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError):
                httpx.get(f"http://127.0.0.1:{wrapped}/healthz", timeout=timeout(1))
                pytest.fail(f"synclab served on port {wrapped} for PORT={wrapped + 65536}")
            time.sleep(0.05)
        assert running.process.poll() == 2, running.stderr()
        assert "PORT" in running.stderr_path.read_text()


def test_a_port_option_above_65535_exits_2_naming_the_option(tmp_path: Path) -> None:
    """``--port 70000`` is refused with exit 2 and a message naming --port."""
    result = run(tmp_path, "serve", "--port", "70000")
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "--port" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_bad_value_in_a_dotenv_file_is_refused_too(tmp_path: Path) -> None:
    """Settings are read from ``.env`` in the working directory as well; a bad one there exits 2."""
    (tmp_path / ".env").write_text("SYNCLAB_MAX_FRAME_BYTES=abc\n")
    result = run(tmp_path, "serve", "--port", str(free_port()))
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "SYNCLAB_MAX_FRAME_BYTES" in result.stderr


def test_a_bad_database_url_is_refused_in_one_line_without_its_password(tmp_path: Path) -> None:
    """A DATABASE_URL SQLAlchemy cannot read (a missing colon, a port that is not a number): exit 2,
    one line naming it, its password masked (stderr is a platform's log)."""
    for url in ("postgresql//lab:S3cretPw!@127.0.0.1/x", "postgresql://lab:S3cretPw!@127.0.0.1:5x432/x"):
        result = run(tmp_path, "db", "current", DATABASE_URL=url)
        assert result.returncode == 2, (result.stdout, result.stderr)
        assert "DATABASE_URL" in result.stderr and "lab:***@" in result.stderr, result.stderr
        assert "S3cretPw" not in result.stderr + result.stdout and "Traceback" not in result.stderr


def test_a_database_synclab_does_not_run_on_or_a_driver_not_installed_is_refused_in_one_line(tmp_path: Path) -> None:
    """``mysql://…`` (the README said "any SQLAlchemy URL") printed a traceback ending in
    ``No module named 'MySQLdb'``, exit 1; ``postgresql+asyncpg://…`` one ending in ``asyncpg``. Now:
    exit 2, one line naming DATABASE_URL, the password masked."""
    for url, said in (
        ("mysql://lab:S3cretPw@127.0.0.1/x", "runs on SQLite (sqlite:///./synclab.db) or PostgreSQL"),
        ("postgresql+asyncpg://lab:S3cretPw@127.0.0.1/x", "cannot load the driver 'postgresql+asyncpg'"),
    ):
        result = run(tmp_path, "db", "current", DATABASE_URL=url)
        assert result.returncode == 2, (result.stdout, result.stderr)
        assert result.stderr.startswith("synclab: DATABASE_URL: ") and said in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "S3cretPw" not in result.stderr


def test_serve_with_the_database_away_exits_3_in_one_line(tmp_path: Path) -> None:
    """PostgreSQL not listening: ``serve`` cannot start, says so in one line (the password masked)
    and exits 3, as a process that cannot start does; it printed a traceback of 114 lines and exited 1."""
    url = f"postgresql://lab:S3cretPw@127.0.0.1:{free_port()}/nowhere"
    result = run(tmp_path, "serve", "--port", str(free_port()), DATABASE_URL=url)
    assert result.returncode == 3, (result.stdout, result.stderr)
    assert result.stderr.startswith("synclab: cannot reach the database postgresql://lab:***@"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "S3cretPw" not in result.stderr


def test_an_unknown_command_exits_2_with_usage(tmp_path: Path) -> None:
    """``synclab`` with no or an unknown command prints usage on stderr and exits 2."""
    for args in ((), ("fly",)):
        result = run(tmp_path, *args)
        assert result.returncode == 2
        assert "usage: synclab" in result.stderr


def test_python_m_server_cli_is_the_synclab_command(tmp_path: Path) -> None:
    """``python -m server.cli ARGS`` runs ``synclab ARGS`` (from a checkout, without the console
    script installed); it exited 0 doing nothing, so a refusal or a server never came."""
    result = subprocess.run(
        [sys.executable, "-m", "server.cli", "fly"], cwd=tmp_path, env=environment(tmp_path),
        capture_output=True, text=True, timeout=timeout(HEALTHY_SECONDS), check=False,
    )
    assert result.returncode == 2 and "usage: synclab" in result.stderr, (result.returncode, result.stderr)


def test_new_codes_never_start_with_a_dash_which_a_command_line_reads_as_an_option() -> None:
    """token_urlsafe starts with '-' one time in 64; 5000 draws would all but surely show one."""
    from server.storage import new_code

    codes = [new_code(n) for n in (12, 18) for _ in range(2500)]
    assert not [c for c in codes if c.startswith("-")]
    assert len(set(codes)) == len(codes)


def test_an_older_code_that_starts_with_a_dash_is_given_after_a_double_dash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from server.cli import main
    from server.storage import create_schema, make_engine

    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = make_engine(url)
    create_schema(engine)
    engine.dispose()
    monkeypatch.setenv("DATABASE_URL", url)
    assert main(["verify", "--", "-an-old-code"]) == 2
    assert "no experiment with code '-an-old-code'" in capsys.readouterr().err


def test_an_export_whose_reader_closed_the_pipe_ends_without_a_traceback(tmp_path: Path) -> None:
    """``synclab export CODE | head``: the reader gone, the command ends quietly with the status a
    process SIGPIPE killed shows (141); it printed BrokenPipeError's traceback and exited 1. Here
    the pipe's reading end is closed before the command writes, as ``head`` closes it once it has
    read its lines."""
    from server.experiments import parse_request, plan
    from server.storage import create_schema, insert_experiment, make_engine

    url = f"sqlite:///{tmp_path / 'synclab.db'}"
    engine = make_engine(url)
    create_schema(engine)
    spec = plan(parse_request({"game": "bimatrix", "participants": 4, "group_size": 2}))
    insert_experiment(engine, spec)
    engine.dispose()
    process = subprocess.Popen(
        [*SYNCLAB, "export", spec.code, "--table", "participants"], cwd=tmp_path, env=environment(tmp_path),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()
    stderr = process.stderr.read()
    process.stderr.close()
    assert process.wait(timeout(HEALTHY_SECONDS)) == 141, stderr
    assert stderr == "", stderr


def test_a_broken_pipe_that_is_not_stdouts_keeps_its_traceback(tmp_path: Path) -> None:
    """Only stdout's reader going away ends a command quietly (141): a BrokenPipeError from
    another pipe of the command (here a socket whose peer closed, written to by a command's code
    stand-in) is a fault, raised with its traceback and exit 1 (it was swallowed as 141)."""
    code = (
        "import socket, server.cli as cli\n"
        "def run(argv):\n"
        "    a, b = socket.socketpair(); b.close()\n"
        "    for _ in range(100): a.send(b'x' * 65536)\n"
        "    return 0\n"
        "cli._run = run\n"
        "raise SystemExit(cli.main([]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=environment(tmp_path),
                          capture_output=True, text=True, timeout=timeout(HEALTHY_SECONDS), check=False)
    assert done.returncode == 1 and "BrokenPipeError" in done.stderr, (done.returncode, done.stderr)


def test_serving_freezes_what_was_imported_and_collects_young_objects_less_often() -> None:
    """tune_gc (run by serve and demo before uvicorn starts): the app's modules are frozen."""
    code = (
        "import gc; from server.cli import GC_THRESHOLD, tune_gc; "
        "before = gc.get_threshold(); tune_gc(); "
        "assert gc.get_threshold() == (GC_THRESHOLD, *before[1:]), gc.get_threshold(); "
        "import sys; assert 'server.app' in sys.modules and 'sqlalchemy' in sys.modules; "
        "print(gc.get_freeze_count())"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout(60))
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) > 10_000, "the imported modules' objects are frozen"


def test_a_refusal_found_only_once_uvicorn_has_started_is_one_line_too(tmp_path: Path) -> None:
    """A database refused while the app starts (not by the checks before it) exits 3 with one line.

    ``serve`` checks the journal before uvicorn starts (and refuses with exit 2); what changes in
    between is found by the app's startup, where Starlette would log the refusal as a traceback.
    Here ``_serve`` is run without those checks, on a journal that is not one.
    """
    (tmp_path / "synclab.db.synclab-journal").write_bytes(b"not a journal" * 400)
    serve = "from server.cli import _serve; from server.settings import Settings; " \
        "raise SystemExit(_serve(Settings.from_env(), '127.0.0.1', 0, 1))"
    assert "journal" in refused_at_startup(tmp_path, ["-c", serve], SYNCLAB_JOURNAL="on")


def test_a_process_that_serves_the_app_without_the_cli_logs_a_refusal_at_startup_in_one_line(tmp_path: Path) -> None:
    """Plain ``uvicorn server.app:app``, as each worker of ``serve --workers N`` is (a process of
    its own that imports the app): a setting refused at the app's startup is one line, exit 3.
    Until 2026-12-04 only ``serve``'s own process logged it so; a cluster's workers, and this,
    logged the traceback."""
    uvicorn = ["-m", "uvicorn", "server.app:app", "--host", "127.0.0.1", "--port", "0"]
    refusal = refused_at_startup(tmp_path, uvicorn, SYNCLAB_JOURNAL="on", DATABASE_URL="sqlite://")
    assert "SYNCLAB_JOURNAL=on is for one process on a SQLite file" in refusal


def refused_at_startup(tmp_path: Path, args: list[str], **env: str) -> str:
    """``python ARGS`` (a server) exits 3 with one ``synclab:`` line and no traceback: that line."""
    result = subprocess.run(
        [sys.executable, *args],
        cwd=tmp_path,
        env=environment(tmp_path, **env),
        capture_output=True,
        text=True,
        timeout=timeout(HEALTHY_SECONDS),
        check=False,
    )
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    refusal = [line for line in result.stderr.splitlines() if "synclab:" in line]
    assert len(refusal) == 1, result.stderr
    return refusal[0]


def test_a_server_refused_its_port_is_not_taken_for_the_one_that_answers_there(tmp_path: Path) -> None:
    """Another process listens on the port a test chose, and answers ``/healthz``: the server
    started there is refused it (exit 3), and the wait for it says so, where it returned the
    other's answer as the server's."""
    refused = r"the server exited \(3\) before answering .*another process answers there"
    with (
        another_server() as taken,
        started(tmp_path, "serve", "--port", str(taken)) as server,
        pytest.raises(AssertionError, match=refused),
    ):
        wait_until_healthy(f"http://127.0.0.1:{taken}", server=server)
