"""Broadcast under a reconnect storm: a thousand clients back at once, a few hundred events behind.

One uvicorn process serves ``/storm/feed/<topic>/`` (``tests.reliability.storm_views``) on
the ``database`` backend (the SQLite test database), then on ``redis`` (the session's
``redis-server``). Four topics hold 600 events each; ``CLIENTS`` clients (a deploy, a
network blip) reconnect within ``SPREAD`` seconds, each with a ``Last-Event-ID`` 300 to
340 events back (five positions per topic: twenty distinct reads to make). Every client
must get exactly the events after its id, in order, once (checked by id, client by
client). Then:

- **Shared reads**: the history reads, counted as the broadcast reader thread's
  ``SELECT``\\ s of the history table (an execute wrapper in the server) or as Redis'
  ``XRANGE`` calls (``INFO commandstats``), stay about one per topic and position, not one
  per client: at most ``READS_PER_KEY`` per (topic, position).
- **First-event time**: ``PROBES`` probes (new clients, same id as the storm's) arriving
  during the storm are timed in the server (from the view's start to its first event:
  the join, the history read, the replay made ready) against the same probes on the idle
  server, in this run: the median of the storm's stays within ``FIRST_EVENT_RATIO`` times
  the idle one's (issue 12), and every probe's first event comes while the storm is still
  being served. Each probe's steps (join and reads asked and answered, first event) are
  printed: a join through the backend's thread used to wait about 10 ms for the busy loop
  on the way back (10-37x the idle time); it now takes its cut on the view's thread. The
  time at the client is printed too: it also counts the wait for the busy loop to accept
  the connection and run the request up to the view, which the storm's sends make long
  (seconds on 2 cores).
- **Memory**: after a warm-up storm the server's settled RSS and its count of Python
  objects are the baseline; after the measured storm, with every client gone, both are
  back (RSS within 10%, objects within ``OBJECTS_TOLERANCE``). The objects are counted
  after one full collection: what a finished stream leaves must go in it (a subscription
  and its connection, held by a weak map from request to connection that was tried, once
  outlived it by one more collection: 12,000 objects in one of the two counts and not the
  other).

The server runs with ``MALLOC_ARENA_MAX=2`` (see ``test_disconnects.py``). Figures are
printed in the summary. ``FLOSSE_STORM_CLIENTS`` overrides the number of clients.
"""

from __future__ import annotations

import asyncio
import os
import re
import statistics
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.test import override_settings

from django_flosse.broadcasting._ids import IdFormat
from django_flosse.broadcasting._messages import make_draft
from django_flosse.broadcasting.backends import close_backend, get_backend
from tests.reliability.storm_client import settle_idle
from tests.support.observe import showing_logs
from tests.support.processes import cpu_seconds, rss_mb, settled_rss
from tests.support.redis import RedisServer
from tests.support.redis import redis_server_fixture as redis_server_fixture  # the fixture
from tests.support.servers import HOST, LiveServer
from tests.support.wire import get_json, request_bytes

pytestmark = [
    pytest.mark.server,
    pytest.mark.timeout(300),
    pytest.mark.django_db(transaction=True),
]

CLIENTS = int(os.environ.get("FLOSSE_STORM_CLIENTS", "1000"))
TOPICS = 4
HEAD = 600  # events per topic before the storm
BACK = (300, 310, 320, 330, 340)  # how far back the clients' ids are (per topic)
SPREAD = 1.0  # seconds over which the clients reconnect
PROBES = 9
FIRST_EVENT_RATIO = 3.0
READS_PER_KEY = 3
RSS_TOLERANCE = 0.10
#: Python objects that may come and go between two idle moments: redis-py's pool keeps as
#: many connections as the busiest moment needed (about 100 objects each; the figure
#: prints Redis' count of connections before and after), and one storm is busier than
#: another (+786 objects once in six runs; the database backend's stay within 120).
OBJECTS_TOLERANCE = 1000
WAIT = 120.0  # seconds the whole storm may take on a loaded machine (never reached)
FLOSSE = {"BROADCAST_HISTORY": 1000, "PERSISTENCE": False}
_ID = re.compile(rb"\nid: [a-z0-9]+\.[0-9a-f]+\.([0-9-]+)\n")


@dataclass
class Client:
    topic: str
    after: int  # the position its Last-Event-ID names
    probe: str | None = None
    writer: asyncio.StreamWriter | None = None
    connected_at: float = 0.0
    first_at: float | None = None
    done: bool = False
    done_at: float = 0.0
    received: list[int] = field(default_factory=list)

    def path(self) -> str:
        return f"/storm/feed/{self.topic}/" + (f"?probe={self.probe}" if self.probe else "")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


@dataclass
class History:
    """The topics of one storm on one backend, and how to count its history reads."""

    backend: str
    tag: str
    env: dict[str, str]
    #: Per topic, the id text of the position after event n, at index n (0: none yet).
    texts: dict[str, list[str]]
    redis: RedisServer | None = None

    def id(self, topic: str, n: int) -> str:
        return IdFormat(self.tag, (topic,), str, str).format({topic: self.texts[topic][n]})

    def numbers(self, topic: str, data: bytes) -> list[int]:
        index = {text: n for n, text in enumerate(self.texts[topic])}
        return [index.get(text.decode(), -1) for text in _ID.findall(data)]

    def connections(self) -> str:
        """Redis' count of connected clients (this test's own included), or ""."""
        if self.redis is None:
            return ""
        with self.redis.client() as client:
            return f", {client.info('clients')['connected_clients']} Redis connections"

    def reads(self, server: LiveServer) -> int:
        """History reads so far: ``SELECT``\\ s of the history table by the server's
        broadcast reader, or Redis ``XRANGE`` calls."""
        if self.redis is None:
            report = get_json(server, "/storm/report/")
            return int(report["queries"].get("SELECT django_flosse_broadcastmessage", 0))
        with self.redis.client() as client:
            stats = client.info("commandstats")
        return int(stats.get("cmdstat_xrange", {}).get("calls", 0))


@pytest.fixture(params=["database", "redis"])
def history(request: pytest.FixtureRequest) -> Iterator[History]:
    """``TOPICS`` topics of ``HEAD`` events each, published from this process."""
    tag = uuid.uuid4().hex[:8]
    names = [f"storm{i}-{tag}" for i in range(TOPICS)]
    flosse: dict[str, Any] = {**FLOSSE, "BROADCAST_BACKEND": request.param}
    env = {"DJANGO_SETTINGS_MODULE": "tests.reliability.settings_storm", "MALLOC_ARENA_MAX": "2"}
    redis: RedisServer | None = None
    if request.param == "redis":
        redis = request.getfixturevalue("redis_server")
        flosse["BROADCAST_REDIS_URL"] = redis.url
        env = {
            **env,
            **redis.env(),
            "DJANGO_SETTINGS_MODULE": "tests.reliability.settings_storm_redis",
        }
    with override_settings(FLOSSE=flosse):
        backend = get_backend()
        now = time.time()  # a publish time of 0 would be trimmed as older than the history
        for topic in names:
            drafts = [
                make_draft(topic, f"{topic}:{n}", None, dumps=str, max_bytes=1000, published_at=now)
                for n in range(1, HEAD + 1)
            ]
            backend.publish(drafts)
        if redis is None:
            texts = {topic: [str(n) for n in range(HEAD + 1)] for topic in names}
        else:
            with redis.client() as client:
                texts = {
                    topic: ["0-0"]
                    + [eid.decode() for eid, _ in client.xrange(f"flosse:topic:{topic}")]
                    for topic in names
                }
        made = History(request.param, backend.tag, env, texts, redis)
        close_backend()
        yield made


async def _run(port: int, history: History, client: Client, start_in: float) -> None:
    """Connect after ``start_in`` s with the client's id; read until its topic's last event
    (only the tail of what arrived is searched: a thousand clients share this loop)."""
    await asyncio.sleep(start_in)
    last = f"id: {history.id(client.topic, HEAD)}\n".encode()
    headers = {"Last-Event-ID": history.id(client.topic, client.after)}
    client.connected_at = time.monotonic()
    reader, client.writer = await asyncio.open_connection(HOST, port, limit=1 << 20)
    client.writer.write(request_bytes(port, client.path(), headers))
    data = bytearray()
    deadline = time.monotonic() + WAIT
    while not client.done and time.monotonic() < deadline:
        chunk = await asyncio.wait_for(reader.read(65536), WAIT)
        if not chunk:
            break
        data += chunk
        if client.first_at is None and b"data: " in chunk:
            client.first_at = time.monotonic()
        client.done = last in data[-(len(chunk) + len(last)) :]
    client.done_at = time.monotonic()
    client.received = history.numbers(client.topic, bytes(data))


def storm(server: LiveServer, history: History, label: str) -> tuple[list[Client], list[Client]]:
    """``CLIENTS`` clients within ``SPREAD`` s, and ``PROBES`` probes spread over the same
    second; each reads until its topic's last event. All are closed when this returns."""
    topics = list(history.texts)
    clients = [
        Client(topics[i % TOPICS], HEAD - BACK[(i // TOPICS) % len(BACK)]) for i in range(CLIENTS)
    ]
    probes = [Client(topics[0], HEAD - BACK[0], f"{label}-{k}") for k in range(PROBES)]

    async def main() -> None:
        port = server.port
        runs = [_run(port, history, c, i * SPREAD / CLIENTS) for i, c in enumerate(clients)]
        runs += [_run(port, history, p, (k + 0.5) * SPREAD / PROBES) for k, p in enumerate(probes)]
        try:
            await asyncio.wait_for(asyncio.gather(*runs), WAIT)
        finally:
            for client in clients + probes:
                client.close()
            await asyncio.sleep(0)

    asyncio.run(main())
    return clients, probes


def idle_probes(server: LiveServer, history: History) -> list[Client]:
    topic = next(iter(history.texts))
    probes = [Client(topic, HEAD - BACK[0], f"idle-{k}") for k in range(PROBES)]

    async def main() -> None:
        for probe in probes:  # one after the other: the server has nothing else to do
            try:
                await asyncio.wait_for(_run(server.port, history, probe, 0), WAIT)
            finally:
                probe.close()

    asyncio.run(main())
    return probes


def check_complete(clients: list[Client]) -> None:
    """Every client got exactly the events after its id, in order, once."""
    wrong = [
        (c.topic, c.after, c.received[:3], len(c.received))
        for c in clients
        if not c.done or c.received != list(range(c.after + 1, HEAD + 1))
    ]
    assert not wrong, f"{len(wrong)} of {len(clients)} clients: {wrong[:5]}"


def test_a_reconnect_storm_shares_history_reads_serves_everyone_and_returns_memory(
    live_server_factory: Any, figure: Any, history: History, _open_files_limit: int
) -> None:
    assert _open_files_limit >= 2 * CLIENTS + 200, _open_files_limit
    server: LiveServer = live_server_factory("uvicorn", env=history.env)
    with showing_logs(server, tail=60):
        started = time.monotonic()
        warm, _ = storm(server, history, "warm")
        check_complete(warm)
        figure(f"warm-up storm: {CLIENTS} clients served in {time.monotonic() - started:.1f} s")
        settle_idle(server)

        idle = idle_probes(server, history)
        check_complete(idle)
        settle_idle(server)
        baseline = settled_rss(server.pid)
        connections = history.connections()
        idle_report = get_json(server, "/storm/report/?gc=1&reset=1")
        objects = idle_report["gc_objects"]
        keys = len({(c.topic, c.after) for c in warm})

        started, cpu, reads = time.monotonic(), cpu_seconds(server.pid), history.reads(server)
        clients, probes = storm(server, history, "storm")
        took, cpu = time.monotonic() - started, cpu_seconds(server.pid) - cpu
        reads = history.reads(server) - reads
        report = get_json(server, "/storm/report/")
        rss_peak = rss_mb(server.pid)
        check_complete(clients + probes)
        settle_idle(server)
        after = settled_rss(server.pid)
        objects_after = get_json(server, "/storm/report/?gc=1")["gc_objects"]
        connections_after = history.connections()

    idle_first = statistics.median(idle_report["first_event"][p.probe] for p in idle if p.probe)
    storm_first = statistics.median(report["first_event"][p.probe] for p in probes if p.probe)
    client_idle = statistics.median(p.first_at - p.connected_at for p in idle if p.first_at)
    client_storm = statistics.median(p.first_at - p.connected_at for p in probes if p.first_at)
    what = "history SELECTs" if history.redis is None else "XRANGE calls"
    figure(
        f"{history.backend} storm: {CLIENTS} clients in {SPREAD:.0f} s, {keys} (topic, "
        f"position) pairs, all served in {took:.1f} s (server CPU {cpu:.1f} s); {reads} {what}"
        + (f"; reader SQL {report['queries']}" if history.redis is None else "")
    )
    figure(
        f"first event of a new client, in the server: idle {idle_first * 1000:.1f} ms, storm "
        f"{storm_first * 1000:.1f} ms (x{storm_first / idle_first:.2f}); at the client: idle "
        f"{client_idle * 1000:.1f} ms, storm {client_storm * 1000:.1f} ms"
    )
    for measured, report_of in ((idle, idle_report), (probes, report)):
        for probe in measured:  # ms since the view started: "?" asked, "!" answered
            steps = report_of["steps"][probe.probe]
            figure(f"{probe.probe}: " + ", ".join(f"{what} {ms:.1f}" for what, ms in steps))
    assert reads <= READS_PER_KEY * keys, (reads, report["queries"])
    # Not starved: every probe's first event came while the storm was still being served.
    storm_end = max(c.done_at for c in clients)
    assert all(p.first_at is not None and p.first_at < storm_end for p in probes)
    # About as fast as on the idle server (the median: one probe may lose the CPU for a
    # switch interval to another thread or process of this 2-core machine).
    assert storm_first <= FIRST_EVENT_RATIO * idle_first, (storm_first, idle_first)
    figure(
        f"RSS baseline {baseline:.1f} MB, peak {rss_peak:.1f} MB, after {after:.1f} MB "
        f"({(after / baseline - 1) * 100:+.1f}%); Python objects {objects} -> {objects_after}"
        f"{connections}{connections_after and ' ->'}{connections_after.removeprefix(',')}"
    )
    assert after <= baseline * (1 + RSS_TOLERANCE)
    assert abs(objects_after - objects) <= OBJECTS_TOLERANCE
