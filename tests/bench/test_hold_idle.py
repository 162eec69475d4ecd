"""The idle run (``bench.load.hold_idle``) against the real relay: the sockets it counts as held are
the ones the target holds, so that the memory read per connection is per connection held. And a
load run's (``bench.load.run_load``) socket that is not greeted: a failure, closed at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from bench.load import Load, NotGreeted, hold_idle, run_load
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


@pytest.mark.parametrize(("relay_option", "count", "wait", "failure"), [
    # every third socket is accepted but never greeted
    (["--silent-every", "3"], 12, 2, "TimeoutError"),
    # every fourth socket's first frame is something else: another channel's frame, a text that is
    # not JSON, its hello in a binary frame, another participant's hello
    (["--misgreet-every", "4"], 16, 5, "NotGreeted"),
], ids=["hello-never-comes", "first-frame-not-its-hello"])
async def test_an_idle_socket_not_greeted_is_counted_a_failure_and_closed(
    relay_option: list[str], count: int, wait: float, failure: str
) -> None:
    """A socket the target does not greet with its own hello (none comes, or another frame comes
    first) is a failure, and closed, not left open for the target to hold through the memory
    reading (and after the run) while ``held`` omits it; only the sockets it greeted are held."""
    every = int(relay_option[1])
    with running("relay", None, relay_option) as relay:
        async with asyncio.timeout(timeout(60)):
            row = await hold_idle(relay, count, hello_timeout=timeout(wait))
            assert row["wanted"] == count and row["held"] == count - count // every, row
            assert row["failures"] == {failure: count // every}, row
            with contextlib.suppress(TimeoutError):  # the closings may take the target a moment
                await eventually(lambda: connections_held(relay) == 0)
            assert connections_held(relay) == 0


async def test_a_load_run_s_socket_whose_hello_does_not_come_is_counted_a_failure_and_closed() -> None:
    """Every third socket of a load run is accepted but never greeted: the run ends once its
    connections are in, with the failures counted (``TimeoutError``), and no socket is left open
    for the target to hold, the silent ones nor the greeted ones."""
    load = Load(participants=8, group_size=4, rate=5.0, duration=1.0, grace=timeout(5))
    with running("relay", None, ["--silent-every", "3"]) as relay:
        async with asyncio.timeout(timeout(60)):
            with pytest.raises(NotGreeted, match=r"2 sockets not greeted \{'TimeoutError': 2\}"):
                await run_load(relay, load, hello_timeout=timeout(2))
            with contextlib.suppress(TimeoutError):  # the closings may take the target a moment
                await eventually(lambda: connections_held(relay) == 0)
            assert connections_held(relay) == 0
