"""Request bodies are bounded (``SYNCLAB_MAX_BODY_BYTES``): a real ``synclab serve`` and httpx.

An admin's ``POST /api/experiments`` was read whole into memory: a body of a few GB filled it.
Now a body declared larger than the limit is refused before any of it is read, and one sent in
chunks is refused once it grows past the limit, with a 413 and the API's JSON error body.

httpx's ``Client`` reads the answer once the server's close makes its send fail; its
``AsyncClient`` reads only after sending everything, and would get a reset connection instead.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from server.settings import DEFAULT_MAX_BODY_BYTES
from tests.server.harness import timeout
from tests.server.test_cli import Running, free_port, started, wait_until_healthy

TOKEN = "bodies-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
VALID = {"game": "bimatrix", "participants": 2, "group_size": 2}
CHUNK = 64 * 1024


@pytest.fixture
def serving(tmp_path: Path) -> Iterator[tuple[str, Running]]:
    """A real ``synclab serve`` with the default limit: its base URL and its process."""
    port = free_port()
    with started(tmp_path, "serve", "--port", str(port), SYNCLAB_ADMIN_TOKEN=TOKEN) as running:
        base = f"http://127.0.0.1:{port}"
        wait_until_healthy(base)
        yield base, running


class Upload:
    """A body sent in chunks of 64 KiB, counted, that stops after ``most`` bytes or ``seconds``."""

    def __init__(self, most: int, seconds: float, pause: float = 0.0) -> None:
        self.most = most
        self.seconds = seconds
        self.pause = pause
        self.sent = 0

    def __iter__(self) -> Iterator[bytes]:
        deadline = time.monotonic() + timeout(self.seconds)
        chunk = b" " * CHUNK  # JSON's whitespace: were it read whole, it would parse as nothing
        while self.sent < self.most and time.monotonic() < deadline:
            self.sent += len(chunk)
            yield chunk
            if self.pause:
                time.sleep(self.pause)


def peak_rss_mib(running: Running) -> float:
    """The server process's peak resident memory so far (VmHWM), in MiB."""
    for line in Path(f"/proc/{running.process.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc/<pid>/status")


def refusal(response: httpx.Response) -> str:
    """The 413's JSON error message, after checking its shape."""
    assert response.status_code == 413, response.text[:300]
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}, body
    message: str = body["error"]
    assert "SYNCLAB_MAX_BODY_BYTES" in message and str(DEFAULT_MAX_BODY_BYTES) in message, message
    return message


def test_a_body_declared_larger_than_the_limit_is_413_before_it_is_read(
    serving: tuple[str, Running],
) -> None:
    """A Content-Length past the limit (2 GiB) is refused at once: the client has sent next to
    nothing of it when the 413 comes (it trickles 64 KiB every 0.1 s for at most 10 s)."""
    base, _ = serving
    upload = Upload(2 * 1024**3, seconds=10, pause=0.1)
    headers = {**AUTH, "Content-Length": str(2 * 1024**3), "Content-Type": "application/json"}
    with httpx.Client(base_url=base, timeout=timeout(20)) as http:
        started_at = time.monotonic()
        response = http.post("/api/experiments", content=upload, headers=headers)
    assert "Content-Length" in refusal(response)
    assert time.monotonic() - started_at < timeout(5)
    assert upload.sent < DEFAULT_MAX_BODY_BYTES


def test_a_chunked_body_is_413_once_it_grows_past_the_limit_and_never_read_whole(
    serving: tuple[str, Running],
) -> None:
    """A chunked body that does not end before the limit (256 MiB offered as fast as the socket
    takes them, for at most 20 s) is refused once past it: the client could not send more than the
    limit and the sockets' buffers, and the server's peak memory hardly grew."""
    base, running = serving
    before = peak_rss_mib(running)
    upload = Upload(256 * 1024**2, seconds=20)
    with httpx.Client(base_url=base, timeout=timeout(30)) as http:
        response = http.post(
            "/api/experiments", content=upload, headers={**AUTH, "Content-Type": "application/json"}
        )
    assert "while it was read" in refusal(response)
    assert upload.sent < 64 * 1024**2, upload.sent
    assert peak_rss_mib(running) - before < 32, (before, peak_rss_mib(running))


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_body_of_exactly_the_limit_is_taken_and_one_byte_more_is_413(
    serving: tuple[str, Running], chunked: bool
) -> None:
    """The limit is inclusive: a valid create body padded with spaces to the limit is a 201,
    one byte more a 413, whether its length is declared or it comes in chunks."""
    base, _ = serving
    raw = orjson.dumps(VALID)
    with httpx.Client(base_url=base, headers=AUTH, timeout=timeout(20)) as http:
        for size, status in ((DEFAULT_MAX_BODY_BYTES, 201), (DEFAULT_MAX_BODY_BYTES + 1, 413)):
            body = raw + b" " * (size - len(raw))

            def chunks(body: bytes = body) -> Iterator[bytes]:
                for at in range(0, len(body), CHUNK):
                    yield body[at : at + CHUNK]

            response = http.post("/api/experiments", content=chunks() if chunked else body)
            assert response.status_code == status, response.text[:300]
            if status == 413:
                refusal(response)


def test_a_large_body_without_a_token_is_401_and_not_read(serving: tuple[str, Running]) -> None:
    """The caller is checked before the body is looked at: no token is a 401, whatever its size."""
    base, _ = serving
    upload = Upload(2 * 1024**3, seconds=10, pause=0.1)
    headers = {"Content-Length": str(2 * 1024**3)}
    with httpx.Client(base_url=base, timeout=timeout(20)) as http:
        response = http.post("/api/experiments", content=upload, headers=headers)
    assert response.status_code == 401, response.text[:300]
    assert upload.sent < DEFAULT_MAX_BODY_BYTES


def test_the_server_serves_on_after_a_refused_body(serving: tuple[str, Running]) -> None:
    """After a 413 the connection is closed (the rest of its body is never read) and the server
    answers the next request, on a new connection, as before."""
    base, _ = serving
    with httpx.Client(base_url=base, headers=AUTH, timeout=timeout(20)) as http:
        response = http.post("/api/experiments", content=Upload(8 * DEFAULT_MAX_BODY_BYTES, seconds=10))
        refusal(response)
        assert response.headers["connection"] == "close"
        created = http.post("/api/experiments", json=VALID)
        assert created.status_code == 201, created.text


def raw_exchange(base: str, request: bytes, wait: float = 10) -> bytes:
    """Send ``request`` on a raw socket and read the answer until the server closes it (bounded)."""
    host, port = base.removeprefix("http://").split(":")
    deadline = time.monotonic() + timeout(wait)
    answer = b""
    with socket.create_connection((host, int(port)), timeout=timeout(wait)) as sock:
        sock.sendall(request)
        while time.monotonic() < deadline:
            data = sock.recv(65536)
            if not data:
                return answer
            answer += data
    raise AssertionError(f"the server did not close the connection in {wait} s: {answer[-300:]!r}")


def test_a_streamed_export_is_whole_when_the_request_declares_a_body_past_the_limit(
    serving: tuple[str, Running],
) -> None:
    """A streamed answer (the CSV export) listens for the client's disconnect by reading the
    request: a GET declaring a Content-Length past the limit, and sending none of it, used to get
    a 200 cut off after its first line (no terminating chunk), the refusal raised by that read
    once the answer had started. Now the export comes whole, and the connection is closed after."""
    base, running = serving
    with httpx.Client(base_url=base, headers=AUTH, timeout=timeout(20)) as http:
        code = http.post("/api/experiments", json=VALID).json()["code"]
        whole = http.get(f"/api/experiments/{code}/export.csv", params={"table": "events"})
    assert whole.status_code == 200 and whole.text.count("\n") >= 1, whole.text[:300]
    request = (
        f"GET /api/experiments/{code}/export.csv?table=events HTTP/1.1\r\n"
        f"Host: {base.removeprefix('http://')}\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Length: {2 * DEFAULT_MAX_BODY_BYTES}\r\n\r\n"
    ).encode()
    head, _, body = raw_exchange(base, request).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    assert b"transfer-encoding: chunked" in head.lower(), head
    assert b"connection: close" in head.lower(), head
    assert body.endswith(b"0\r\n\r\n"), body[-300:]
    assert dechunked(body) == whole.content
    assert "response already started" not in running.stderr()


def test_a_page_is_whole_when_the_request_declares_a_body_past_the_limit(
    serving: tuple[str, Running],
) -> None:
    """A file answer (the participant's page) reads the request to hear of a disconnect too: it
    comes whole to a GET declaring a body past the limit."""
    base, running = serving
    with httpx.Client(base_url=base, headers=AUTH, timeout=timeout(20)) as http:
        participant = http.post("/api/experiments", json=VALID).json()["participants"][0]["code"]
        whole = http.get(f"/p/{participant}")
    assert whole.status_code == 200, whole.text[:300]
    request = (
        f"GET /p/{participant} HTTP/1.1\r\nHost: {base.removeprefix('http://')}\r\n"
        f"Content-Length: {2 * DEFAULT_MAX_BODY_BYTES}\r\n\r\n"
    ).encode()
    head, _, body = raw_exchange(base, request).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    assert body == whole.content
    assert "response already started" not in running.stderr()


def dechunked(body: bytes) -> bytes:
    """A chunked transfer's content."""
    content = b""
    while True:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return content
        content, body = content + body[:size], body[size + 2 :]
