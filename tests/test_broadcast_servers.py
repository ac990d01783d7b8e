"""Broadcast on real servers with the ``memory`` backend: uvicorn, gunicorn (gthread), daphne.

One process per server (the memory backend is one process's), so events are published by
a view of that same server (``/broadcast/publish/<topic>/``) and read by real clients
(httpx, a raw socket) from its async and sync subscriber views. What a user relies on:
every subscriber gets exactly its topics' events, once, in order; a reconnect with its
last id (header or ``?lastEventId=``) resumes with nothing missed and nothing repeated;
the heartbeat keeps flowing while nothing is published; and a client that goes away
leaves no subscriber behind in the server (``/broadcast/state/``).
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from django_flosse.broadcasting import RESET_EVENT
from django_flosse.events import KEEPALIVE
from django_flosse.testing import Event
from django_flosse.testing._parse import _Parser
from tests.support.observe import showing_logs, wait_until
from tests.support.servers import LiveServer, ServerPool
from tests.support.wire import get_json, raw_open, raw_read_until, rst_close

pytestmark = [pytest.mark.server, pytest.mark.django_db(transaction=True)]

SETTINGS = "tests.settings_broadcast_memory"
KINDS = ["uvicorn", "gunicorn", "daphne"]
VIEWS = ["async", "sync"]
#: How long a test waits for something that should happen at once (a loaded machine).
WAIT = 20.0

_names = itertools.count()


@pytest.fixture(scope="module")
def servers(django_db_setup: None) -> Iterator[dict[str, LiveServer]]:
    """One server per kind, started on first use, shared by this module's tests."""
    pool = ServerPool()
    started: dict[str, LiveServer] = {}

    class Started(dict[str, LiveServer]):
        def __missing__(self, kind: str) -> LiveServer:
            # Each open stream holds one gunicorn thread: room for a test's clients.
            extra = {"threads": 24} if kind == "gunicorn" else {}
            server = started[kind] = pool.start(
                kind, env={"DJANGO_SETTINGS_MODULE": SETTINGS}, **extra
            )
            return server

    try:
        yield Started()
    finally:
        client = getattr(_publisher, "client", None)
        if client is not None:
            client.close()
            del _publisher.client
        pool.close()


@pytest.fixture(params=KINDS)
def server(request: pytest.FixtureRequest, servers: dict[str, LiveServer]) -> Iterator[LiveServer]:
    live = servers[request.param]
    with showing_logs(live):
        yield live


def topic(name: str) -> str:
    """A topic no other test of the module uses (the servers are shared)."""
    return f"{name}-{next(_names)}"


class Client:
    """A real SSE client (httpx) reading one stream in a thread of its own.

    It keeps the events a browser would dispatch and every byte received (to count the
    keep-alive comments). ``close()`` ends the connection the way a closed tab does.
    """

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        self.url = url
        self.headers = {"Accept": "text/event-stream", **(headers or {})}
        self.events: queue.Queue[Event] = queue.Queue()
        self.raw = bytearray()
        self.status: int | None = None
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        parser = _Parser()
        try:
            with (
                httpx.Client(timeout=httpx.Timeout(10.0, read=30.0)) as client,
                client.stream("GET", self.url, headers=self.headers) as response,
            ):
                self.status = response.status_code
                for chunk in response.iter_bytes():
                    self.raw += chunk
                    for event in parser.feed(chunk):
                        self.events.put(event)
                    if self._stop.is_set():  # a heartbeat a second: it notices soon
                        return
        except Exception as exc:  # the test reads it
            self.error = exc

    def take(self, count: int) -> list[Event]:
        got = []
        for _ in range(count):
            try:
                got.append(self.events.get(timeout=WAIT))
            except queue.Empty:
                raise AssertionError(
                    f"{self.url}: got {[e.data for e in got]} of {count} (error {self.error!r}, "
                    f"received {bytes(self.raw[-500:])!r})"
                ) from None
        return got

    def take_until(self, data: str, limit: int = 1000) -> list[Event]:
        got: list[Event] = []
        for _ in range(limit):
            got += self.take(1)
            if got[-1].data == data and got[-1].event != RESET_EVENT:
                return got
        raise AssertionError(f"no {data!r} in {limit} events")

    def keepalives(self) -> int:
        return bytes(self.raw).count(KEEPALIVE)

    def close(self) -> None:
        self._stop.set()
        self.thread.join(WAIT)
        assert not self.thread.is_alive(), f"{self.url}: the client did not stop"


def subscriber(server: LiveServer, view: str, topics: list[str], **kwargs: Any) -> Client:
    query = kwargs.pop("query", "")
    return Client(f"{server.url}/broadcast/{view}/{','.join(topics)}/{query}", **kwargs)


_publisher = threading.local()


def publish(server: LiveServer, name: str, data: str) -> None:
    """POST ``data`` to the server's publish view (one kept-alive connection per thread)."""
    client = getattr(_publisher, "client", None)
    if client is None:
        client = _publisher.client = httpx.Client(timeout=WAIT)
    response = client.post(f"{server.url}/broadcast/publish/{name}/", content=data)
    assert response.status_code == 200, response.text


def state(server: LiveServer, *topics: str) -> dict[str, Any]:
    result: dict[str, Any] = get_json(server, f"/broadcast/state/?topics={','.join(topics)}")
    return result


def wait_subscribers(server: LiveServer, counts: dict[str, int]) -> None:
    """Until the server's fan-out has exactly ``counts`` subscribers per topic."""
    last: list[Any] = []

    def check() -> bool:
        last[:] = [state(server, *counts)["subscribers"]]
        return bool(last[0] == counts)

    assert wait_until(check, WAIT) is not None, f"subscribers {last} != {counts}"


# --------------------------------------------------------------------------- delivery


def test_every_subscriber_gets_its_topics_once_in_order(server: LiveServer) -> None:
    a, b = topic("a"), topic("b")
    wanted = {
        ("async", (a,)),
        ("sync", (a,)),
        ("async", (a, b)),
        ("sync", (b, a)),
        ("async", (b,)),
        ("sync", (b,)),
    }
    clients = {key: subscriber(server, key[0], list(key[1])) for key in sorted(wanted)}
    try:
        wait_subscribers(server, {a: 4, b: 4})
        seen = state(server)["connections"]
        mine = [c for c in seen if set(c["topics"]) & {a, b}]
        assert sorted(tuple(c["topics"]) for c in mine) == sorted(
            [(a,), (a,), (a, b), (a, b), (b,), (b,)]
        )  # the registry (and so the dashboard) shows each connection's topics, sorted
        published = []
        for i in range(40):
            name = b if i % 3 == 0 else a
            publish(server, name, f"{name}/{i}")
            published.append((name, f"{name}/{i}"))
        for name in (a, b):
            publish(server, name, f"{name}/end")
            published.append((name, f"{name}/end"))
        for (_view, names), client in clients.items():
            expected = [data for name, data in published if name in names]
            got = client.take_until(expected[-1])
            assert [e.data for e in got] == expected, (_view, names)
            assert len({e.id for e in got}) == len(got)
            assert all(e.event == "message" for e in got)
    finally:
        for client in clients.values():
            client.close()
    wait_subscribers(server, {a: 0, b: 0})
    assert not [c for c in state(server)["connections"] if set(c["topics"]) & {a, b}]


# --------------------------------------------------------------------------- resume


@pytest.mark.parametrize("view", VIEWS)
def test_a_reconnect_resumes_without_gap_or_duplicate(server: LiveServer, view: str) -> None:
    name = topic("resume")
    first = subscriber(server, view, [name])
    wait_subscribers(server, {name: 1})
    for i in range(1, 6):
        publish(server, name, str(i))
    events = first.take_until("5")
    first.close()
    assert [e.data for e in events] == ["1", "2", "3", "4", "5"]
    wait_subscribers(server, {name: 0})
    for i in range(6, 9):
        publish(server, name, str(i))  # missed while away
    # The header: everything after the last event seen, then live.
    header = subscriber(server, view, [name], headers={"Last-Event-ID": events[-1].id})
    wait_subscribers(server, {name: 1})
    publish(server, name, "9")
    resumed = header.take_until("9")
    assert [e.data for e in resumed] == ["6", "7", "8", "9"]
    # The query parameter (htmx's extension), from further back.
    query = subscriber(server, view, [name], query=f"?lastEventId={events[1].id}")
    wait_subscribers(server, {name: 2})
    publish(server, name, "10")
    assert [e.data for e in query.take_until("10")] == [str(i) for i in range(3, 11)]
    assert [e.data for e in header.take_until("10")] == ["10"]
    # Both: the header wins.
    both = subscriber(
        server,
        view,
        [name],
        headers={"Last-Event-ID": resumed[-1].id},
        query=f"?lastEventId={events[0].id}",
    )
    # An id the server cannot place: one reset, then only what comes after.
    bogus = subscriber(server, view, [name], headers={"Last-Event-ID": "bogus"})
    wait_subscribers(server, {name: 4})
    publish(server, name, "11")
    assert [e.data for e in both.take_until("11")] == ["10", "11"]
    reset, *after = bogus.take_until("11")
    assert (reset.event, reset.json(), [e.data for e in after]) == (
        RESET_EVENT,
        {"topics": [name]},
        ["11"],
    )
    for client in (header, query, both, bogus):
        client.close()
    wait_subscribers(server, {name: 0})


def test_a_multi_topic_reconnect_resumes_every_topic(server: LiveServer) -> None:
    a, b = topic("ma"), topic("mb")
    first = subscriber(server, "async", [a, b])
    wait_subscribers(server, {a: 1, b: 1})
    for i in range(6):
        publish(server, a if i % 2 else b, f"x{i}")
    events = first.take_until("x5")
    first.close()
    wait_subscribers(server, {a: 0, b: 0})
    publish(server, a, "a-missed")
    publish(server, b, "b-missed")
    again = subscriber(server, "sync", [b, a], headers={"Last-Event-ID": events[2].id})
    wait_subscribers(server, {a: 1, b: 1})
    publish(server, a, "end")
    got = [e.data for e in again.take_until("end")]
    again.close()
    missed_a, missed_b = ["x3", "x5", "a-missed"], ["x4", "b-missed"]
    assert sorted(got[:-1]) == sorted(missed_a + missed_b)
    assert [d for d in got if d in missed_a] == missed_a
    assert [d for d in got if d in missed_b] == missed_b


# --------------------------------------------------------------------------- idle, leave


@pytest.mark.parametrize("view", VIEWS)
def test_the_heartbeat_flows_while_nothing_is_published(server: LiveServer, view: str) -> None:
    name = topic("idle")
    client = subscriber(server, view, [name])
    try:
        wait_subscribers(server, {name: 1})
        assert wait_until(lambda: client.keepalives() >= 2, WAIT) is not None, bytes(client.raw)
        assert client.events.empty()
        publish(server, name, "after a quiet while")
        assert [e.data for e in client.take(1)] == ["after a quiet while"]
        before = client.keepalives()
        assert wait_until(lambda: client.keepalives() > before, WAIT) is not None
    finally:
        client.close()


def test_a_client_that_goes_away_leaves_no_subscriber(server: LiveServer) -> None:
    name = topic("gone")
    polite = [subscriber(server, view, [name]) for view in VIEWS]
    rude = [raw_open(server.port, f"/broadcast/{view}/{name}/") for view in VIEWS]
    wait_subscribers(server, {name: 4})
    publish(server, name, "hello")
    for sock in rude:
        raw_read_until(sock, b"hello", WAIT)
    for client in polite:
        assert [e.data for e in client.take(1)] == ["hello"]
        client.close()  # FIN
    for sock in rude:
        rst_close(sock)  # RST: a crashed tab, a lost network
    wait_subscribers(server, {name: 0})
    assert not [c for c in state(server)["connections"] if name in c["topics"]]
    # The backend is still fine for the next subscriber.
    again = subscriber(server, "sync", [name])
    wait_subscribers(server, {name: 1})
    publish(server, name, "still here")
    assert [e.data for e in again.take(1)] == ["still here"]
    again.close()
    wait_subscribers(server, {name: 0})
