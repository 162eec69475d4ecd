"""The mark of a command reading a SQLite database (``export``, ``verify``, ``token``; :mod:`.readers`):
``<db>.synclab-reading``, held with a shared ``flock`` for the command's run, beside the shared
``flock`` it holds on the database's file.

A server with the journal takes that file's lock exclusively, so it cannot start while a command
reads. Without this mark it could not tell a reading command from another server, and was refused
after two seconds, as beside another server ("stop the other first"). With it, the server says which
process reads and waits for it, up to :func:`.serving.schema_wait`, as it waits for a ``db``
command's schema change (:func:`.recovery.lock_database`). The file stays once made (empty; many
readers share it, and none can tell it is the last).
"""

from __future__ import annotations

import fcntl
import os

from .flocks import marked_by

READING_SUFFIX = ".synclab-reading"


def mark_reading(path: str) -> int | None:
    """The mark's descriptor, holding it shared; ``None`` where the file cannot be made (a folder
    this process may read but not write: it reads without the mark, a server is refused as before)."""
    try:
        fd = os.open(path + READING_SUFFIX, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError:
        return None
    fcntl.flock(fd, fcntl.LOCK_SH)  # a server's look (reading_under_way) holds it exclusively for a moment only
    return fd


def reading_under_way(path: str) -> str | None:
    """The processes of the commands reading the SQLite file ``path`` now, in words (``process 12``;
    '' where ``/proc/locks`` cannot tell), or ``None`` when none is."""
    return marked_by(path + READING_SUFFIX, fcntl.LOCK_EX)
