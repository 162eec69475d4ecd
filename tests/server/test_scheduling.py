"""The server's threads ask for the shortest scheduler slice (server/scheduling.py), and keep their ``nice``."""

from __future__ import annotations

import os
import platform
import threading
from pathlib import Path

from server.scheduling import SLICE_NS, short_slice, thread_slice
from tests.server.test_cli import free_port, started, wait_until_healthy


def _kernel_takes_slices() -> bool:
    """Linux 6.12 and later give an ordinary thread the slice it asks for."""
    if platform.system() != "Linux":
        return False
    major, minor = (int(part) for part in platform.release().split(".")[:2])
    return (major, minor) >= (6, 12)


def test_a_thread_that_asks_gets_the_shortest_slice_and_keeps_its_nice() -> None:
    seen: dict[str, object] = {}

    def ask() -> None:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, 5)  # raising it needs no privilege; this thread ends after
        # a slice of 1 ms first: this process may have asked for the short one already (an app's
        # lifespan run by an earlier test), and a thread inherits it
        seen["longer"] = short_slice(1_000_000)
        seen["before"] = thread_slice()
        seen["taken"] = short_slice()
        seen["after"] = thread_slice()
        seen["nice"] = os.getpriority(os.PRIO_PROCESS, tid)

        def child() -> None:
            seen["inherited"] = thread_slice()

        started_child = threading.Thread(target=child)
        started_child.start()
        started_child.join()

    thread = threading.Thread(target=ask)
    thread.start()
    thread.join()
    assert seen["nice"] == 5, seen
    if _kernel_takes_slices():
        assert seen["longer"] is True and seen["taken"] is True, seen
        assert seen["before"] == 1_000_000 and seen["after"] == SLICE_NS, seen
        assert seen["inherited"] == SLICE_NS, seen
    else:
        assert isinstance(seen["taken"], bool), seen


def test_every_thread_of_a_serving_process_has_the_short_slice(tmp_path: Path) -> None:
    port = free_port()
    with started(tmp_path, "serve", "--port", str(port)) as server:
        wait_until_healthy(f"http://127.0.0.1:{port}", server=server)
        pid = server.process.pid
        tids = [int(task.name) for task in Path(f"/proc/{pid}/task").iterdir()]
        # None: a thread that ended meanwhile (or a kernel that does not say)
        slices = {tid: found for tid in tids if (found := thread_slice(tid, pid)) is not None}
    assert slices, "no thread of the server was read"
    if _kernel_takes_slices():
        assert set(slices.values()) == {SLICE_NS}, slices
