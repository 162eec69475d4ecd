"""The idle run (``bench.load.hold_idle``) against the real relay: the sockets it counts as held are
the ones the target holds, so that the memory read per connection is per connection held.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from bench.load import hold_idle
from bench.proc import Target, running
from tests.server.harness import eventually, timeout

#: the state of an open TCP connection in /proc/net/tcp
ESTABLISHED = "01"


def connections_held(target: Target) -> int:
    """The TCP connections open at ``target``'s end: its port the local one, in /proc/net/tcp."""
    port = int(target.base.rsplit(":", 1)[1])
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == ESTABLISHED:
            count += 1
    return count


async def test_an_idle_socket_whose_hello_does_not_come_is_counted_a_failure_and_closed() -> None:
    """Every third socket is accepted but never greeted: a failure, and closed, not left open for
    the target to hold through the memory reading (and after the run) while ``held`` omits it."""
    with running("relay", None, ["--silent-every", "3"]) as relay:
        async with asyncio.timeout(timeout(60)):
            row = await hold_idle(relay, 12, hello_timeout=timeout(2))
            assert row["wanted"] == 12 and row["held"] == 8, row
            assert row["failures"] == {"TimeoutError": 4}, row
            with contextlib.suppress(TimeoutError):  # the closings may take the target a moment
                await eventually(lambda: connections_held(relay) == 0)
            assert connections_held(relay) == 0


async def test_an_idle_socket_whose_first_frame_is_not_its_hello_is_counted_a_failure_and_closed() -> None:
    """Every fourth socket's first frame is something else (another channel's frame, a text that is
    not JSON, its hello in a binary frame, another participant's hello): a failure each, and
    closed; only the sockets the target greeted are held."""
    with running("relay", None, ["--misgreet-every", "4"]) as relay:
        async with asyncio.timeout(timeout(60)):
            row = await hold_idle(relay, 16, hello_timeout=timeout(5))
            assert row["wanted"] == 16 and row["held"] == 12, row
            assert row["failures"] == {"NotGreeted": 4}, row
            with contextlib.suppress(TimeoutError):  # the closings may take the target a moment
                await eventually(lambda: connections_held(relay) == 0)
            assert connections_held(relay) == 0
