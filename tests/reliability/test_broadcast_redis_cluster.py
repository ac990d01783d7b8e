"""The ``redis`` backend across real processes: two uvicorn workers, a gunicorn process,
publishers in processes of their own, one ``redis-server`` (``tests/support/redis.py``).

- Every subscriber (async and sync views, on every server) receives exactly its topics'
  events, once each, in the order of the topic's stream (the order Redis gave them, which
  is the same for everybody), while two publisher processes publish at the same time; one
  uvicorn worker is killed with SIGKILL in the middle and its clients reconnect to the
  other with their last id (``Last-Event-ID`` header for half of them, ``?lastEventId=``
  for the others), missing and repeating nothing.
- The publish-to-receive latency at 100 subscribers across two uvicorn processes (a
  figure, not an assertion: the machine is shared).

Clients start from an id at the position before the topics' first event (the test sets
the epoch in Redis first, and makes the id the way the servers do), so they need not be
joined before the publishers start: whatever they are not live for yet, they replay.
"""

from __future__ import annotations

import asyncio
import bisect
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx
import pytest
from httpx_sse import aconnect_sse

from tests.support.redis import RedisServer
from tests.support.redis import redis_server_fixture as redis_server_fixture  # the fixture
from tests.support.servers import HOST, REPO_ROOT, LiveServer
from tests.support.wire import parse_events, request_bytes, response_body

pytestmark = [pytest.mark.server, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

SETTINGS = "tests.settings_redis"
WAIT = 30.0  # seconds for anything the test waits for (never reached when all is well)
TOPIC_SETS = ("t1", "t2", "t1,t2")

PUBLISHER = """
import os, sys, time
import django
django.setup()
from django_flosse import broadcast
name, count, pause = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
if name == "timed":
    broadcast("lat", "ready")
    sys.stdin.readline()
    for i in range(count):
        broadcast("lat", repr(time.time()))
        time.sleep(pause)
else:
    for i in range(count):
        topic = ("t1", "t2")[i % 2]
        broadcast(topic, f"{topic}:{name}-{i}")
        time.sleep(pause)
"""


@pytest.fixture
def redis(redis_server: RedisServer) -> Iterator[RedisServer]:
    with redis_server.client() as client:
        client.flushall()
    yield redis_server


def publisher(redis: RedisServer, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", PUBLISHER, *args],
        cwd=REPO_ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": SETTINGS, **redis.env()},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def start_id(redis: RedisServer, topics: str) -> str:
    """The id of the position before the first event of ``topics``, as a server makes it."""
    from django_flosse.broadcasting._ids import IdFormat
    from django_flosse.broadcasting.backends.redis import EPOCH_KEY, _format_id, _parse_id

    with redis.client() as client:
        client.set(EPOCH_KEY, "cafe0001", nx=True)
        epoch = client.get(EPOCH_KEY).decode()
    names = sorted(topics.split(","))
    ids = IdFormat("r" + epoch, names, _format_id, _parse_id)
    return ids.format(dict.fromkeys(names, (0, 0)))


def stream_order(redis: RedisServer, topic: str) -> list[str]:
    """The data of every event of ``topic``, in the stream's order (the truth)."""
    with redis.client() as client:
        entries = client.xrange(f"flosse:topic:{topic}")
    return [fields[b"b"].decode().split("data: ", 1)[1].rstrip("\n") for _, fields in entries]


@dataclass(eq=False)
class Follower:
    """An EventSource: follows a stream, and on its end reconnects (to ``fallback``) with
    the last id it received, as a header or as the ``lastEventId`` query parameter."""

    path: str
    server: LiveServer
    fallback: LiveServer | None
    last_id: str
    query: bool = False
    events: list[tuple[str, str, str, float]] = field(default_factory=list)
    connections: int = 0
    errors: list[str] = field(default_factory=list)

    async def run(self, client: httpx.AsyncClient, stop: asyncio.Event) -> None:
        while not stop.is_set() and self.connections < 5:
            self.connections += 1
            params = {"lastEventId": self.last_id} if self.query and self.connections > 1 else None
            headers = {} if params else {"Last-Event-ID": self.last_id}
            try:
                async with aconnect_sse(
                    client, "GET", self.server.url + self.path, headers=headers, params=params
                ) as source:
                    async for sse in source.aiter_sse():
                        if not sse.data:  # a heartbeat (a browser dispatches nothing)
                            continue
                        self.events.append((sse.id, sse.event, sse.data, time.time()))
                        self.last_id = sse.id or self.last_id
            except httpx.HTTPError as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")
            if self.fallback is not None and self.server.returncode is not None:
                self.server = self.fallback
            await asyncio.sleep(0.05)

    def datas(self, topic: str) -> list[str]:
        return [data for _, event, data, _ in self.events if data.startswith(topic + ":")]

    def resets(self) -> int:
        return sum(1 for _, event, _, _ in self.events if event == "flosse-reset")


async def wait_for(check: Callable[[], bool], timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def test_every_subscriber_once_in_order_across_processes_and_a_sigkill(
    redis: RedisServer, live_server_factory: Callable[..., LiveServer]
) -> None:
    env = {"DJANGO_SETTINGS_MODULE": SETTINGS, **redis.env()}
    servers = await asyncio.gather(
        asyncio.to_thread(live_server_factory, "uvicorn", env=env),
        asyncio.to_thread(live_server_factory, "uvicorn", env=env),
        asyncio.to_thread(live_server_factory, "gunicorn", env=env, threads=16),
    )
    doomed, survivor, _wsgi = servers
    followers = []
    for server in servers:
        for topics in TOPIC_SETS:
            for view in ("async", "sync"):
                followers.append(
                    Follower(
                        f"/broadcast/{view}/{topics}/",
                        server,
                        survivor if server is doomed else None,
                        start_id(redis, topics),
                        query=len(followers) % 2 == 1,
                    )
                )
    stop = asyncio.Event()
    per_publisher = 200
    async with httpx.AsyncClient(timeout=httpx.Timeout(WAIT, read=None)) as client:
        tasks = [asyncio.ensure_future(f.run(client, stop)) for f in followers]
        try:
            publishers = [publisher(redis, name, str(per_publisher), "0.01") for name in "pq"]
            on_doomed = [f for f in followers if f.server is doomed]
            # Mid-stream: every client of the doomed worker has some events, not all.
            assert await wait_for(lambda: all(len(f.events) >= 10 for f in on_doomed))
            doomed.send_signal(signal.SIGKILL)
            for proc in publishers:
                out, _ = await asyncio.to_thread(proc.communicate, timeout=WAIT * 2)
                assert proc.returncode == 0, out.decode()
            truth = {topic: stream_order(redis, topic) for topic in ("t1", "t2")}
            assert [len(truth["t1"]), len(truth["t2"])] == [per_publisher] * 2

            def complete(f: Follower) -> bool:
                return all(
                    len(f.datas(t)) >= len(truth[t]) for t in f.path.split("/")[3].split(",")
                )

            done = await wait_for(lambda: all(complete(f) for f in followers))
        finally:
            stop.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    assert done, [(f.path, f.server.url, len(f.events), f.errors) for f in followers]
    assert doomed.returncode == -signal.SIGKILL
    for f in followers:
        topics = f.path.split("/")[3].split(",")
        for topic in topics:
            assert f.datas(topic) == truth[topic], (f.path, topic)
        others = [e for e in f.events if not e[2].startswith(tuple(t + ":" for t in topics))]
        assert others == [], f.path  # nothing else, no reset
        assert f.resets() == 0
    moved = [f for f in followers if f.fallback is not None]
    assert all(f.connections >= 2 and f.server is survivor for f in moved)
    assert {f.query for f in moved} == {True, False}


@dataclass(eq=False)
class TimedStream:
    """A raw streaming GET that notes when each chunk arrived (and nothing else): with a
    hundred streams, parsing them as they come would measure this process, not the servers."""

    raw: bytearray = field(default_factory=bytearray)
    ends: list[int] = field(default_factory=list)  # offset after each chunk
    times: list[float] = field(default_factory=list)

    async def run(self, server: LiveServer, path: str, last_id: str) -> None:
        reader, writer = await asyncio.open_connection(HOST, server.port)
        try:
            writer.write(request_bytes(server.port, path, {"Last-Event-ID": last_id}))
            while chunk := await reader.read(65536):
                self.times.append(time.time())
                self.raw += chunk
                self.ends.append(len(self.raw))
        finally:
            writer.close()

    def count(self, needle: bytes) -> int:
        return self.raw.count(needle)

    def arrivals(self) -> list[tuple[str, float]]:
        """(data, when its last byte arrived) of every event, in order."""
        found = []
        for event in parse_events(response_body(bytes(self.raw))):
            data = event.get("data", "")
            if data:
                end = self.raw.find(b"data: " + data.encode()) + len(data) + 6
                found.append((data, self.times[bisect.bisect_left(self.ends, end)]))
        return found


async def test_latency_at_100_subscribers_across_two_processes(
    redis: RedisServer,
    live_server_factory: Callable[..., LiveServer],
    figure: Callable[[str], None],
) -> None:
    env = {"DJANGO_SETTINGS_MODULE": SETTINGS, **redis.env()}
    servers = await asyncio.gather(
        asyncio.to_thread(live_server_factory, "uvicorn", env=env),
        asyncio.to_thread(live_server_factory, "uvicorn", env=env),
    )
    count, subscribers = 50, 100
    timed = publisher(redis, "timed", str(count), "0.02")
    streams = [TimedStream() for _ in range(subscribers)]
    last_id = start_id(redis, "lat")
    tasks = [
        asyncio.ensure_future(s.run(servers[i % 2], "/broadcast/async/lat/", last_id))
        for i, s in enumerate(streams)
    ]
    try:
        ready = await wait_for(lambda: all(s.count(b"data: ready") for s in streams))
        assert ready, [bytes(s.raw[:200]) for s in streams if not s.count(b"data: ready")][:3]
        assert timed.stdin is not None
        timed.stdin.write(b"go\n")
        timed.stdin.flush()
        out, _ = await asyncio.to_thread(timed.communicate, timeout=WAIT * 2)
        assert timed.returncode == 0, out.decode()
        assert await wait_for(lambda: all(s.count(b"data: ") == count + 1 for s in streams))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    lags = []
    for stream in streams:
        arrivals = stream.arrivals()
        assert [data for data, _ in arrivals[:1]] == ["ready"]
        sent = [float(data) for data, _ in arrivals[1:]]
        assert sent == sorted(sent) and len(sent) == count
        lags += [when - published for (_, when), published in zip(arrivals[1:], sent, strict=True)]
    lags.sort()
    figure(
        f"redis backend, {subscribers} subscribers on 2 uvicorn processes, {count} events "
        f"20 ms apart: publish-to-receive median {statistics.median(lags) * 1000:.1f} ms, "
        f"p99 {lags[int(len(lags) * 0.99)] * 1000:.1f} ms, worst {lags[-1] * 1000:.1f} ms"
    )
