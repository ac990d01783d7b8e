"""The connection registry: one close per connection, snapshots, observers, exact limits.

Pure registry behaviour is checked on private ``Registry()`` instances with the observers of
the settings turned off; what goes through ``@sse_stream`` uses the process registry (the one
the decorator uses), reset before every test.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import structlog
from asgiref.sync import sync_to_async
from django.contrib.auth.models import User
from django.http import HttpResponseBase
from django.test import AsyncClient, Client, RequestFactory, override_settings

from django_flosse import reasons
from django_flosse.observing._dashboard import watcher
from django_flosse.observing._history import writer
from django_flosse.observing.registry import Connection, Registry, StreamTotals, registry
from django_flosse.streaming._response import SSEResponse
from django_flosse.testing import collect_events
from tests import views
from tests.support.responses import close_response

#: Threads / tasks started at once, and the limit they race for.
CONCURRENT = 200
LIMIT = 50
#: Bound on waiting for all threads of one race (a noisy 2-core machine).
RACE_TIMEOUT = 60.0


class Recorder:
    """An observer that writes down every notification (safe from many threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: list[tuple[str, ...]] = []
        self.closed: list[Connection] = []

    def _add(self, call: tuple[str, ...]) -> None:
        with self._lock:
            self.calls.append(call)

    def connection_opened(self, connection: Connection) -> None:
        self._add(("opened", connection.stream, connection.id))

    def connection_closed(self, connection: Connection) -> None:
        with self._lock:
            self.closed.append(connection)
        self._add(("closed", connection.stream, connection.id, connection.close_reason or ""))

    def connection_rejected(self, stream: str, reason: str) -> None:
        self._add(("rejected", stream, reason))

    def kinds(self) -> list[str]:
        return [call[0] for call in self.calls]


class Exploding:
    """An observer whose every method raises."""

    def connection_opened(self, connection: Connection) -> None:
        raise RuntimeError("observer bug on open")

    def connection_closed(self, connection: Connection) -> None:
        raise RuntimeError("observer bug on close")

    def connection_rejected(self, stream: str, reason: str) -> None:
        raise RuntimeError("observer bug on reject")


def new_connection(stream: str = "reg.unit", user_id: str | None = None) -> Connection:
    return Connection(id=uuid.uuid4().hex, stream=stream, user_id=user_id)


def race(count: int, work: Callable[[int], Any]) -> list[Any]:
    """Run ``work(i)`` for ``i`` in ``range(count)`` on ``count`` threads released at once."""
    barrier = threading.Barrier(count, timeout=RACE_TIMEOUT)

    def run(i: int) -> Any:
        barrier.wait()
        return work(i)

    with ThreadPoolExecutor(max_workers=count) as pool:
        futures = [pool.submit(run, i) for i in range(count)]
        return [future.result(timeout=RACE_TIMEOUT) for future in futures]


no_settings_observers = override_settings(FLOSSE={"OBSERVERS": []})


# ------------------------------------------------------------------ open / close


@no_settings_observers
def test_close_counts_once_with_the_first_reason() -> None:
    reg = Registry()
    connection = new_connection()
    assert reg.open(connection) is None
    assert connection.is_open

    assert reg.close(connection, reasons.COMPLETED) is True
    assert reg.close(connection, reasons.ERROR) is False  # too late: already closed
    assert reg.close(connection, reasons.COMPLETED) is False

    assert connection.close_reason == "completed"
    assert not connection.is_open
    assert connection.closed_at is not None and connection.closed_at >= connection.opened_at
    totals = reg.totals()["reg.unit"]
    assert (totals.active, totals.opened) == (0, 1)
    assert totals.closed == Counter({"completed": 1})
    assert reg.live() == []


@no_settings_observers
def test_on_close_callbacks_run_once_at_the_close_and_cost_nothing_until_added() -> None:
    """A connection that never subscribes keeps no list for them (56 bytes each)."""
    reg = Registry()
    quiet, subscribed = new_connection(), new_connection()
    calls: list[str] = []
    subscribed.on_close.append(lambda: calls.append("first"))
    subscribed.on_close.append(lambda: calls.append("second"))
    for connection in (quiet, subscribed):
        assert reg.open(connection) is None
    assert subscribed.snapshot().close_callbacks() == ()  # a copy calls nothing
    for connection in (quiet, subscribed):
        assert reg.close(connection, reasons.COMPLETED) is True
        reg.close(connection, reasons.COMPLETED)  # counts nothing, calls nothing
    assert calls == ["first", "second"]
    assert quiet.close_callbacks() == ()
    assert quiet._on_close is None  # nothing asked for the list: none was made


@no_settings_observers
def test_unknown_close_reason_raises_and_leaves_the_connection_open() -> None:
    reg = Registry()
    connection = new_connection()
    reg.open(connection)

    with pytest.raises(ValueError, match="unknown close reason 'finished'"):
        reg.close(connection, "finished")

    assert connection.is_open and connection.close_reason is None
    assert reg.totals()["reg.unit"].active == 1
    assert reg.close(connection, reasons.CANCELLED) is True


@no_settings_observers
@pytest.mark.parametrize("reason", reasons.CLOSE_REASONS)
def test_every_documented_reason_is_accepted(reason: str) -> None:
    reg = Registry()
    connection = new_connection()
    reg.open(connection)
    assert reg.close(connection, reason) is True
    assert reg.totals()["reg.unit"].closed == Counter({reason: 1})


@no_settings_observers
def test_closing_a_connection_that_was_never_admitted_counts_nothing() -> None:
    reg = Registry()
    held = new_connection()
    assert reg.open(held, max_connections=1) is None
    refused = new_connection()
    assert reg.open(refused, max_connections=1) == "stream_limit"

    assert reg.close(refused, reasons.CANCELLED) is False
    assert reg.close(new_connection(), reasons.CANCELLED) is False  # never opened at all
    totals = reg.totals()["reg.unit"]
    assert (totals.active, totals.opened, sum(totals.closed.values())) == (1, 1, 0)
    assert totals.rejected == Counter({"stream_limit": 1})
    reg.close(held, reasons.COMPLETED)


def test_streams_through_the_decorator_close_exactly_once_each(client: Client) -> None:
    recorder = Recorder()
    registry.subscribe(recorder)

    assert len(collect_events(client.get("/obs/count/?n=2"), max_events=10)) == 2
    assert len(collect_events(client.get("/obs/fails/"), max_events=10)) == 2  # + error frame
    assert len(collect_events(client.get("/obs/async-endless/"), max_events=3)) == 3  # we leave

    closes = [call for call in recorder.calls if call[0] == "closed"]
    opens = [call for call in recorder.calls if call[0] == "opened"]
    assert [call[1] for call in opens] == ["obs.count", "obs.fails", "obs.async_endless"]
    assert sorted(call[2] for call in closes) == sorted(call[2] for call in opens)
    assert [(call[1], call[3]) for call in closes] == [
        ("obs.count", "completed"),
        ("obs.fails", "error"),
        ("obs.async_endless", "cancelled"),
    ]
    assert registry.live() == []


def test_leaving_a_sync_stream_raises_nothing_in_its_producer_thread(client: Client) -> None:
    """Package bug (bridge.ThreadedSource): the consumer's cancelled waiter stays set, so
    the producer thread, stopping after the private event loop was closed, calls
    ``loop.call_soon_threadsafe`` on a closed loop: "RuntimeError: Event loop is closed" in
    thread flosse-sync-stream (WSGI servers and the test client)."""
    errors: list[str] = []
    before = set(threading.enumerate())
    previous_hook = threading.excepthook
    threading.excepthook = lambda args: errors.append(f"{args.exc_type.__name__}: {args.exc_value}")
    try:
        assert len(collect_events(client.get("/obs/endless/"), max_events=3)) == 3
        producers = [
            t for t in set(threading.enumerate()) - before if t.name == "flosse-sync-stream"
        ]
        for thread in producers:
            thread.join(timeout=5)
            assert not thread.is_alive(), "the producer thread did not stop within 5 s"
    finally:
        threading.excepthook = previous_hook
    assert errors == []
    assert registry.totals()["obs.endless"].closed == Counter({"cancelled": 1})


# ---------------------------------------------------------------- snapshots, totals


@no_settings_observers
def test_live_returns_snapshots_that_do_not_change() -> None:
    reg = Registry()
    first, second = new_connection("reg.a"), new_connection("reg.b")
    reg.open(first)
    reg.open(second)
    first.events_sent, first.bytes_sent = 3, 30

    snapshots = reg.live()
    assert [c.id for c in snapshots] == [first.id, second.id]  # oldest first
    snapshot = snapshots[0]
    assert snapshot is not first
    assert (snapshot.events_sent, snapshot.bytes_sent) == (3, 30)

    first.events_sent, first.bytes_sent = 5, 50  # the stream goes on
    assert (snapshot.events_sent, snapshot.bytes_sent) == (3, 30)
    snapshot.events_sent = 999  # and a reader's copy never writes back
    assert reg.get(first.id) is first and first.events_sent == 5

    assert [c.id for c in reg.live("reg.b")] == [second.id]
    reg.close(first, reasons.COMPLETED)
    assert snapshot.is_open and snapshot.close_reason is None
    assert [c.id for c in reg.live()] == [second.id]
    assert reg.get(first.id) is None
    reg.close(second, reasons.COMPLETED)


@no_settings_observers
def test_totals_are_copies_and_include_live_counters_once() -> None:
    reg = Registry()
    done, running = new_connection(), new_connection()
    reg.open(done)
    reg.open(running)
    done.events_sent, done.bytes_sent = 2, 20
    running.events_sent, running.bytes_sent = 1, 10

    before = reg.totals()["reg.unit"]
    assert isinstance(before, StreamTotals)
    assert (before.active, before.opened, before.events_sent, before.bytes_sent) == (2, 2, 3, 30)

    reg.close(done, reasons.COMPLETED)
    reg.open(new_connection(), max_connections=1)  # refused: 1 still running
    running.events_sent, running.bytes_sent = 4, 40

    # The earlier copy did not move.
    assert (before.active, before.events_sent, before.bytes_sent) == (2, 3, 30)
    assert before.closed == Counter() and before.rejected == Counter()
    before.closed["completed"] += 100  # nor does writing to a copy reach the registry

    after = reg.totals()["reg.unit"]
    assert (after.active, after.opened, after.events_sent, after.bytes_sent) == (1, 2, 6, 60)
    assert after.closed == Counter({"completed": 1})
    assert after.rejected == Counter({"stream_limit": 1})

    reg.close(running, reasons.CANCELLED)
    final = reg.totals()["reg.unit"]
    assert (final.active, final.events_sent, final.bytes_sent) == (0, 6, 60)  # not doubled


@no_settings_observers
def test_stop_asks_live_connections_once() -> None:
    reg = Registry()
    connection = new_connection()
    reg.open(connection)
    assert reg.stop([connection.id, "no-such-id"], reasons.TERMINATED) == 1
    assert reg.stop([connection.id], reasons.SHUTDOWN) == 0  # already asked
    assert connection.stop_reason == "terminated"
    reg.close(connection, reasons.TERMINATED)
    assert reg.stop([connection.id], reasons.TERMINATED) == 0


# ----------------------------------------------------------------------- observers


def _exercise_observers(client: Client) -> None:
    """One completed stream, one forbidden request, one request over a limit."""
    assert len(collect_events(client.get("/obs/count/?n=2"), max_events=10)) == 2
    assert client.get("/obs/forbidden/").status_code == 403
    held = new_connection("obs.limited_sync")
    assert registry.open(held, max_connections=1) is None
    try:
        assert [registry.open(new_connection("obs.limited_sync"), max_connections=1)] == [
            "stream_limit"
        ]
    finally:
        registry.close(held, reasons.CANCELLED)


def _assert_saw_everything(recorder: Recorder) -> None:
    assert recorder.kinds() == [
        "opened",
        "closed",
        "rejected",
        "opened",
        "rejected",
        "closed",
    ]
    assert recorder.calls[0][:2] == ("opened", "obs.count")
    assert recorder.calls[1][:2] == ("closed", "obs.count")
    assert recorder.calls[1][2] == recorder.calls[0][2]  # the same connection id
    assert recorder.calls[1][3] == "completed"
    assert recorder.calls[2] == ("rejected", "obs.forbidden", "forbidden")
    assert recorder.calls[4] == ("rejected", "obs.limited_sync", "stream_limit")
    assert recorder.calls[5][3] == "cancelled"
    # Observers see the connection closed and its final counters.
    stream = recorder.closed[0]
    assert stream.close_reason == "completed" and not stream.is_open
    assert stream.events_sent == 2 and stream.bytes_sent > 0


def test_subscribed_observer_is_notified_of_open_close_and_reject(client: Client) -> None:
    recorder = Recorder()
    registry.subscribe(recorder)
    registry.subscribe(recorder)  # subscribing twice does not notify twice
    _exercise_observers(client)
    _assert_saw_everything(recorder)

    registry.unsubscribe(recorder)
    assert len(collect_events(client.get("/obs/count/?n=1"), max_events=10)) == 1
    assert len(recorder.calls) == 6


def configured_observers() -> list[Any]:
    """The observers wired from FLOSSE["OBSERVERS"] (the app's own two left out)."""
    return [o for o in registry.observers() if o is not watcher and o is not writer]


def test_observer_from_settings_is_notified(client: Client) -> None:
    recorder = Recorder()
    with override_settings(FLOSSE={"OBSERVERS": [recorder]}):
        assert configured_observers() == [recorder]
        _exercise_observers(client)
    _assert_saw_everything(recorder)


def test_observer_class_path_from_settings_is_instantiated() -> None:
    with override_settings(FLOSSE={"OBSERVERS": ["tests.test_registry.Recorder"]}):
        (observer,) = configured_observers()
        assert isinstance(observer, Recorder)
        connection = new_connection()
        registry.open(connection)
        registry.close(connection, reasons.COMPLETED)
        assert observer.kinds() == ["opened", "closed"]


def test_raising_observer_is_logged_and_never_breaks_the_stream(client: Client) -> None:
    recorder = Recorder()
    registry.subscribe(Exploding())
    registry.subscribe(recorder)  # notified after the one that raised

    with structlog.testing.capture_logs() as logs:
        events = collect_events(client.get("/obs/count/?n=3"), max_events=10)
        assert client.get("/obs/forbidden/").status_code == 403

    assert [event.json() for event in events] == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert recorder.kinds() == ["opened", "closed", "rejected"]
    assert recorder.closed[0].close_reason == "completed"
    errors = [entry for entry in logs if entry["event"] == "sse.observer.error"]
    assert [entry["method"] for entry in errors] == [
        "connection_opened",
        "connection_closed",
        "connection_rejected",
    ]
    for entry in errors:
        assert entry["log_level"] == "error"
        assert entry["exc_info"] is True  # logged with the traceback
        assert "Exploding" in entry["observer"]
    totals = registry.totals()
    assert totals["obs.count"].closed == Counter({"completed": 1})
    assert totals["obs.forbidden"].rejected == Counter({"forbidden": 1})


# ------------------------------------------------------------ limits under threads


@no_settings_observers
def test_stream_limit_is_exact_with_200_threads() -> None:
    reg = Registry()
    connections = [new_connection("reg.race") for _ in range(CONCURRENT)]

    outcomes = race(CONCURRENT, lambda i: reg.open(connections[i], max_connections=LIMIT))

    assert Counter(outcomes) == Counter({None: LIMIT, "stream_limit": CONCURRENT - LIMIT})
    totals = reg.totals()["reg.race"]
    assert (totals.active, totals.opened) == (LIMIT, LIMIT)
    assert totals.rejected == Counter({"stream_limit": CONCURRENT - LIMIT})
    assert len(reg.live("reg.race")) == LIMIT

    # Closing them all at once from 200 threads (half of them not admitted) is exact too.
    closed = race(CONCURRENT, lambda i: reg.close(connections[i], reasons.CANCELLED))
    assert closed.count(True) == LIMIT
    totals = reg.totals()["reg.race"]
    assert totals.active == 0 and totals.closed == Counter({"cancelled": LIMIT})


@no_settings_observers
def test_user_limit_is_exact_with_200_threads() -> None:
    reg = Registry()
    users = ["1", "2", "3", "4"]
    per_user = 10
    connections = [new_connection("reg.race", users[i % 4]) for i in range(CONCURRENT)]

    outcomes = race(
        CONCURRENT, lambda i: reg.open(connections[i], max_connections_per_user=per_user)
    )

    admitted = Counter(
        c.user_id for c, outcome in zip(connections, outcomes, strict=True) if outcome is None
    )
    assert admitted == Counter(dict.fromkeys(users, per_user))
    assert outcomes.count("user_limit") == CONCURRENT - 4 * per_user
    assert reg.totals()["reg.race"].active == 4 * per_user

    # A user's closed connection frees exactly one place for that user only.
    first_admitted = next(c for c, o in zip(connections, outcomes, strict=True) if o is None)
    reg.close(first_admitted, reasons.COMPLETED)
    again = new_connection("reg.race", first_admitted.user_id)
    other = new_connection("reg.race", "2" if first_admitted.user_id != "2" else "3")
    assert reg.open(other, max_connections_per_user=per_user) == "user_limit"
    assert reg.open(again, max_connections_per_user=per_user) is None
    assert reg.open(new_connection("reg.race", None), max_connections_per_user=1) is None


@no_settings_observers
def test_both_limits_together_under_threads() -> None:
    reg = Registry()
    # 200 threads, 2 users, 40 per user, 50 per stream: the stream limit wins first.
    connections = [new_connection("reg.race", str(i % 2)) for i in range(CONCURRENT)]
    outcomes = race(
        CONCURRENT,
        lambda i: reg.open(connections[i], max_connections=LIMIT, max_connections_per_user=40),
    )
    admitted = Counter(c.user_id for c, o in zip(connections, outcomes, strict=True) if o is None)
    assert sum(admitted.values()) == LIMIT
    assert max(admitted.values()) <= 40
    assert outcomes.count(None) == LIMIT


def _refusals(responses: list[HttpResponseBase]) -> Counter[int]:
    return Counter(r.status_code for r in responses if not isinstance(r, SSEResponse))


def test_sync_decorator_admits_exactly_the_limit_with_200_threads(rf: RequestFactory) -> None:
    requests = [rf.get("/obs/limited-sync/") for _ in range(CONCURRENT)]

    responses = race(CONCURRENT, lambda i: views.obs_limited_sync(requests[i]))
    try:
        admitted = [r for r in responses if isinstance(r, SSEResponse)]
        assert len(admitted) == LIMIT
        assert _refusals(responses) == Counter({503: CONCURRENT - LIMIT})
        assert {r["Retry-After"] for r in responses if r.status_code == 503} == {"5"}
        assert registry.totals()["obs.limited_sync"].active == LIMIT
    finally:
        for response in responses:
            close_response(response)
    totals = registry.totals()["obs.limited_sync"]
    assert totals.active == 0
    assert totals.closed == Counter({"cancelled": LIMIT})  # closed before they streamed
    assert totals.rejected == Counter({"stream_limit": CONCURRENT - LIMIT})


def test_sync_decorator_per_user_limit_with_200_threads(rf: RequestFactory) -> None:
    users = [User(pk=pk, username=f"user{pk}") for pk in range(1, 5)]
    requests = []
    for i in range(CONCURRENT):
        request = rf.get("/obs/per-user/")
        request.user = users[i % 4]
        requests.append(request)

    responses = race(CONCURRENT, lambda i: views.obs_per_user(requests[i]))
    try:
        admitted = [r for r in responses if isinstance(r, SSEResponse)]
        assert sorted(r.stream.connection.user_id for r in admitted) == ["1", "2", "3", "4"]
        assert _refusals(responses) == Counter({429: CONCURRENT - 4})
        assert all(r["Retry-After"] == "5" for r in responses if r.status_code == 429)
    finally:
        for response in responses:
            close_response(response)
    assert registry.totals()["obs.per_user"].rejected == Counter({"user_limit": CONCURRENT - 4})


@override_settings(FLOSSE={"LIMIT_RETRY_AFTER": 17})
def test_retry_after_comes_from_the_settings(rf: RequestFactory) -> None:
    held = views.obs_limited_sync(rf.get("/"))
    responses = [views.obs_limited_sync(rf.get("/")) for _ in range(LIMIT)]
    try:
        refused = responses[-1]
        assert refused.status_code == 503
        assert refused["Retry-After"] == "17"
    finally:
        for response in [held, *responses]:
            close_response(response)


# ------------------------------------------------------------- limits under asyncio


async def _close_all(responses: list[HttpResponseBase]) -> None:
    # close() fires request_finished, whose receivers are sync code.
    await sync_to_async(lambda: [close_response(response) for response in responses])()


async def test_async_decorator_admits_exactly_the_limit_with_200_tasks(
    rf: RequestFactory,
) -> None:
    async def one() -> HttpResponseBase:
        await asyncio.sleep(0)  # all tasks started before the first one gets going
        return await views.obs_limited_async(rf.get("/obs/limited-async/"))

    responses = await asyncio.wait_for(
        asyncio.gather(*(one() for _ in range(CONCURRENT))), RACE_TIMEOUT
    )
    try:
        assert sum(isinstance(r, SSEResponse) for r in responses) == LIMIT
        assert _refusals(responses) == Counter({503: CONCURRENT - LIMIT})
        assert {r["Retry-After"] for r in responses if r.status_code == 503} == {"5"}
    finally:
        await _close_all(responses)
    totals = registry.totals()["obs.limited_async"]
    assert (totals.active, totals.opened) == (0, LIMIT)
    assert totals.rejected == Counter({"stream_limit": CONCURRENT - LIMIT})


async def test_async_client_200_concurrent_requests_admit_exactly_the_limit() -> None:
    """Through the whole request path (middleware, handler) with 200 requests in flight."""
    client = AsyncClient()
    responses = await asyncio.wait_for(
        asyncio.gather(*(client.get("/obs/limited-async/") for _ in range(CONCURRENT))),
        RACE_TIMEOUT,
    )
    try:
        statuses = Counter(r.status_code for r in responses)
        assert statuses == Counter({200: LIMIT, 503: CONCURRENT - LIMIT})
        assert all(r["Retry-After"] == "5" for r in responses if r.status_code == 503)
        assert registry.totals()["obs.limited_async"].active == LIMIT
    finally:
        await _close_all(responses)
    totals = registry.totals()["obs.limited_async"]
    assert totals.active == 0
    assert totals.closed == Counter({"cancelled": LIMIT})

    # The places are free again.
    response = await client.get("/obs/limited-async/")
    assert response.status_code == 200
    await _close_all([response])
