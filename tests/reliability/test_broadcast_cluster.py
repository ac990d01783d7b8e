"""The ``database`` broadcast backend across real processes, on PostgreSQL and on SQLite.

PostgreSQL: two uvicorn processes and a gunicorn (gthread) process on one database (the
throwaway cluster of ``tests/support/postgres.py``), with async and sync subscriber views;
events published from separate Python processes (``tests.support.broadcast_publisher``)
and from ``manage.py flosse_broadcast``. SQLite: the same with two uvicorn processes on the
test database file. Every subscriber must receive exactly its topics' events, once, in the
order the history holds them; a rolled-back ``atomic()`` publishes nothing; a uvicorn
worker killed with SIGKILL mid-stream loses its clients, which reconnect to other servers
with their last id (one with the ``Last-Event-ID`` header, one with ``?lastEventId=``) and
miss nothing and repeat nothing; an id whose events were trimmed gets ``flosse-reset``.

The latency test prints publish-to-receive lags (median, worst) at 100 subscribers on two
processes; it asserts delivery, never a time.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.support.broadcast import WAIT, SSEReader, stamped_stream
from tests.support.observe import wait_until
from tests.support.postgres import postgres_fixture as postgres_fixture  # the "postgres" fixture
from tests.support.servers import REPO_ROOT, LiveServer, ServerPool

pytestmark = [pytest.mark.server, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

SQLITE_SETTINGS = "tests.reliability.settings_broadcast"
PG_SETTINGS = "tests.reliability.settings_broadcast_pg"
RESET = "flosse-reset"


class Cluster:
    """Servers on one database, and the processes that publish to them."""

    def __init__(self, backend: str, postgres: Any, pool: ServerPool) -> None:
        self.backend = backend
        self.postgres = postgres
        self.pool = pool
        settings = PG_SETTINGS if postgres is not None else SQLITE_SETTINGS
        self.env = {**(postgres.env() if postgres is not None else {})}
        self.env["DJANGO_SETTINGS_MODULE"] = settings
        self.kinds = {"u1": "uvicorn", "u2": "uvicorn"}
        if postgres is not None:
            self.kinds["g"] = "gunicorn"
        self._servers: dict[str, LiveServer] = {}

    def server(self, name: str) -> LiveServer:
        """The server ``name`` (started again if a test killed it)."""
        server = self._servers.get(name)
        if server is None or server.returncode is not None:
            server = self._servers[name] = self.pool.start(self.kinds[name], env=self.env)
        return server

    def logs(self) -> str:
        return "\n".join(server.logs()[-3000:] for server in self._servers.values())

    # -- publishing from other processes ------------------------------------------------
    def _spawn(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, *args],
            cwd=REPO_ROOT,
            env={**os.environ, **self.env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def publisher(self, topics: str, count: int, prefix: str, *flags: str) -> Any:
        return self._spawn(
            "-m", "tests.support.broadcast_publisher",
            "--topics", topics, "--count", str(count), "--prefix", prefix, *flags,
        )  # fmt: skip

    def command(self, *args: str) -> Any:
        return self._spawn("-m", "django", "flosse_broadcast", *args)

    def ring(self, topic: str, data: str) -> None:
        """Publish from the first server (its publish view): quick, for warm-ups."""
        url = f"{self.server('u1').url}/broadcast/publish/{topic}/"
        httpx.post(url, content=data, timeout=WAIT).raise_for_status()

    # -- the history ----------------------------------------------------------------------
    def history(self, topic: str) -> list[str]:
        """The data of ``topic``'s events, in position order, read from the table."""
        query = "SELECT body FROM django_flosse_broadcastmessage WHERE topic = %s ORDER BY position"
        if self.postgres is not None:
            import psycopg

            env = self.postgres.env()
            with psycopg.connect(
                host=env["FLOSSE_PG_HOST"],
                port=env["FLOSSE_PG_PORT"],
                dbname=env["FLOSSE_PG_NAME"],
                user=env["FLOSSE_PG_USER"],
            ) as conn:
                rows = conn.execute(query, (topic,)).fetchall()
        else:
            with sqlite3.connect(os.environ["FLOSSE_TEST_DB"]) as conn:
                rows = conn.execute(query.replace("%s", "?"), (topic,)).fetchall()
            conn.close()
        return [_data(body) for (body,) in rows]


def _data(body: str) -> str:
    return "\n".join(line[6:] for line in body.split("\n") if line.startswith("data: "))


def _finish(process: subprocess.Popen[str]) -> str:
    out, err = process.communicate(timeout=WAIT * 2)
    assert process.returncode == 0, err
    return out


@pytest.fixture(scope="module")
def clusters(django_db_setup: None) -> Iterator[tuple[ServerPool, dict[str, Cluster]]]:
    """The servers of the module: the latency test and the cluster test share them (a
    killed one is started again)."""
    pool = ServerPool()
    try:
        yield pool, {}
    finally:
        pool.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def cluster(
    request: pytest.FixtureRequest, clusters: tuple[ServerPool, dict[str, Cluster]]
) -> Cluster:
    pool, made = clusters
    backend = request.param
    if backend not in made:
        postgres = request.getfixturevalue("postgres") if backend == "postgresql" else None
        made[backend] = Cluster(backend, postgres, pool)
    return made[backend]


def _topics() -> tuple[str, str, str]:
    tag = uuid.uuid4().hex[:8]
    return f"a-{tag}", f"b-{tag}", f"c-{tag}"


def _warm_up(cluster: Cluster, readers: list[SSEReader], topics: list[str]) -> None:
    """Publish "warm" events until every reader got one: all have joined by then."""
    for reader in readers:
        reader.start()
    for reader in readers:
        assert reader.started(), cluster.logs()
        assert reader.status == 200, (reader.url, reader.status, cluster.logs())
    for attempt in range(20):
        for topic in topics:
            cluster.ring(topic, f"warm-{attempt}")
        if wait_until(lambda: all(r.data() for r in readers), 1.0) is not None:
            return
    pytest.fail(f"not every subscriber joined: {[(r.url, r.data()) for r in readers]}")


def _live(reader: SSEReader) -> list[str]:
    return [d for d in reader.data() if not d.startswith("warm-")]


def test_every_subscriber_gets_its_topics_once_in_order_across_processes_and_a_kill(
    cluster: Cluster,
) -> None:
    a, b, c = _topics()
    ab = f"{a},{b}"
    u1, u2 = cluster.server("u1"), cluster.server("u2")
    g = cluster.server("g") if "g" in cluster.kinds else u1  # SQLite: two processes
    readers = {
        "u1 async a": SSEReader(f"{u1.url}/broadcast/async/{a}/"),
        "u1 async ab": SSEReader(f"{u1.url}/broadcast/async/{ab}/"),
        "u2 async ab": SSEReader(f"{u2.url}/broadcast/async/{ab}/"),  # killed: header
        "u2 sync b": SSEReader(f"{u2.url}/broadcast/sync/{b}/"),  # killed: query parameter
        "g sync a": SSEReader(f"{g.url}/broadcast/sync/{a}/"),
        "g sync ab": SSEReader(f"{g.url}/broadcast/sync/{ab}/"),
        "g async b": SSEReader(f"{g.url}/broadcast/async/{b}/"),
    }
    _warm_up(cluster, list(readers.values()), [a, b])

    # Two publishing processes on both topics, the command, a rolled-back transaction,
    # and a third topic filled past its history (for the reset below).
    publishers = [
        cluster.publisher(ab, 40, "p1", "--interval", "0.02"),
        cluster.publisher(f"{b},{a}", 40, "p2", "--interval", "0.02"),
        cluster.publisher(ab, 1, "tx", "--rollback"),
        cluster.publisher(c, 100, "c"),
    ]
    killed = [readers["u2 async ab"], readers["u2 sync b"]]
    # Mid-stream: both of the doomed server's clients have live events, more are coming.
    assert wait_until(lambda: all(len(_live(r)) >= 5 for r in killed), WAIT), cluster.logs()
    u2.send_signal(signal.SIGKILL)
    for reader in killed:
        assert reader.ended.wait(WAIT)
    header, query = killed[0].last_id, killed[1].last_id
    assert header and query
    resumed = {
        "u2 async ab": SSEReader(f"{u1.url}/broadcast/async/{ab}/", {"Last-Event-ID": header}),
        "u2 sync b": SSEReader(f"{g.url}/broadcast/sync/{b}/?lastEventId={query}"),
    }
    for reader in resumed.values():
        reader.start()
    command = cluster.command(a, "from the command", "--event", "note")
    for process in publishers:
        _finish(process)
    assert "Broadcast to" in _finish(command)

    history = {t: [d for d in cluster.history(t) if not d.startswith("warm-")] for t in (a, b)}
    assert len(history[a]) == 41 and len(history[b]) == 40, history
    assert not any("rolled-back" in d for d in history[a] + history[b])
    for prefix in ("p1", "p2"):  # each publisher's own call order is kept within a topic
        for topic in (a, b):
            mine = [d for d in history[topic] if d.startswith(prefix)]
            assert mine == sorted(mine, key=lambda d: int(d.split("-")[1]))
    expected = {
        name: [d for t in (a, b) if t in reader.url.split("/")[-2].split(",") for d in history[t]]
        for name, reader in readers.items()
    }
    ok = wait_until(
        lambda: all(
            len(_received(name, readers, resumed)) >= len(expected[name]) for name in readers
        ),
        WAIT,
    )
    got = {name: _received(name, readers, resumed) for name in readers}
    assert ok is not None, (got, expected, cluster.logs())
    for name in readers:
        topics = readers[name].url.split("/")[-2].split(",")
        for topic in topics:
            mine = [d for d in got[name] if d in history[topic]]
            assert mine == history[topic], (
                name,
                topic,
                readers[name].events,
                resumed[name].events if name in resumed else None,
                history,
            )
        assert len(got[name]) == len(expected[name]), name  # nothing else, nothing twice
    for reader in resumed.values():
        assert RESET not in [e.get("event") for e in reader.events]

    # An id whose events were trimmed: a reset, then what comes after.
    from django_flosse.broadcasting._ids import IdFormat

    old = IdFormat("d", [c], str, int).format({c: 10})
    late = SSEReader(f"{g.url}/broadcast/async/{c}/", {"Last-Event-ID": old})
    late.start()
    assert wait_until(lambda: bool(late.events), WAIT), cluster.logs()
    cluster.ring(c, "after the reset")
    assert wait_until(lambda: len(late.events) >= 2, WAIT), cluster.logs()
    assert [e.get("event") for e in late.events[:2]] == [RESET, None]
    assert late.data()[1] == "after the reset"
    for reader in [*readers.values(), *resumed.values(), late]:
        if reader not in killed:
            reader.leave()


def _received(name: str, readers: dict[str, SSEReader], resumed: dict[str, SSEReader]) -> list[str]:
    events = _live(readers[name])
    if name in resumed:
        events += _live(resumed[name])
    return events


def test_publish_to_receive_latency_at_100_subscribers_on_two_processes(
    cluster: Cluster, figure: Callable[[str], None]
) -> None:
    topic = f"lat-{uuid.uuid4().hex[:8]}"
    servers = [cluster.server("u1"), cluster.server("u2")]
    subscribers, count = 100, 20
    lags: list[float] = []
    joined: list[bool] = []

    async def run() -> list[list[str]]:
        readers = [
            asyncio.create_task(
                stamped_stream(
                    servers[i % 2].port, f"/broadcast/async/{topic}/", joined, count, lags, 90
                )
            )
            for i in range(subscribers)
        ]
        for attempt in range(30):  # until every subscriber has joined
            await asyncio.to_thread(cluster.ring, topic, f"warm-{attempt} 0")
            for _ in range(20):
                if len(joined) == subscribers or any(r.done() for r in readers):
                    break
                await asyncio.sleep(0.05)
            if len(joined) == subscribers or any(r.done() for r in readers):
                break
        assert len(joined) == subscribers, f"{len(joined)} of {subscribers} joined"
        publisher = cluster.publisher(topic, count, "m", "--stamp", "--interval", "0.1")
        try:
            return await asyncio.gather(*readers)
        finally:
            await asyncio.to_thread(_finish, publisher)

    received = asyncio.run(run())
    assert all(names == [f"m-{i}" for i in range(count)] for names in received)
    lags.sort()
    figure(
        f"{cluster.backend}: publish (another process) to received, {subscribers} async "
        f"subscribers on 2 uvicorn processes, {count} events 0.1 s apart: median "
        f"{statistics.median(lags) * 1000:.1f} ms, p95 {lags[int(len(lags) * 0.95)] * 1000:.1f} "
        f"ms, worst {lags[-1] * 1000:.1f} ms"
    )
