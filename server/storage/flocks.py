"""Who holds an ``flock`` on a file: the marks of servers, schema changes and readers (Linux's ``/proc/locks``)."""

from __future__ import annotations

import fcntl
import os


def marked_by(mark: str, probe: int) -> str | None:
    """The processes holding the ``flock`` on the file ``mark`` that keeps ``probe`` (``LOCK_SH``:
    an exclusive holder; ``LOCK_EX``: any) from being had at once, in words, or ``None`` if nobody
    (no file, or the lock had and let go at once)."""
    try:
        fd = os.open(mark, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, probe | fcntl.LOCK_NB)
    except BlockingIOError:
        return processes(flock_holders(fd))
    else:
        return None
    finally:
        os.close(fd)


def processes(pids: list[int]) -> str:
    """``process 12`` or ``processes 12, 34``; '' for none known."""
    return f"process{'es' if len(pids) > 1 else ''} {', '.join(map(str, pids))}" if pids else ""


def flock_holders(fd: int) -> list[int]:
    """The processes that hold an ``flock`` on the file of ``fd``, as Linux's ``/proc/locks`` says; [] elsewhere."""
    st = os.fstat(fd)
    device = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks") as locks:
            lines = locks.read().splitlines()
    except OSError:
        return []
    pids = set()
    for line in lines:
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF"; a waiter's line has "->" after the number
        fields = [f for f in fields if f != "->"]
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == device and fields[4].isdigit():
            pids.add(int(fields[4]))
    return sorted(pids - {os.getpid()})
