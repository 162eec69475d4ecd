"""A frame id sent again in a cluster: acknowledged with its stored ``seq``, wherever the member plays now."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from websockets.asyncio.client import connect

from server.storage import make_engine
from tests.cluster.harness import Cluster, stored_ids
from tests.cluster.test_cluster import create, verify
from tests.server.harness import Client, timeout, until_state


def block_groups(cluster: Cluster, code: str) -> dict[int, dict[int, set[str]]]:
    """Each block's groups (by id) and their members' codes."""
    engine = make_engine(cluster.env["DATABASE_URL"])
    try:
        with engine.connect() as conn:
            rows = conn.execute(text(
                "SELECT b.index, m.group_id, p.code FROM memberships m JOIN blocks b ON b.id = m.block_id"
                " JOIN participants p ON p.id = m.participant_id JOIN experiments x ON x.id = b.experiment_id"
                " WHERE x.code = :code"
            ), {"code": code}).all()
    finally:
        engine.dispose()
    found: dict[int, dict[int, set[str]]] = {}
    for block, group, member in rows:
        found.setdefault(int(block), {}).setdefault(int(group), set()).add(str(member))
    return found


async def hello_of(client: Client, group_id: int) -> dict[str, Any]:
    """The hello of ``group_id``'s group (a member moved on to their next block gets one)."""
    while True:
        frame = await client.expect("hello", 10)
        if frame["payload"]["group"] == group_id:
            return frame


async def test_a_frame_sent_again_in_the_next_block_is_acknowledged_though_its_group_loaded_the_ids_before(
    cluster: Cluster,
) -> None:
    """Random matching: x's block-0 group ends first, and x moving on has the worker take x's next
    group, loading its members' stored ids then; y, still in block 0 in another group, has a
    decision stored, then moves on to that group and sends the frame again (its ack as if lost):
    it is acknowledged with its stored seq and not stored or applied again. The group's ids of y,
    loaded before y's frame was stored, did not hold it: the write reached the database, whose
    unique index refused it, and y got ``game_error``."""
    cluster.start("w1")
    cluster.healthy("w1")
    for _ in range(20):  # until block 1 does not repeat block 0's pairs (a third of the shuffles do)
        exp = await create(cluster, "w1", game="bimatrix", participants=4, group_size=2, blocks=2, period_length=2,
                           block_pause=0.2, matching="random")
        groups = block_groups(cluster, exp["code"])
        if sorted(map(sorted, groups[0].values())) != sorted(map(sorted, groups[1].values())):
            break
    else:
        raise AssertionError("20 shuffles repeated block 0's pairs")
    first, second = (members for _, members in sorted(groups[0].items()))
    next_id, pair = next((g, members) for g, members in groups[1].items() if members & first and members & second)
    (x,), (y,) = pair & first, pair & second

    async def join(code: str) -> Client:
        return Client(await connect(f"{cluster.workers['w1'].ws}/ws/p/{code}", open_timeout=timeout(5)))

    clients = {code: await join(code) for code in first}
    try:
        await until_state(clients[x], "period_end")
        await hello_of(clients[x], next_id)  # x's next group is loaded, with y's ids as stored now
        clients.update({code: await join(code) for code in second})
        await until_state(clients[y], "period_start")
        await clients[y].send("decisions", 0.25, "y-1")
        ack = await clients[y].expect("ack")
        await until_state(clients[y], "period_end")
        await hello_of(clients[y], next_id)
        await until_state(clients[y], "period_start")
        await clients[y].send("decisions", 0.25, "y-1")
        again = await clients[y].next()
        while again["channel"] not in ("ack", "error"):
            again = await clients[y].next()
        assert again == ack
        await clients[y].send("decisions", 0.75, "y-2")
        assert (await clients[y].expect("ack"))["payload"]["id"] == "y-2"
        await until_state(clients[y], "period_end")
    finally:
        for client in clients.values():
            await client.close()
    engine = make_engine(cluster.env["DATABASE_URL"])
    try:
        stored = stored_ids(engine, exp["code"])
        with engine.connect() as conn:
            decided = conn.execute(text(
                "SELECT e.value FROM events e JOIN participants p ON p.id = e.participant_id"
                " WHERE e.group_id = :g AND p.code = :y AND e.channel = 'decisions' ORDER BY e.seq"
            ), {"g": next_id, "y": y}).scalars().all()
    finally:
        engine.dispose()
    assert stored["y-1"] == [ack["payload"]["seq"]] and len(stored["y-2"]) == 1
    assert decided == [0.75]  # y-1 was not applied to the next block's game
    verify(cluster, exp["code"])
