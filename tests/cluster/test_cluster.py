"""A cluster of real worker processes on this machine's Redis and PostgreSQL: one group, members on
different workers, and the worker that serves it killed, paused or restarted mid-period."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import redis
from sqlalchemy import select
from websockets.asyncio.client import connect

from server.storage import connections, experiments, make_engine, participants, reading
from server.verify import verify as verify_log
from tests.cluster.harness import (
    HEARTBEAT,
    LEASE,
    SYNCLAB,
    TOKEN,
    Cluster,
    Participant,
    seqs,
    stored_ids,
    ticks,
)
from tests.server.harness import timeout


def owner_of(cluster: Cluster, group_id: int) -> str:
    """The worker (its name in the test) that holds the group's lease."""
    client = redis.Redis.from_url(cluster.env["REDIS_URL"])
    try:
        value = client.get(f"{cluster.env['SYNCLAB_CLUSTER']}:lease:{group_id}")
    finally:
        client.close()
    assert value is not None, f"nobody serves group {group_id}"
    worker = value.decode().rpartition("|")[0]
    pid = int(worker.split(":")[1])
    return next(n for n, w in cluster.workers.items() if w.process is not None and w.process.pid == pid)


def owner_of_or_none(cluster: Cluster, group_id: int) -> str | None:
    """:func:`owner_of`, or ``None`` while nobody (or no worker of the test) holds the lease."""
    try:
        return owner_of(cluster, group_id)
    except (AssertionError, StopIteration):
        return None


async def create(cluster: Cluster, on: str, **body: Any) -> dict[str, Any]:
    async with cluster.http(on) as http:
        answer = await http.post("/api/experiments", json=body)
    assert answer.status_code == 201, answer.text
    made: dict[str, Any] = answer.json()
    return made


async def until(check: Any, wait: float, what: str) -> None:
    for _ in range(int(timeout(wait) / 0.05)):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout(wait)} s")


def verify(cluster: Cluster, code: str) -> None:
    """What ``synclab verify CODE`` checks (every result and score recomputed from the event log,
    ``seq`` without a gap) on the cluster's database, in this process: a command's interpreter
    cost 2-3 s a call (the command itself: tests/server/test_verify.py)."""
    with reading(cluster.env["DATABASE_URL"]) as engine:
        report = verify_log(engine, code)
    assert report.ok, report.summary()


def check_the_log(cluster: Cluster, code: str, people: list[Participant]) -> None:
    """Every acked id stored exactly once at the acked seq; the experiment's seq has no gap; verify passes."""
    check_stored(cluster, code, people)
    verify(cluster, code)


def check_stored(cluster: Cluster, code: str, people: list[Participant]) -> None:
    """Every acked id stored exactly once at the acked seq; the experiment's seq has no gap."""
    engine = make_engine(cluster.env["DATABASE_URL"])
    try:
        stored = stored_ids(engine, code)
        for person in people:
            for frame_id, seq in person.acked.items():
                assert stored.get(frame_id) == [seq], (frame_id, seq, stored.get(frame_id))
        assert all(len(at) == 1 for at in stored.values()), {k: v for k, v in stored.items() if len(v) > 1}
        numbers = seqs(engine, code)
        assert numbers == list(range(1, len(numbers) + 1))
    finally:
        engine.dispose()


async def play(people: list[Participant], until_end: float, every: float = 0.25) -> None:
    """Each participant decides every ``every`` seconds until the period ended for all."""
    value = 0
    deadline = time.monotonic() + timeout(until_end)
    while time.monotonic() < deadline and not all("period_end" in p.states() for p in people):
        for person in people:
            value += 1
            await person.decide(round((value % 10) / 10, 1))
        await asyncio.sleep(every)


async def settle(people: list[Participant], wait: float = 10) -> None:
    """Until every decision sent has been answered (acked, or refused for good)."""
    await until(lambda: all(not p.pending for p in people), wait, "decisions still unanswered")


async def test_members_on_two_workers_play_one_group_as_in_one_process(pair: Cluster) -> None:
    """Row on one worker, col on the other: both get every frame of the group in the same seq order,
    each its acks; the log checks out; GET /api/server lists both workers."""
    cluster = pair
    exp = await create(cluster, "w1", game="bimatrix", participants=2, group_size=2, period_length=3, num_subperiods=3)
    codes = [p["code"] for p in exp["participants"]]
    row = Participant(codes[0], [cluster.workers["w1"].ws])
    col = Participant(codes[1], [cluster.workers["w2"].ws])
    row.start()
    await row.connected.wait()
    col.start()
    await play([row, col], until_end=15, every=0.2)
    await settle([row, col])
    seen = [[(f["seq"], f["channel"]) for f in p.frames if "seq" in f and f["channel"] != "result"] for p in (row, col)]
    assert seen[0] == seen[1] and len(seen[0]) > 10
    assert row.acked and col.acked
    async with cluster.http("w2") as http:
        status = (await http.get("/api/server")).json()
    assert len(status["cluster"]["workers"]) == 2
    assert status["cluster"]["groups"] >= 1
    for person in (row, col):
        await person.stop()
    check_the_log(cluster, exp["code"], [row, col])


async def split_pair(cluster: Cluster, **body: Any) -> tuple[dict[str, Any], Participant, Participant, int]:
    """Two workers and a bimatrix pair: row on w1 (which serves the group: row joined first, and
    reconnects to w2 when w1 goes), col on w2. Returns the experiment, row, col and the group id."""
    cluster.up("w1", "w2")
    exp = await create(cluster, "w1", game="bimatrix", participants=2, group_size=2, **body)
    codes = [p["code"] for p in exp["participants"]]
    row = Participant(codes[0], [cluster.workers["w1"].ws, cluster.workers["w2"].ws])
    col = Participant(codes[1], [cluster.workers["w2"].ws])
    row.start()
    await row.connected.wait()
    col.start()
    group_id = int(next(f for f in row.frames if f["channel"] == "hello")["payload"]["group"])
    assert owner_of(cluster, group_id) == "w1"
    return exp, row, col, group_id


async def test_kill_9_of_the_groups_worker_moves_the_group_on_within_the_lease_and_loses_nothing_acked(
    cluster: Cluster,
) -> None:
    """SIGKILL of the worker serving the group mid-period: the other takes it within the lease time
    plus a second, applies the missed tick late, keeps the later deadlines (the period ends within
    250 ms of its own); the member of the dead worker reconnects; every acked decision is stored once."""
    # ticks every second, the lease two: the worker that takes over has ticks to apply late
    exp, row, col, _ = await split_pair(cluster, period_length=9, num_subperiods=9)
    people = [row, col]
    player = asyncio.ensure_future(play(people, until_end=30))
    await until(lambda: any(f["channel"] == "subperiod" for f in col.frames), 10, "the first tick")
    await asyncio.sleep(0.5)
    killed_at = time.time()
    cluster.signal("w1", signal.SIGKILL)
    cluster.wait("w1")
    await player
    await settle(people)
    for person in people:
        await person.stop()
    check_the_log(cluster, exp["code"], people)
    assert row.hellos >= 2  # it came back through the other worker
    engine = make_engine(cluster.env["DATABASE_URL"])
    try:
        timed = ticks(engine, exp["code"])
    finally:
        engine.dispose()
    late = [t for t in timed if t["late"]]
    assert late, timed
    taken_over = max(t["actual_at"].timestamp() for t in late) - killed_at
    assert taken_over <= LEASE + 1.0, f"taken over {taken_over:.2f} s after the kill (lease {LEASE} s)"
    assert all(t["scheduled_at"].timestamp() > killed_at for t in late)  # only what fell due meanwhile
    end = next(t for t in timed if t["kind"] == "period_end")
    assert not end["late"] and (end["actual_at"] - end["scheduled_at"]).total_seconds() <= 0.25, end


def connection_rows(cluster: Cluster, experiment_code: str) -> dict[str, dict[str, Any]]:
    """Each participant's newest connection row: its worker, when it closed, and how."""
    return {code: rows[-1] for code, rows in all_connection_rows(cluster, experiment_code).items()}


def all_connection_rows(cluster: Cluster, experiment_code: str) -> dict[str, list[dict[str, Any]]]:
    """Each participant's connection rows, oldest first."""
    engine = make_engine(cluster.env["DATABASE_URL"])
    try:
        with engine.connect() as conn:
            found = conn.execute(
                select(
                    participants.c.code,
                    connections.c.id,
                    connections.c.worker,
                    connections.c.disconnected_at,
                    connections.c.close_code,
                )
                .join(participants, participants.c.id == connections.c.participant_id)
                .join(experiments, experiments.c.id == connections.c.experiment_id)
                .where(experiments.c.code == experiment_code)
                .order_by(connections.c.connected_at)
            )
            rows: dict[str, list[dict[str, Any]]] = {}
            for row in found:
                rows.setdefault(row.code, []).append(dict(row._mapping))
            return rows
    finally:
        engine.dispose()


async def who_is_connected(cluster: Cluster, experiment_code: str) -> dict[str, bool]:
    """Each participant's ``connected``, as w2's participants list gives it."""
    async with cluster.http("w2") as http:
        listed = (await http.get(f"/api/experiments/{experiment_code}/participants")).json()["results"]
    return {p["code"]: p["connected"] for p in listed}


async def one_on_each(cluster: Cluster) -> tuple[dict[str, Any], Participant, Participant]:
    """Workers w1 and w2 and a bimatrix pair, one member only ever through w1 and the other only
    through w2, both connections stored open. Returns the experiment and the two members."""
    cluster.up("w1", "w2")
    exp = await create(cluster, "w2", game="bimatrix", participants=2, group_size=2, period_length=120)
    codes = [p["code"] for p in exp["participants"]]
    on_w1 = Participant(codes[0], [cluster.workers["w1"].ws])
    on_w2 = Participant(codes[1], [cluster.workers["w2"].ws])
    for person in (on_w1, on_w2):
        person.start()
        await person.connected.wait()

    def both_open() -> bool:
        rows = connection_rows(cluster, exp["code"])
        return len(rows) == 2 and all(r["disconnected_at"] is None for r in rows.values())

    await until(both_open, 10, "both connections stored")
    return exp, on_w1, on_w2


async def test_the_connections_of_a_worker_killed_with_kill_9_are_closed_by_another_within_seconds(
    cluster: Cluster,
) -> None:
    """A worker killed with kill -9 stores no close for its sockets: another worker finds it gone (its
    heartbeat expired) and closes its connections with code 1006, at the time it found out; the
    live worker's connections stay open, and the participants' list says who is connected."""
    exp, gone, stays = await one_on_each(cluster)
    w1, w2 = (cluster.workers[n].process for n in ("w1", "w2"))
    assert w1 is not None and w2 is not None
    rows = connection_rows(cluster, exp["code"])
    assert f":{w1.pid}:" in rows[gone.code]["worker"] and f":{w2.pid}:" in rows[stays.code]["worker"], rows
    killed_at = time.time()
    cluster.signal("w1", signal.SIGKILL)
    cluster.wait("w1")
    await until(lambda: connection_rows(cluster, exp["code"])[gone.code]["close_code"] is not None, 30,
                "the dead worker's connection closed")
    rows = connection_rows(cluster, exp["code"])
    closed = rows[gone.code]
    assert closed["close_code"] == 1006, closed
    # found gone once its heartbeat expired (HEARTBEAT after its last beat) and it stayed unheard of
    # as long again, give or take two looks (every 0.4 to 1.2 s): at 5 s, the default, 9 s at the least
    assert killed_at + HEARTBEAT <= closed["disconnected_at"].timestamp() <= killed_at + 2 * HEARTBEAT + timeout(3.5), (
        closed, killed_at)
    assert rows[stays.code]["disconnected_at"] is None and rows[stays.code]["close_code"] is None, rows
    assert await who_is_connected(cluster, exp["code"]) == {gone.code: False, stays.code: True}
    assert "closed 1 connections that worker" in cluster.logs("w2")
    for person in (gone, stays):
        await person.stop()


async def test_rows_without_a_worker_stay_open_while_a_worker_of_an_earlier_build_is_heard_from(
    cluster: Cluster, redis_url: str
) -> None:
    """A rolling upgrade from a build that stored no worker's name with its connections: such a
    worker's open rows (here one of w1's, its name taken out) are not a gone process's while a
    heartbeat without ``names_connections`` (an earlier build's, written here) keeps coming; once
    it stops, they are swept as before (code 1006)."""
    exp, unnamed, named = await one_on_each(cluster)
    engine = make_engine(cluster.env["DATABASE_URL"])
    try:
        with engine.begin() as conn:
            conn.execute(connections.update().where(connections.c.disconnected_at.is_(None),
                                                     connections.c.worker.like(f"%:{cluster.workers['w1'].process.pid}:%"))
                         .values(worker=None))
    finally:
        engine.dispose()
    assert connection_rows(cluster, exp["code"])[unnamed.code]["worker"] is None
    prefix = cluster.env["SYNCLAB_CLUSTER"]
    client = redis.Redis.from_url(redis_url)
    try:
        beat = {"worker": "old-build", "host": "elsewhere", "pid": 1, "started": time.time(), "groups": 0, "sockets": 1,
                "writer": {"batches": 0, "writes": 0, "events": 0}}
        # the sweep's HEARTBEAT of absence, then some six looks (every 0.4 to 1.2 s); beaten as a worker does
        heard_until = time.monotonic() + 2 * HEARTBEAT + 3
        while time.monotonic() < heard_until:
            client.set(f"{prefix}:worker:old-build", orjson.dumps({**beat, "at": time.time()}), px=int(HEARTBEAT * 1000))
            client.sadd(f"{prefix}:workers", "old-build")
            await asyncio.sleep(HEARTBEAT / 5)
        rows = connection_rows(cluster, exp["code"])
        assert rows[unnamed.code]["disconnected_at"] is None, rows  # an earlier build's: left open
        client.delete(f"{prefix}:worker:old-build")
    finally:
        client.close()
    await until(lambda: connection_rows(cluster, exp["code"])[unnamed.code]["close_code"] == 1006, 30,
                "the unnamed row swept once no earlier build was heard from")
    assert connection_rows(cluster, exp["code"])[named.code]["disconnected_at"] is None
    for person in (unnamed, named):
        await person.stop()


async def test_a_paused_worker_whose_connections_were_closed_meanwhile_has_its_sockets_reconnect(
    cluster: Cluster,
) -> None:
    """SIGSTOP of a worker until another has found it gone and closed its connections (1006); after
    SIGCONT its socket is still open, so it closes it with 1012: the old row gets that close, at
    the real time, the page reconnects as a new connection, and the participant shows as connected."""
    exp, paused, stays = await one_on_each(cluster)
    first = connection_rows(cluster, exp["code"])[paused.code]["id"]
    cluster.signal("w1", signal.SIGSTOP)
    try:
        await until(lambda: connection_rows(cluster, exp["code"])[paused.code]["close_code"] == 1006, 30,
                    "the paused worker's connection closed by the other")
    finally:
        cluster.signal("w1", signal.SIGCONT)
    woke = time.time()
    await until(lambda: 1012 in paused.closes, 15, "the socket closed with 1012 after SIGCONT")
    await asyncio.wait_for(paused.connected.wait(), 15)

    def reconnected() -> bool:
        with_old = all_connection_rows(cluster, exp["code"])
        return any(r["id"] != first and r["disconnected_at"] is None for r in with_old[paused.code])

    await until(reconnected, 15, "a new connection stored")
    rows = {r["id"]: r for r in all_connection_rows(cluster, exp["code"])[paused.code]}
    assert rows[first]["close_code"] == 1012, rows[first]
    assert rows[first]["disconnected_at"].timestamp() >= woke - 1, (rows[first], woke)
    assert await who_is_connected(cluster, exp["code"]) == {paused.code: True, stays.code: True}
    assert "sockets reconnect: their connections were closed" in cluster.logs("w1")
    for person in (paused, stays):
        await person.stop()


async def test_a_paused_worker_stores_nothing_after_its_group_was_taken_over(cluster: Cluster) -> None:
    """SIGSTOP of the worker serving the group past its lease: the other worker takes the group (a
    higher epoch); after SIGCONT the paused one serves it no more — whatever it had under way is
    refused by the epoch — and nothing is stored twice or lost; its member carries on through it."""
    exp, row, col, group_id = await split_pair(cluster, period_length=10, num_subperiods=5)
    people = [row, col]
    player = asyncio.ensure_future(play(people, until_end=30))
    await asyncio.sleep(1.2)
    cluster.signal("w1", signal.SIGSTOP)
    # past its lease: a fixed LEASE + 1.5 s was too short for w2's takeover on a loaded machine
    await until(lambda: owner_of_or_none(cluster, group_id) == "w2", LEASE + 30, "w2 taking the group")
    cluster.signal("w1", signal.SIGCONT)
    await player
    await settle(people)
    async with cluster.http("w1") as http:
        status = (await http.get("/api/server")).json()
    for person in people:
        await person.stop()
    check_the_log(cluster, exp["code"], people)
    assert "no longer serving group" in cluster.logs("w1")
    # on waking, either w1's clock fired the ticks that fell due while it slept and the database
    # refused their writes by the epoch (w2 had raised it when it took the group), or its lease
    # loop ran first and retired the group before they fired (which of the two is up to the order
    # of the callbacks due at once); either way w1 stored nothing (the ticks below: one each)
    fenced = status["writer"]["fenced"]
    assert fenced >= 1 or "no longer serving group" in cluster.logs("w1"), status
    engine = make_engine(cluster.env["DATABASE_URL"])
    try:
        timed = ticks(engine, exp["code"])
    finally:
        engine.dispose()
    assert sorted((t["kind"], t["index"]) for t in timed) == sorted(
        [("subperiod", i) for i in range(5)] + [("period_end", 0)]
    )


async def test_a_rolling_restart_of_three_workers_loses_nothing_and_the_period_ends_on_time(cluster: Cluster) -> None:
    """Three workers, the three members of a group one on each; each worker in turn gets SIGTERM
    (it hands its groups over at once and closes its sockets with 1012), exits, and starts again:
    every acked decision is stored once and the period ends within 250 ms of its deadline. Each
    worker's next process is started ahead, its imports done before the period, and cued once the
    worker exited: three starts with their imports (8 to 20 s each on a loaded machine) would not
    fit in the period."""
    names = ("w1", "w2", "w3")
    for name in names:
        cluster.start(name)
    cluster.healthy(*names)
    for name in names:
        cluster.ahead(name)
    cluster.imported(*names)
    exp = await create(cluster, "w1", game="public_goods", participants=3, group_size=3, period_length=14)
    urls = [cluster.workers[n].ws for n in names]
    people = [Participant(p["code"], urls[i:] + urls[:i]) for i, p in enumerate(exp["participants"])]
    for person in people:
        person.start()
        await person.connected.wait()
    player = asyncio.ensure_future(play(people, until_end=40, every=0.3))
    await asyncio.sleep(1.5)
    for name in names:
        cluster.signal(name, signal.SIGTERM)
        assert await cluster.exited(name) == 0, cluster.logs(name)
        cluster.cue(name)
        await cluster.serving(name)
        await asyncio.sleep(1.5)
    await player
    await settle(people)
    for person in people:
        await person.stop()
        assert 1012 in person.closes
    check_the_log(cluster, exp["code"], people)
    engine = make_engine(cluster.env["DATABASE_URL"])
    try:
        end = next(t for t in ticks(engine, exp["code"]) if t["kind"] == "period_end")
    finally:
        engine.dispose()
    assert (end["actual_at"] - end["scheduled_at"]).total_seconds() <= 0.25, end


async def test_members_of_each_group_joining_at_once_on_two_workers_are_all_let_in(pair: Cluster) -> None:
    """Both members of every group connect in the same moment, one to each worker: whichever worker
    takes the group, the other's join waits for it to be loaded there instead of being refused
    ("not served here", the socket closed 1013); every group starts and stores its members' decisions."""
    cluster = pair
    exp = await create(cluster, "w1", game="bimatrix", participants=16, group_size=2, period_length=30)
    codes = [p["code"] for p in exp["participants"]]
    people = [Participant(code, [cluster.workers["w1" if i % 2 == 0 else "w2"].ws]) for i, code in enumerate(codes)]
    for person in people:
        person.start()
    await until(lambda: all(p.hellos for p in people), 15, "every member's hello")
    refused = {p.code: p.closes for p in people if p.closes}
    assert not refused, f"closed before they were let in: {refused}"
    await until(lambda: all("period_start" in p.states() for p in people), 10, "every period's start")
    for person in people:
        await person.decide(0.5)
    await settle(people)
    assert all(len(p.acked) == 1 for p in people), [p.acked for p in people]
    for person in people:
        await person.stop()
    check_stored(cluster, exp["code"], people)
    assert "could not join" not in cluster.logs("w1") + cluster.logs("w2")


async def test_ending_mid_experiment_on_one_worker_tells_the_members_on_every_worker(pair: Cluster) -> None:
    """``end`` asked of w2 in block 1 of 2: the members of a group playing across both workers and
    of a group still waiting each get ``experiment {"status": "cancelled"}`` after their
    ``period_end`` within seconds (the pause before block 2 is a minute), and no new ``hello``."""
    cluster = pair
    exp = await create(cluster, "w1", game="bimatrix", participants=4, group_size=2, blocks=2, period_length=60,
                       block_pause=60)
    codes = [p["code"] for p in exp["participants"]]
    people = [Participant(code, [cluster.workers[on].ws]) for code, on in zip(codes, ("w1", "w2", "w1"), strict=False)]
    for person in people:
        person.start()
    await until(lambda: all("period_start" in p.states() for p in people[:2]) and people[2].hellos == 1, 15,
                "the first group's start")
    async with cluster.http("w2") as http:
        assert (await http.post(f"/api/experiments/{exp['code']}/end")).status_code == 200

    def notices(person: Participant) -> list[Any]:
        return [f["payload"] for f in person.frames if f["channel"] == "experiment"]

    await until(lambda: all(notices(p) for p in people), 5, "every member's notice that the experiment is over")
    for person in people:
        assert notices(person)[0] == {"status": "cancelled"}
        assert person.states()[-1] == "period_end" and person.hellos == 1
        await person.stop()


async def test_a_monitor_on_one_worker_follows_a_group_served_by_another(pair: Cluster) -> None:
    """The monitor's socket on w2, the group served by w1: its snapshot, then every stored event and
    the connections of both members live, and stats counting what it was sent."""
    cluster = pair
    exp, row, col, _group = await split_pair(cluster, period_length=4, num_subperiods=2)
    async with connect(
        f"{cluster.workers['w2'].ws}/ws/monitor/{exp['code']}", open_timeout=timeout(5)
    ) as monitor:
        await monitor.send(orjson.dumps({"channel": "auth", "payload": {"token": TOKEN}}).decode())
        frames: list[dict[str, Any]] = []

        async def read() -> None:
            async for raw in monitor:
                frames.append(orjson.loads(raw))

        reader = asyncio.ensure_future(read())
        await until(lambda: any(f["channel"] == "snapshot" for f in frames), 10, "the snapshot")
        sent = [await row.decide(0.9), await col.decide(0.1)]
        await until(lambda: all(p.acked for p in (row, col)), 10, "the acks")
        await until(
            lambda: {r.get("participant") for f in frames if f["channel"] == "events" for r in f["payload"]
                     if r["channel"] == "decisions"} >= {row.code, col.code},
            10, "both decisions on the monitor",
        )
        await until(lambda: any(f["channel"] == "stats" and f["payload"]["events"] >= 2 for f in frames), 10,
                    "stats counting the events")
        await col.stop()
        await until(lambda: any(f["channel"] == "connection" and f["payload"]["participant"] == col.code
                                and not f["payload"]["connected"] for f in frames), 10, "col's departure")
        reader.cancel()
    await row.stop()
    assert len(sent) == 2


async def test_serve_with_workers_runs_several_processes_of_one_cluster_on_one_port(cluster: Cluster) -> None:
    """``synclab serve --workers 2`` with REDIS_URL: two processes on one port, both in the cluster
    (GET /api/server lists them), a pair plays through the port; SIGTERM stops both, exit 0."""
    port = cluster.start("pair", None, "--workers", "2").port
    try:
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"},
                                     timeout=timeout(10)) as http:
            workers: list[Any] = []
            for _ in range(int(timeout(30) / 0.2)):
                with contextlib.suppress(httpx.TransportError):
                    workers = (await http.get("/api/server")).json()["cluster"]["workers"]
                if len(workers) == 2:
                    break
                await asyncio.sleep(0.2)
            assert len(workers) == 2 and len({w["pid"] for w in workers}) == 2, workers
            made = await http.post("/api/experiments", json={"game": "bimatrix", "participants": 2, "group_size": 2,
                                                             "period_length": 2})
            assert made.status_code == 201, made.text
        exp = made.json()
        people = [Participant(p["code"], [f"ws://127.0.0.1:{port}"]) for p in exp["participants"]]
        for person in people:
            person.start()
        await play(people, until_end=20)
        await settle(people)
        for person in people:
            await person.stop()
    finally:
        cluster.signal("pair", signal.SIGTERM)
        status = cluster.wait("pair", 30)
    assert status == 0, cluster.logs("pair")
    check_the_log(cluster, exp["code"], people)


def test_a_cluster_on_sqlite_or_several_workers_without_redis_are_refused_in_one_line(tmp_path: Path, redis_url: str) -> None:
    """REDIS_URL with a SQLite DATABASE_URL, and --workers 2 without REDIS_URL: exit 2, one line why."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    sqlite = f"sqlite:///{tmp_path}/x.db"
    # the two commands at once: each is mostly Python starting
    processes = [
        subprocess.Popen([*SYNCLAB, "serve", "--port", "0", *options], cwd=tmp_path, env={**env, **more},
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for options, more in (((), {"DATABASE_URL": sqlite, "REDIS_URL": redis_url}),
                              (("--workers", "2"), {"DATABASE_URL": sqlite}))
    ]
    try:
        (refused, refused_err), (alone, alone_err) = [(p, p.communicate(timeout=timeout(30))[1]) for p in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()
    assert refused.returncode == 2 and len(refused_err.strip().splitlines()) == 1
    assert "REDIS_URL" in refused_err and "PostgreSQL" in refused_err
    assert alone.returncode == 2 and "REDIS_URL" in alone_err
