"""A frame id sent again in a cluster: acknowledged with its stored ``seq``, wherever the member plays now.

The members play on w1 of the shared pair (``pair``, tests/cluster/conftest.py): a worker of its
own cost each test its start, 1 to 5 s of the 8 to 12 it took."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from websockets.asyncio.client import connect

from server.storage import make_engine
from tests.cluster.harness import Cluster, stored_ids
from tests.cluster.test_cluster import create, verify
from tests.server.harness import Client, timeout, until_state
from tests.server.test_blocks import block_groups as groups_by_block
from tests.server.test_blocks import crossing


def block_groups(cluster: Cluster, code: str) -> dict[int, dict[int, set[str]]]:
    """Each block's groups (by id) and their members' codes."""
    engine = make_engine(cluster.env["DATABASE_URL"])
    try:
        return groups_by_block(engine, code)
    finally:
        engine.dispose()


async def hello_of(client: Client, group_id: int) -> dict[str, Any]:
    """The hello of ``group_id``'s group (a member moved on to their next block gets one)."""
    while True:
        frame = await client.expect("hello", 10)
        if frame["payload"]["group"] == group_id:
            return frame


@dataclass
class MovedOn:
    """Random matching, two blocks: x's block-0 group ended first and x moved on, which had the
    worker take x's next group (``next_id``) while y, x's partner there, still played block 0 in
    another group; y's decision ``y-1`` was stored there (``ack``), then y moved on too."""

    exp: dict[str, Any]
    clients: dict[str, Client]
    x: str
    y: str
    next_id: int
    ack: dict[str, Any]


@contextlib.asynccontextmanager
async def moved_on(cluster: Cluster) -> AsyncIterator[MovedOn]:
    """:class:`MovedOn` on w1 (every member connected there), y in its next group's running period;
    the sockets closed after."""
    for _ in range(20):  # until block 1 does not repeat block 0's pairs (a third of the shuffles do)
        exp = await create(cluster, "w1", game="bimatrix", participants=4, group_size=2, blocks=2, period_length=1.5,
                           block_pause=0.2, matching="random")
        groups = block_groups(cluster, exp["code"])
        crossed = crossing(groups)
        if crossed is not None:
            break
    else:
        raise AssertionError("20 shuffles repeated block 0's pairs")
    first, second, next_id, x, y = crossed

    async def join(code: str) -> Client:
        return Client(await connect(f"{cluster.workers['w1'].ws}/ws/p/{code}", open_timeout=timeout(5)))

    clients = {code: await join(code) for code in first}
    try:
        await until_state(clients[x], "period_end")
        await hello_of(clients[x], next_id)  # x's next group is loaded, with y not here yet
        clients.update({code: await join(code) for code in second})
        await until_state(clients[y], "period_start")
        await clients[y].send("decisions", 0.25, "y-1")
        ack = await clients[y].expect("ack")
        await until_state(clients[y], "period_end")
        await hello_of(clients[y], next_id)
        await until_state(clients[y], "period_start")
        yield MovedOn(exp, clients, x, y, next_id, ack)
    finally:
        for client in clients.values():
            await client.close()


async def answers(client: Client, *frame_ids: str) -> list[dict[str, Any]]:
    """The ``ack`` or ``error`` that answers each frame of ``frame_ids``, in whatever order they come."""
    found: dict[str, dict[str, Any]] = {}
    while len(found) < len(frame_ids):
        frame = await client.next()
        if frame["channel"] in ("ack", "error") and frame["payload"].get("id") in frame_ids:
            found.setdefault(frame["payload"]["id"], frame)
    return [found[frame_id] for frame_id in frame_ids]


def next_block_decisions(cluster: Cluster, moved: MovedOn) -> tuple[dict[str, list[int]], list[Any]]:
    """The experiment's stored client ids, and y's decisions stored in the next block's group."""
    engine = make_engine(cluster.env["DATABASE_URL"])
    try:
        stored = stored_ids(engine, moved.exp["code"])
        with engine.connect() as conn:
            decided = conn.execute(text(
                "SELECT e.value FROM events e JOIN participants p ON p.id = e.participant_id"
                " WHERE e.group_id = :g AND p.code = :y AND e.channel = 'decisions' ORDER BY e.seq"
            ), {"g": moved.next_id, "y": moved.y}).scalars().all()
    finally:
        engine.dispose()
    return stored, list(decided)


async def test_a_frame_sent_again_in_the_next_block_is_acknowledged_though_its_group_loaded_the_ids_before(
    pair: Cluster,
) -> None:
    """y sends ``y-1`` again in the next block (its ack as if lost): it is acknowledged with its
    stored seq and not stored or applied again. The group's ids of y, loaded when the worker took
    the group, before y's frame was stored, did not hold it: the write reached the database, whose
    unique index refused it, and y got ``game_error``."""
    cluster = pair
    async with moved_on(cluster) as moved:
        y = moved.clients[moved.y]
        await y.send("decisions", 0.25, "y-1")
        assert await answers(y, "y-1") == [moved.ack]
        await y.send("decisions", 0.75, "y-2")
        assert (await answers(y, "y-2"))[0]["channel"] == "ack"
        await until_state(y, "period_end")
    stored, decided = next_block_decisions(cluster, moved)
    assert stored["y-1"] == [moved.ack["payload"]["seq"]] and len(stored["y-2"]) == 1
    assert decided == [0.75]  # y-1 was not applied to the next block's game
    verify(cluster, moved.exp["code"])


async def test_a_frame_sent_again_with_new_ones_in_the_next_block_leaves_them_stored_at_once(
    pair: Cluster,
) -> None:
    """y sends ``y-1`` again in the next block and a new decision right behind it, as a page sends
    what it kept after a reconnect: the repeat is answered with its stored seq, and the new one is
    acknowledged at its first try. The group's ids of y were read when the worker took the group,
    before y's frame was stored: the repeat was written, the database's unique index refused it,
    and the write of y's group after it failed with it (``not_persisted``, to be sent again)."""
    cluster = pair
    async with moved_on(cluster) as moved:
        y = moved.clients[moved.y]
        await y.send("decisions", 0.25, "y-1")
        await y.send("decisions", 0.75, "y-2")
        again, new = await answers(y, "y-1", "y-2")
        assert again == moved.ack
        assert new["channel"] == "ack", new
        await until_state(y, "period_end")
    stored, decided = next_block_decisions(cluster, moved)
    assert stored["y-1"] == [moved.ack["payload"]["seq"]] and len(stored["y-2"]) == 1
    assert decided == [0.75]
    verify(cluster, moved.exp["code"])
