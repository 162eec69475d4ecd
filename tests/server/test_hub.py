"""The hubs: the memory hub in one process, the Redis hub across processes (real Redis)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from server.hub import MemoryHub, group_topic
from server.hub.redis import ANSWER_WITHIN, PING_EVERY, RedisHub
from server.hub.resp import RespConnection
from tests.conftest import OwnRedis, _missing
from tests.server.harness import eventually


class Collector:
    """A subscriber that keeps what it is given."""

    def __init__(self) -> None:
        self.got: list[tuple[frozenset[str] | None, str]] = []

    def deliver(self, to: frozenset[str] | None, data: str) -> None:
        self.got.append((to, data))


@asynccontextmanager
async def hubs(url: str, prefix: str, *origins: str, resync: Callable[[str, str], None] | None = None
               ) -> AsyncIterator[list[RedisHub]]:
    """Started Redis hubs, one per origin (a process each, in real life), closed afterwards."""
    made = [
        RedisHub(url, origin=o, prefix=prefix, resync=None if resync is None else (lambda t, o=o: resync(o, t)))
        for o in origins
    ]
    for hub in made:
        await hub.start()
    try:
        await eventually(lambda: all(h.up for h in made))
        yield made
    finally:
        for hub in made:
            await hub.close()


def test_the_memory_hub_delivers_to_subscribers_and_forgets_the_last_one_to_leave() -> None:
    """Publish reaches every subscriber of the topic with its ``to``; an empty topic is not listened to."""
    hub, one, two = MemoryHub(), Collector(), Collector()
    hub.subscribe("t", one)
    hub.subscribe("t", two)
    hub.publish("t", "x", frozenset({"a"}), seq=3, prev=1)
    assert one.got == two.got == [(frozenset({"a"}), "x")]
    hub.unsubscribe("t", one)
    hub.unsubscribe("t", two)
    assert not hub.listening("t")


async def test_frames_reach_another_process_in_order_and_the_publisher_at_once(
    redis_url: str, redis_prefix: str
) -> None:
    """A thousand group frames from one hub reach the other in order, with their ``to``; the
    publisher's own subscriber has each at once and never a second time from Redis."""
    async with hubs(redis_url, redis_prefix, "a", "b") as (a, b):
        topic = group_topic(7)
        here, there = Collector(), Collector()
        a.subscribe(topic, here)
        b.subscribe(topic, there)
        await a.ready(topic)
        await b.ready(topic)
        for seq in range(1, 1001):
            a.publish(topic, f"frame {seq}", None if seq % 2 else frozenset({"p", "q"}), seq=seq, prev=seq - 1)
            assert here.got[-1][1] == f"frame {seq}"
        await eventually(lambda: len(there.got) == 1000)
        assert [d for _, d in there.got] == [f"frame {s}" for s in range(1, 1001)]
        assert there.got[0][0] is None and there.got[1][0] == frozenset({"p", "q"})
        await asyncio.sleep(0.1)
        assert len(here.got) == 1000


async def test_the_hub_reads_redis_with_the_c_parser(redis_url: str, redis_prefix: str) -> None:
    """hiredis (a dependency) parses the replies and the pub/sub messages: redis-py's own parser,
    in Python, took some 5 % more of a cluster's CPU per decision and doubled its p50 at 1,000/s.
    The listener's connection is the hub's own (:mod:`server.hub.resp`, hiredis' reader); the
    cluster's other commands go through redis-py's pool, with hiredis too."""
    async with hubs(redis_url, redis_prefix, "a") as (a,):
        assert await a.client.ping()
        assert isinstance(a._listener, RespConnection)
        assert type(a._listener._reader).__module__.startswith("hiredis")
        async with a.client.client() as single:
            await single.ping()
            assert type(single.connection._parser).__name__ == "_AsyncHiredisParser"


async def test_frames_on_two_channels_keep_the_order_they_were_published_in(
    redis_url: str, redis_prefix: str
) -> None:
    """A group frame then a frame to another process's inbox: the inbox frame never overtakes."""
    async with hubs(redis_url, redis_prefix, "a", "b") as (a, b):
        order: list[str] = []

        class Recorder:
            def __init__(self, name: str) -> None:
                self.name = name

            def deliver(self, to: frozenset[str] | None, data: str) -> None:
                order.append(f"{self.name}:{data}")

        b.subscribe("group:1", Recorder("group"))
        b.subscribe("worker:b", Recorder("inbox"))
        await b.ready("group:1")
        await b.ready("worker:b")
        for n in range(200):
            a.publish("group:1", str(n), seq=n + 1, prev=n)
            a.publish("worker:b", str(n))
        await eventually(lambda: len(order) == 400)
        assert order == [f"{kind}:{n}" for n in range(200) for kind in ("group", "inbox")]


async def test_a_gap_in_a_groups_frames_asks_for_a_resync_and_an_older_frame_is_dropped(
    redis_url: str, redis_prefix: str
) -> None:
    """``prev`` not the last ``seq`` seen: resync(topic); a frame at or below the last seen is a
    deposed authority's late publish and is not delivered."""
    asked: list[tuple[str, str]] = []
    async with hubs(redis_url, redis_prefix, "a", "b", resync=lambda o, t: asked.append((o, t))) as (a, b):
        there = Collector()
        b.subscribe("group:3", there)
        await b.ready("group:3")
        a.publish("group:3", "one", seq=10, prev=4)
        a.publish("group:3", "three", seq=14, prev=12)  # 12 never came
        a.publish("group:3", "late", seq=12, prev=10)
        a.publish("group:3", "four", seq=15, prev=14)
        await eventually(lambda: len(there.got) == 3)
        await asyncio.sleep(0.1)
        assert [d for _, d in there.got] == ["one", "three", "four"]
        assert asked == [("b", "group:3")]


async def test_a_hub_that_loses_redis_says_so_then_subscribes_again_and_asks_for_every_resync(
    own_redis: OwnRedis, redis_prefix: str
) -> None:
    """Redis killed: ``up`` is false with a reason and publishing still reaches this process's
    subscribers; Redis back on the same port: the hub subscribes again, asks to resync each
    topic, and frames flow between the processes again."""
    asked: list[tuple[str, str]] = []
    async with hubs(own_redis.url, redis_prefix, "a", "b", resync=lambda o, t: asked.append((o, t))) as (a, b):
        here, there = Collector(), Collector()
        a.subscribe("group:5", here)
        b.subscribe("group:5", there)
        await b.ready("group:5")
        a.publish("group:5", "before", seq=1, prev=0)  # a's publishing connection is open, and idle
        await eventually(lambda: len(there.got) == 1)
        own_redis.kill()
        await eventually(lambda: not a.up and not b.up)
        assert a.reason and b.reason
        a.publish("group:5", "while down", seq=2, prev=1)
        assert here.got[-1][1] == "while down"
        own_redis.start()
        await eventually(lambda: a.up and b.up, wait=10)
        assert ("b", "group:5") in asked and ("a", "group:5") in asked
        await b.ready("group:5")
        a.publish("group:5", "after", seq=3, prev=2)  # on a new connection, not lost on the closed one
        await eventually(lambda: there.got and there.got[-1][1] == "after")
        assert [d for _, d in there.got] == ["before", "after"]


async def test_a_redis_that_stops_answering_is_lost_within_seconds_then_found_again(
    own_redis: OwnRedis, redis_prefix: str
) -> None:
    """Redis stopped (SIGSTOP: its port still accepts, nothing answers): the listener's pings go
    unanswered and each hub is down within :data:`ANSWER_WITHIN` and a ping's interval, with the
    reason; Redis going on (SIGCONT): up again, and frames flow between the processes."""
    async with hubs(own_redis.url, redis_prefix, "a", "b") as (a, b):
        there = Collector()
        b.subscribe("group:8", there)
        await b.ready("group:8")
        a.publish("group:8", "before", seq=1, prev=0)
        await eventually(lambda: len(there.got) == 1)
        own_redis.pause()
        try:
            started = asyncio.get_running_loop().time()
            await eventually(lambda: not a.up and not b.up, wait=ANSWER_WITHIN + PING_EVERY + 3)
            assert asyncio.get_running_loop().time() - started >= ANSWER_WITHIN - 0.5  # not at the first ping
            assert "said nothing" in b.reason and "said nothing" in a.reason
        finally:
            own_redis.resume()
        await eventually(lambda: a.up and b.up, wait=ANSWER_WITHIN + 5)
        await b.ready("group:8")
        a.publish("group:8", "after", seq=2, prev=1)
        await eventually(lambda: there.got[-1][1] == "after")


async def test_the_hub_logs_in_with_the_urls_password_and_selects_its_database(
    own_redis: OwnRedis, redis_prefix: str
) -> None:
    """``redis://:secret@host:port/3``: both of the hub's own connections send ``AUTH`` and
    ``SELECT`` as redis-py's do, and frames flow; a wrong password is refused, and says so."""
    own_redis.kill()
    own_redis.options = ("--requirepass", "secret")
    own_redis.start()
    url = f"redis://:secret@127.0.0.1:{own_redis.port}/3"
    async with hubs(url, redis_prefix, "a", "b") as (a, b):
        there = Collector()
        b.subscribe("group:9", there)
        await b.ready("group:9")
        a.publish("group:9", "one", seq=1, prev=0)
        await eventually(lambda: len(there.got) == 1)
        clients = (await a.client.execute_command("CLIENT", "LIST")).decode().splitlines()
        assert len(clients) == 4  # two listeners, a's publisher (b published nothing), this one
        assert all(" db=3 " in line for line in clients), clients
    wrong = RedisHub(f"redis://:nope@127.0.0.1:{own_redis.port}/3", origin="c", prefix=redis_prefix)
    await wrong.start()
    try:
        await eventually(lambda: "AUTH" in wrong.reason)
        assert not wrong.up and "WRONGPASS" in wrong.reason
    finally:
        await wrong.close()


async def test_a_subscriber_that_fails_leaves_the_listener_listening(
    redis_url: str, redis_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An exception in one delivery is logged; the frames after it are delivered as usual."""
    async with hubs(redis_url, redis_prefix, "a", "b") as (a, b):
        got: list[str] = []

        class Fussy:
            def deliver(self, to: frozenset[str] | None, data: str) -> None:
                if data == "bad":
                    raise RuntimeError("cannot take this one")
                got.append(data)

        b.subscribe("group:10", Fussy())
        await b.ready("group:10")
        for n, data in enumerate(["one", "bad", "two"], start=1):
            a.publish("group:10", data, seq=n, prev=n - 1)
        await eventually(lambda: got == ["one", "two"])
        assert b.up
        assert any("could not be handled" in r.getMessage() for r in caplog.records)


async def _frames_flow(a: RedisHub, b: RedisHub, topic: str, data: str) -> None:
    """A frame published by ``a`` reaches ``b``'s subscriber."""
    there = Collector()
    b.subscribe(topic, there)
    await b.ready(topic)
    a.publish(topic, data, seq=1, prev=0)
    await eventually(lambda: there.got == [(None, data)])


async def _stays_down(url: str, prefix: str, because: Callable[[str], bool]) -> None:
    """A hub on ``url`` does not come up, and its reason says ``because``."""
    hub = RedisHub(url, origin="refused", prefix=prefix)
    await hub.start()
    try:
        await eventually(lambda: because(hub.reason))
        assert not hub.up
    finally:
        await hub.close()


async def test_the_hub_speaks_tls_to_a_rediss_url_and_checks_the_certificate(
    own_redis: OwnRedis, redis_prefix: str
) -> None:
    """``rediss://`` with the CA's file: frames flow over TLS; without it the server's self-signed
    certificate is refused, and the reason says so; ``ssl_cert_reqs=none`` takes any certificate."""
    if shutil.which("openssl") is None:
        _missing("openssl", "is not installed (it makes the test's certificate)")
    cert, key = own_redis.directory / "cert.pem", own_redis.directory / "key.pem"
    await asyncio.to_thread(
        subprocess.run,
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    own_redis.kill()
    own_redis.options = ("--port", "0", "--tls-port", str(own_redis.port), "--tls-cert-file", str(cert),
                         "--tls-key-file", str(key), "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no")
    own_redis.start()
    base = f"rediss://127.0.0.1:{own_redis.port}/0"
    async with hubs(f"{base}?ssl_ca_certs={cert}", redis_prefix, "a", "b") as (a, b):
        await _frames_flow(a, b, "group:11", "over tls")
    async with hubs(f"{base}?ssl_cert_reqs=none", redis_prefix, "c") as (c,):
        assert c.up
    await _stays_down(base, redis_prefix, lambda why: "certificate verify failed" in why)


async def test_the_hub_shows_a_client_certificate_to_a_redis_that_asks_for_one(
    own_redis: OwnRedis, redis_prefix: str
) -> None:
    """A Redis that authenticates its TLS clients (``--tls-auth-clients yes``): with
    ``ssl_certfile``, ``ssl_keyfile`` and, the key encrypted, ``ssl_password`` in the URL, both of
    the hub's own connections and redis-py's get in and frames flow; without a certificate the hub
    stays down and says what is missing; a wrong password is refused before any connection, and
    says which setting to look at."""
    if shutil.which("openssl") is None:
        _missing("openssl", "is not installed (it makes the test's certificates)")
    folder = own_redis.directory
    cert, key = folder / "cert.pem", folder / "key.pem"
    client_cert, client_key = folder / "client.pem", folder / "client-key.pem"

    def make(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder)

    # one self-signed certificate stands for the CA, the server and (with its key encrypted) the client
    await asyncio.to_thread(
        make, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
        "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert),
    )
    await asyncio.to_thread(
        make, "req", "-x509", "-newkey", "rsa:2048", "-days", "1", "-subj", "/CN=synclab-client",
        "-passout", "pass:s3cret", "-keyout", str(client_key), "-out", str(client_cert),
    )
    both = folder / "ca.pem"  # the server trusts the client's certificate as its own CA
    both.write_bytes(cert.read_bytes() + client_cert.read_bytes())
    own_redis.kill()
    own_redis.options = ("--port", "0", "--tls-port", str(own_redis.port), "--tls-cert-file", str(cert),
                         "--tls-key-file", str(key), "--tls-ca-cert-file", str(both), "--tls-auth-clients", "yes")
    own_redis.start()
    base = f"rediss://127.0.0.1:{own_redis.port}/0?ssl_ca_certs={cert}"
    with_cert = f"{base}&ssl_certfile={client_cert}&ssl_keyfile={client_key}&ssl_password=s3cret"
    async with hubs(with_cert, redis_prefix, "a", "b") as (a, b):
        await _frames_flow(a, b, "group:13", "shown a certificate")
        assert await a.client.ping()  # redis-py's connection, from the same URL
    await _stays_down(base, redis_prefix, lambda why: "tls-auth-clients" in why)
    await _stays_down(with_cert.replace("=s3cret", "=nope"), redis_prefix,
                      lambda why: "could not be loaded" in why and "ssl_password" in why)


async def test_a_message_that_is_not_utf8_costs_the_listener_a_reconnect_not_its_life(
    redis_url: str, redis_prefix: str
) -> None:
    """Bytes that are not UTF-8, published on a group's channel by some other client: the listener's
    connection is given up, opened again, its topics resynced, and frames flow again."""
    asked: list[tuple[str, str]] = []
    async with hubs(redis_url, redis_prefix, "a", "b", resync=lambda o, t: asked.append((o, t))) as (a, b):
        there = Collector()
        b.subscribe("group:12", there)
        await b.ready("group:12")
        await a.client.publish(f"{redis_prefix}:group:12", b"\xc3\x28")
        await eventually(lambda: ("b", "group:12") in asked)
        await eventually(lambda: b.up)
        await b.ready("group:12")
        a.publish("group:12", "after", seq=1, prev=0)
        await eventually(lambda: there.got == [(None, "after")])
