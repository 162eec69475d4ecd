"""A short scheduler slice for the server's threads, so that a thread that wakes takes its core at once.

Linux (6.6 and later) runs ordinary threads under EEVDF: a thread that wakes on a core where another
runs may wait until that one has used up its slice (a few milliseconds by default) before it runs.
The event loop wakes for every frame and the writer for every batch; a thread of the process (the
journal's apply, a checkpoint) or of another process (a lab's machine that runs something else too)
that holds the core then adds that wait to a decision's time. Since Linux 6.12 a thread may ask
for a shorter slice (``sched_setattr``'s ``sched_runtime`` with its ordinary policy; no privilege
needed), and a thread that wakes with a slice shorter than the running one's takes the core at
once. Its share of the core does not change, only how soon it gets it.

:func:`short_slice` asks for the shortest, 0.1 ms, for the calling thread; the threads it starts
afterwards inherit it. The app's lifespan calls it before it opens anything, so that the loop,
the writer, the apply and every other thread of the server have it (bench/README.md, "What the
apply costs the tail, and a short slice for the server's threads"). Elsewhere (another system,
an older kernel that ignores the field, a policy other than the ordinary one set by the
operator) it changes nothing.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import struct
import threading

log = logging.getLogger("synclab.scheduling")
#: nanoseconds: the shortest slice Linux grants (it clamps to 0.1 to 100 ms)
SLICE_NS = 100_000
#: ``sched_setattr``'s system call number by machine (x86-64; the generic table of arm64 and riscv)
_SYSCALLS = {"x86_64": 314, "aarch64": 274, "arm64": 274, "riscv64": 274}
#: ``struct sched_attr``, its first version (48 bytes): size, policy, flags, nice, priority,
#: runtime, deadline, period
_ATTR = struct.Struct("<IIQiIQQQ")


def short_slice(slice_ns: int = SLICE_NS) -> bool:
    """Ask for a scheduler slice of ``slice_ns`` for the calling thread (and the threads it starts
    from now on); its policy and ``nice`` stay as they are. ``True`` when the kernel took it;
    ``False`` where it cannot be asked (not Linux, another policy) or was refused."""
    number = _SYSCALLS.get(platform.machine())
    if number is None or not hasattr(os, "sched_getscheduler"):
        return False
    if os.sched_getscheduler(0) != os.SCHED_OTHER:  # the operator chose another policy: theirs
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    attr = ctypes.create_string_buffer(_ATTR.pack(_ATTR.size, os.SCHED_OTHER, 0, nice, 0, slice_ns, 0, 0))
    if libc.syscall(number, 0, attr, 0) != 0:
        log.debug("sched_setattr refused a slice of %d ns: errno %d", slice_ns, ctypes.get_errno())
        return False
    return True


def thread_slice(tid: int | None = None, pid: int | str = "self") -> int | None:
    """The slice, in nanoseconds, the kernel gives thread ``tid`` (the kernel's id; the calling
    thread by default) of process ``pid`` (this one by default), as ``/proc`` reports it; ``None``
    where it does not (not Linux, an older kernel, the thread gone)."""
    path = f"/proc/{pid}/task/{threading.get_native_id() if tid is None else tid}/sched"
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("se.slice"):
                    return int(line.split(":", 1)[1])
    except (OSError, ValueError):
        return None
    return None
