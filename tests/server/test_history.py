"""A group's period as its charts draw it: ``GET /api/experiments/{code}/groups/{id}/history`` and ``/p/{code}/history``."""

from __future__ import annotations

from tests.server.harness import Harness


async def test_the_history_of_a_period_is_its_stored_decisions_since_the_start(server: Harness) -> None:
    exp = await server.create(period_length=30)
    a, b = (p["code"] for p in exp["participants"])
    clients = [await server.connect(code) for code in (a, b)]
    hello = (await clients[0].expect("hello"))["payload"]
    for client in clients:
        await client.expect("state")
    seqs = []
    for n, value in enumerate((0.2, 0.7)):
        await clients[0].send("decisions", value, f"x{n}")
        seqs.append((await clients[0].expect("ack"))["payload"]["seq"])
    path = f"/api/experiments/{exp['code']}/groups/{hello['group']}/history"
    body = (await server.http.get(path)).json()
    assert body["group"] == hello["group"] and body["start_seq"] is not None and body["truncated"] is False
    assert [p["decisions"] for p in body["points"]] == [{a: 0.5, b: 0.5}, {a: 0.2, b: 0.5}, {a: 0.7, b: 0.5}]
    assert all(p["seq"] > body["start_seq"] for p in body["points"])
    assert [p["ts"] for p in body["points"]] == sorted(p["ts"] for p in body["points"])
    # up to a seq: what a snapshot covered
    upto = (await server.http.get(path, params={"upto_seq": seqs[0] + 1})).json()  # its group_decisions follows it
    assert [p["decisions"][a] for p in upto["points"]] == [0.5, 0.2]
    # the participant's own view of it, with its code as the key
    mine = (await server.http.get(f"/p/{b}/history")).json()
    assert mine == body
    assert (await server.http.get("/p/no-such-code/history")).status_code == 404


async def test_the_history_refuses_a_group_of_another_experiment_or_no_group(server: Harness) -> None:
    one, other = await server.create(), await server.create()
    client = await server.connect(other["participants"][0]["code"])
    foreign = (await client.expect("hello"))["payload"]["group"]
    base = f"/api/experiments/{one['code']}/groups"
    assert (await server.http.get(f"{base}/{foreign}/history")).status_code == 404
    assert (await server.http.get(f"{base}/nope/history")).status_code == 404
    assert (await server.http.get(f"{base}/99999999/history")).status_code == 404
    assert (await server.http.get(f"{base}/{foreign}/history", params={"upto_seq": "x"})).status_code == 400
    unauthenticated = await server.http.get(f"{base}/{foreign}/history", headers={"Authorization": ""})
    assert unauthenticated.status_code == 401
    # a group whose period has not started has no points yet
    own = await server.connect(one["participants"][0]["code"])
    waiting = (await own.expect("hello"))["payload"]["group"]
    body = (await server.http.get(f"{base}/{waiting}/history")).json()
    assert body == {"group": waiting, "start_seq": None, "points": [], "truncated": False}
