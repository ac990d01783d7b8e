"""Broadcast observability: metrics, history rows, logs, the memory-backend warning and the
admin dashboard's topics panel and column.

Metrics are differences of this process's samples before and after (the registry lives for
the whole session); streams are this file's own subscriptions to the test views
``tests.broadcast_async`` / ``tests.broadcast_sync`` on the ``memory`` backend, with topics
no other test uses (``bcobs-*``).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from django.db import connection as db_connection
from django.test import Client, RequestFactory, override_settings
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from structlog.testing import capture_logs

from django_flosse import broadcast
from django_flosse.broadcasting.backends.base import Backend
from django_flosse.broadcasting.backends.memory import MemoryBackend
from django_flosse.models import BroadcastMessage, BroadcastTopic, StreamConnection
from django_flosse.observing import _dashboard as dashboard
from django_flosse.observing import _history
from django_flosse.observing._rows import TOPICS_MAX_LENGTH, row_topics
from django_flosse.observing.log import BROADCAST_ONE_PROCESS, CONNECTION_CLOSED, LogObserver
from django_flosse.observing.metrics import MetricsObserver, recent_lags
from django_flosse.observing.registry import (
    MAX_PENDING_LAGS,
    Connection,
    current_process,
    registry,
)
from django_flosse.observing.wiring import _built
from django_flosse.testing import collect_events, parse_events
from tests import views
from tests.support.history import HISTORY_SETTINGS, open_connection, row
from tests.support.observe import sample

BACKEND = {"BROADCAST_BACKEND": "memory"}
MEMORY = {"PERSISTENCE": False, **BACKEND}  # FLOSSE is replaced whole: as tests.settings
STREAM = "tests.broadcast_async"
OTHER_A = "bcobs-a.example:101"  # other processes: their rows come from the table
OTHER_B = "bcobs-b.example:202"
READ_TIMEOUT = 10.0

NAMES = (
    "flosse_broadcast_delivered_total",
    "flosse_broadcast_replayed_total",
    "flosse_broadcast_resets_total",
    "flosse_broadcast_lag_seconds_count",
)


def _samples(stream: str = STREAM) -> dict[str, float]:
    return {name: sample(name, stream=stream) for name in NAMES}


def _changes(before: dict[str, float], stream: str = STREAM) -> dict[str, float]:
    after = _samples(stream)
    return {name.removeprefix("flosse_broadcast_"): after[name] - before[name] for name in NAMES}


def _metrics_observer() -> MetricsObserver:
    observer = _built[MetricsObserver]
    assert isinstance(observer, MetricsObserver)
    return observer


@pytest.fixture
def memory_backend() -> Iterator[None]:
    with override_settings(FLOSSE=MEMORY):
        yield


class _Stream:
    """An in-process subscription stream of the async test view, read event by event."""

    def __init__(self, frames: AsyncIterator[bytes]) -> None:
        self.frames = frames
        self.buffer = b""
        self.seen = 0

    @classmethod
    async def open(cls, rf: RequestFactory, topics: str, last_id: str = "") -> _Stream:
        headers = {"Last-Event-ID": last_id} if last_id else {}
        request = rf.get(f"/broadcast/async/{topics}/", headers=headers)
        response = await views.broadcast_async(request, topics=topics)
        return cls(response.streaming_content)  # type: ignore[attr-defined]

    async def events(self, count: int) -> list[Any]:
        """The next ``count`` events (keep-alive comments skipped), bounded in time."""
        deadline = time.monotonic() + READ_TIMEOUT
        while len(parse_events(self.buffer)) < self.seen + count:
            left = deadline - time.monotonic()
            assert left > 0, f"no {count} events: {self.buffer[-500:]!r}"
            self.buffer += await asyncio.wait_for(anext(self.frames), left)
        events = parse_events(self.buffer)[self.seen : self.seen + count]
        self.seen += count
        return events

    async def close(self) -> None:
        await self.frames.aclose()  # type: ignore[attr-defined]


async def _until_subscribed(topic: str, count: int = 1) -> None:
    """Wait until ``count`` subscribers of this process have joined ``topic``."""
    from django_flosse.broadcasting.backends import get_backend

    backend = get_backend()
    assert isinstance(backend, MemoryBackend)
    deadline = time.monotonic() + READ_TIMEOUT
    while backend.subscribers(topic) < count:
        assert time.monotonic() < deadline, f"nobody joined {topic}"
        await asyncio.sleep(0.01)


# ----------------------------------------------------------------------------- metrics
async def test_live_replayed_and_reset_deliveries_are_counted(
    rf: RequestFactory, memory_backend: None
) -> None:
    topic = f"bcobs-m-{uuid.uuid4().hex[:8]}"
    before = _samples()
    lags_before = sample("flosse_broadcast_lag_seconds_sum", stream=STREAM)

    first = await _Stream.open(rf, topic)
    first_events = asyncio.ensure_future(first.events(2))
    await _until_subscribed(topic)
    broadcast(topic, "one", on_commit=False)
    broadcast(topic, "two", on_commit=False)
    live = await first_events
    assert [e.data for e in live] == ["one", "two"]
    resume_id = live[0].id
    assert resume_id
    await first.close()  # folded at close: nothing waits for the folding thread

    changes = _changes(before)
    assert changes == {"delivered_total": 2, "replayed_total": 0, "resets_total": 0,
                       "lag_seconds_count": 2}  # fmt: skip
    assert sample("flosse_broadcast_lag_seconds_sum", stream=STREAM) >= lags_before

    broadcast(topic, "three", on_commit=False)
    broadcast(topic, "four", on_commit=False)
    second = await _Stream.open(rf, topic, last_id=resume_id)
    replayed = await second.events(3)
    assert [e.data for e in replayed] == ["two", "three", "four"]
    await _until_subscribed(topic)
    broadcast(topic, "five", on_commit=False)
    assert [e.data for e in await second.events(1)] == ["five"]
    await second.close()

    third = await _Stream.open(rf, topic, last_id="made-up")
    (reset,) = await third.events(1)
    assert reset.event == "flosse-reset"
    await third.close()

    assert _changes(before) == {
        "delivered_total": 2 + 4,  # live 1, 2; replayed 2, 3, 4; live 5
        "replayed_total": 3,
        "resets_total": 1,
        "lag_seconds_count": 3,  # live deliveries only
    }


async def test_a_live_subscription_is_folded_while_it_streams(
    rf: RequestFactory, memory_backend: None
) -> None:
    topic = f"bcobs-f-{uuid.uuid4().hex[:8]}"
    before = _samples()
    stream = await _Stream.open(rf, topic)
    try:
        reading = asyncio.ensure_future(stream.events(3))
        await _until_subscribed(topic)
        for n in range(3):
            broadcast(topic, n, on_commit=False)
        await reading
        _metrics_observer().fold()
        assert _changes(before)["delivered_total"] == 3
        assert _changes(before)["lag_seconds_count"] == 3
        _metrics_observer().fold()  # folding again adds nothing
        assert _changes(before)["delivered_total"] == 3
        assert _changes(before)["lag_seconds_count"] == 3
    finally:
        await stream.close()
    assert _changes(before)["delivered_total"] == 3  # nor does the close


def test_lag_samples_appended_during_folds_are_observed_exactly_once() -> None:
    """The subscription appends lags from its own thread while the observer drains them."""
    stream = f"bcobs.race.{uuid.uuid4().hex[:8]}"
    observer = _metrics_observer()
    connection = Connection(id=uuid.uuid4().hex, stream=stream, process=current_process())
    before = sample("flosse_broadcast_lag_seconds_count", stream=stream)
    assert registry.open(connection) is None
    appended = dropped = 0
    done = threading.Event()

    def deliver() -> None:  # what Subscription._live does, as fast as it can
        nonlocal appended, dropped
        lags = connection.broadcast_lags
        for _ in range(200_000):
            lags = connection.broadcast_lags
            if len(lags) < MAX_PENDING_LAGS:
                lags.append(0.001)
                appended += 1
            else:
                dropped += 1
        done.set()

    thread = threading.Thread(target=deliver)
    thread.start()
    folds = 0
    while not done.is_set() and folds < 100_000:
        observer.fold()
        folds += 1
    thread.join(30)
    assert not thread.is_alive()
    registry.close(connection, "completed")  # the last fold
    observed = sample("flosse_broadcast_lag_seconds_count", stream=stream) - before
    assert observed == appended
    assert appended + dropped == 200_000
    assert connection.broadcast_lags == []


def test_recent_lags_keep_a_bounded_window() -> None:
    recent_lags.clear()
    recent_lags.add(time.time() - 1000, [5.0])
    recent_lags.add(time.time(), [0.1] * (recent_lags.keep + 10))
    assert recent_lags.since(time.time() - 100) == [0.1] * recent_lags.keep
    recent_lags.clear()


# ----------------------------------------------------------------------------- logs
def test_closed_log_has_the_broadcast_counters_of_a_subscribed_connection() -> None:
    subscribed = Connection(id="s1", stream="bcobs.log", topics=("a", "b"))
    subscribed.broadcast_delivered, subscribed.broadcast_replayed = 7, 3
    subscribed.broadcast_resets = 1
    plain = Connection(id="p1", stream="bcobs.log")
    with capture_logs() as logs:
        LogObserver().connection_closed(subscribed)
        LogObserver().connection_closed(plain)
    first, second = (e for e in logs if e["event"] == CONNECTION_CLOSED)
    assert (first["broadcast_delivered"], first["broadcast_replayed"]) == (7, 3)
    assert first["broadcast_resets"] == 1
    assert not any(key.startswith("broadcast_") for key in second)


async def test_a_real_subscription_logs_its_counters_when_it_closes(
    rf: RequestFactory, memory_backend: None
) -> None:
    topic = f"bcobs-l-{uuid.uuid4().hex[:8]}"
    broadcast(topic, "old", on_commit=False)
    with capture_logs() as logs:
        stream = await _Stream.open(rf, topic, last_id="nonsense")
        await stream.events(1)  # the reset
        reading = asyncio.ensure_future(stream.events(2))
        await _until_subscribed(topic)
        broadcast(topic, "x", on_commit=False)
        broadcast(topic, "y", on_commit=False)
        await reading
        await stream.close()
    (closed,) = [e for e in logs if e["event"] == CONNECTION_CLOSED and e["stream"] == STREAM]
    assert closed["broadcast_delivered"] == 2
    assert closed["broadcast_replayed"] == 0
    assert closed["broadcast_resets"] == 1
    assert any(e["event"] == "sse.broadcast.reset" for e in logs)


# ----------------------------------------------------------------------------- history rows
@pytest.mark.django_db
def test_topics_set_after_the_open_reach_the_row(writer: Any) -> None:
    connection = open_connection()
    writer.flush()
    assert row(connection).topics == ""
    connection.topics = ("bcobs-orders", "bcobs-user-7")  # subscribe() after the open
    writer.flush()
    assert row(connection).topics == "bcobs-orders bcobs-user-7"
    registry.close(connection, "completed")
    writer.flush()
    assert row(connection).topics == "bcobs-orders bcobs-user-7"


@pytest.mark.django_db
def test_topics_set_before_the_first_flush_are_inserted(writer: Any) -> None:
    connection = open_connection(topics=("bcobs-x",))
    writer.flush()
    assert row(connection).topics == "bcobs-x"


@pytest.mark.django_db
def test_topics_set_while_the_row_is_inserted_are_written_next(
    writer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A subscription often sets its topics while the first flush runs."""
    connection = open_connection()
    insert_rows = _history.insert_rows

    def subscribing_meanwhile(*args: Any) -> Any:
        result = insert_rows(*args)
        connection.topics = ("bcobs-late",)
        return result

    monkeypatch.setattr(_history, "insert_rows", subscribing_meanwhile)
    writer.flush()
    monkeypatch.setattr(_history, "insert_rows", insert_rows)
    writer.flush()
    assert row(connection).topics == "bcobs-late"


def test_row_topics_keep_whole_topics_within_the_bound() -> None:
    most = tuple(f"{i:02d}" + "t" * 126 for i in range(64))  # 64 topics of 128 characters
    assert len(row_topics(most)) == TOPICS_MAX_LENGTH
    assert row_topics(most).split() == list(most)
    more = (*most, "overflow")
    assert row_topics(more).split() == list(most)
    assert row_topics(("a\x00b", "c")) == "ab c"


# ----------------------------------------------------------------------------- memory warning
def _open_row(process: str, topics: str, stream: str = "bcobs.other") -> StreamConnection:
    now = timezone.now()
    return StreamConnection.objects.create(
        connection_id=uuid.uuid4().hex,
        stream=stream,
        process=process,
        opened_at=now,
        last_seen_at=now,
        topics=topics,
        username="alice",
    )


def _warnings(logs: list[Any]) -> list[Any]:
    return [e for e in logs if e["event"] == BROADCAST_ONE_PROCESS]


class _Shared(MemoryBackend):  # as database and redis are
    shared = True


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("backend", "elsewhere", "warned"),
    [
        ("memory", "bcobs-orders", True),
        ("memory", "", False),  # another process streams, but subscribed to nothing
        (_Shared, "bcobs-orders", False),
    ],
)
def test_memory_backend_used_by_two_processes_is_logged_once(
    writer: Any, backend: Any, elsewhere: str, warned: bool
) -> None:
    with override_settings(FLOSSE={**HISTORY_SETTINGS, "BROADCAST_BACKEND": backend}):
        _open_row(OTHER_A, elsewhere)
        _open_row(OTHER_B, "")  # not subscribed: never counted
        connection = open_connection(topics=("bcobs-orders",))
        with capture_logs() as logs:
            writer.flush()  # writes our row, then looks (the first flush always looks)
            writer.check_broadcast_sharing()  # again: within 10 minutes, not logged again
        registry.close(connection, "completed")
    if not warned:
        assert _warnings(logs) == []
        return
    (warning,) = _warnings(logs)
    assert warning["log_level"] == "warning"
    assert warning["processes"] == sorted([current_process(), OTHER_A])


# ----------------------------------------------------------------------------- dashboard
@pytest.fixture
def subscribed_local() -> Iterator[list[Connection]]:
    opened: list[Connection] = []
    yield opened
    for c in opened:
        registry.close(c, "completed")


def _local(opened: list[Connection], *topics: str) -> Connection:
    c = Connection(
        id=uuid.uuid4().hex, stream="bcobs.local", process=current_process(), topics=topics
    )
    assert registry.open(c) is None
    opened.append(c)
    return c


@pytest.mark.django_db
def test_topics_panel_counts_subscribers_of_every_process(
    memory_backend: None, subscribed_local: list[Connection]
) -> None:
    _open_row(OTHER_A, "bcobs-orders bcobs-user-1")
    _open_row(OTHER_A, "bcobs-orders bcobs-user-1")
    _open_row(OTHER_B, "bcobs-orders")
    _open_row(OTHER_B, "")
    gone = _open_row(OTHER_B, "bcobs-gone")
    StreamConnection.objects.filter(pk=gone.pk).update(closed_at=timezone.now())
    _local(subscribed_local, "bcobs-orders", "bcobs-local")
    broadcast("bcobs-orders", "1", on_commit=False)
    broadcast("bcobs-orders", "2", on_commit=False)
    published_at = time.time()

    with capture_logs() as logs, CaptureQueriesContext(db_connection) as queries:
        panel = dashboard.Feed(top=10).topics()
    assert panel is not None
    assert len(queries) == 1  # the open rows' topics; memory answers the rest itself

    by_topic = {r["topic"]: r for r in panel["rows"]}
    assert [r["topic"] for r in panel["rows"]] == [
        "bcobs-orders", "bcobs-user-1", "bcobs-local",
    ]  # fmt: skip
    assert by_topic["bcobs-orders"]["subscribers"] == 4
    assert by_topic["bcobs-orders"]["published"] == 2
    assert abs(by_topic["bcobs-orders"]["last"] - published_at) < 60
    assert by_topic["bcobs-user-1"] == {"topic": "bcobs-user-1", "subscribers": 2,
                                        "published": 0, "last": None}  # fmt: skip
    assert panel["backend"] == "memory"
    assert panel["processes"] == 3
    # memory with subscribers in three processes: the page's notice and the log's warning
    assert panel["unshared"] == sorted([OTHER_A, OTHER_B, current_process()])
    assert len(_warnings(logs)) == 1


@pytest.mark.django_db
def test_topics_panel_without_subscriptions_elsewhere_has_no_notice(
    memory_backend: None, subscribed_local: list[Connection]
) -> None:
    _local(subscribed_local, "bcobs-alone")
    panel = dashboard.Feed(top=10).topics()
    assert panel is not None
    assert panel["unshared"] is None
    assert [(r["topic"], r["subscribers"]) for r in panel["rows"]] == [("bcobs-alone", 1)]


@pytest.mark.django_db
def test_topics_panel_is_bounded_and_says_how_many_more(memory_backend: None) -> None:
    StreamConnection.objects.bulk_create(
        [
            StreamConnection(
                connection_id=uuid.uuid4().hex,
                stream="bcobs.many",
                process=OTHER_A,
                opened_at=timezone.now(),
                last_seen_at=timezone.now(),
                topics=f"bcobs-shared bcobs-user-{i}",
            )
            for i in range(300)
        ]
    )
    panel = dashboard.Feed(top=10).topics()
    assert panel is not None
    assert len(panel["rows"]) == dashboard.TOPICS_TOP
    assert panel["rows"][0] == {"topic": "bcobs-shared", "subscribers": 300,
                                "published": 0, "last": None}  # fmt: skip
    assert panel["more"] == 301 - dashboard.TOPICS_TOP
    assert len(json.dumps(panel)) < 4_000


@pytest.mark.django_db
def test_topics_panel_is_computed_once_per_interval_for_every_viewer(
    memory_backend: None, subscribed_local: list[Connection]
) -> None:
    first, second = dashboard.Feed(top=10), dashboard.Feed(top=10)
    assert first.topics() is not None
    with CaptureQueriesContext(db_connection) as queries:
        assert second.topics() is not None  # the same panel, not computed again
        assert first.topics() is None  # unchanged for this viewer: nothing to send
    assert len(queries) == 0
    _local(subscribed_local, "bcobs-new")
    dashboard.topics_panel.clear()  # as TOPICS_INTERVAL passing does
    panel = first.topics()
    assert panel is not None and panel["rows"][0]["topic"] == "bcobs-new"


@pytest.mark.django_db
def test_topics_panel_of_a_backend_that_cannot_count(subscribed_local: list[Connection]) -> None:
    class Uncounted(MemoryBackend):  # like redis: no cheap per-topic count
        name = "uncounted"
        shared = True
        topic_activity = Backend.topic_activity  # the default: None

    with override_settings(FLOSSE={"PERSISTENCE": False, "BROADCAST_BACKEND": Uncounted}):
        _local(subscribed_local, "bcobs-u")
        panel = dashboard.Feed(top=10).topics()
    assert panel is not None
    assert panel["backend"] == "uncounted"
    assert panel["rows"] == [{"topic": "bcobs-u", "subscribers": 1, "published": None,
                              "last": None}]  # fmt: skip


@pytest.mark.django_db
def test_topics_panel_reads_the_database_backends_history_of_the_window(
    subscribed_local: list[Connection],
) -> None:
    class Database(MemoryBackend):  # the panel reads the tables, never the backend
        name = "database"
        shared = True

        def topic_activity(self, topics: Any, since: float) -> Any:
            raise AssertionError("the database backend's history is queried directly")

    now = time.time()
    old = now - dashboard.TOPICS_WINDOW - 100
    messages = [("bcobs-busy", i, now - i) for i in range(1, 6)]
    messages += [("bcobs-quiet", 1, old - 50), ("bcobs-quiet", 2, old)]
    messages += [("bcobs-nobody", 1, now - 1)]
    BroadcastMessage.objects.bulk_create(
        [BroadcastMessage(topic=t, position=p, body="x", published_at=at) for t, p, at in messages]
    )
    BroadcastTopic.objects.bulk_create(
        [BroadcastTopic("bcobs-busy", 5), BroadcastTopic("bcobs-quiet", 2),
         BroadcastTopic("bcobs-nobody", 1)]
    )  # fmt: skip
    _local(subscribed_local, "bcobs-busy", "bcobs-quiet", "bcobs-never")

    with (
        override_settings(FLOSSE={"PERSISTENCE": False, "BROADCAST_BACKEND": Database}),
        CaptureQueriesContext(db_connection) as queries,
    ):
        panel = dashboard.Feed(top=10).topics()
    assert panel is not None
    assert len(queries) == 3  # open rows; the window's busiest; the rest of the subscribed
    rows = {r["topic"]: r for r in panel["rows"]}
    assert (rows["bcobs-busy"]["published"], rows["bcobs-busy"]["subscribers"]) == (5, 1)
    assert rows["bcobs-busy"]["last"] == round(now - 1, 3)
    assert rows["bcobs-quiet"]["published"] == 0
    assert rows["bcobs-quiet"]["last"] == round(old, 3)  # before the window: still shown
    assert rows["bcobs-never"] == {"topic": "bcobs-never", "subscribers": 1, "published": 0,
                                   "last": None}  # fmt: skip
    assert (rows["bcobs-nobody"]["subscribers"], rows["bcobs-nobody"]["published"]) == (0, 1)
    assert [r["topic"] for r in panel["rows"]][-1] == "bcobs-nobody"  # fewest subscribers


@pytest.mark.django_db
def test_topics_panel_has_this_process_lag_percentiles(
    memory_backend: None, subscribed_local: list[Connection]
) -> None:
    recent_lags.clear()
    assert (dashboard.Feed(top=10).topics() or {})["lag"] is None
    recent_lags.add(time.time(), [0.001 * i for i in range(1, 101)])
    dashboard.topics_panel.clear()
    lag = (dashboard.Feed(top=10).topics() or {})["lag"]
    recent_lags.clear()
    assert lag == {"p50": 0.05, "p99": 0.099, "max": 0.1, "samples": 100}


@pytest.mark.django_db
def test_rows_carry_topics_only_for_subscribed_connections(
    memory_backend: None, subscribed_local: list[Connection]
) -> None:
    remote = _open_row(OTHER_A, "bcobs-r1 bcobs-r2")
    plain = _open_row(OTHER_A, "")
    local = _local(subscribed_local, "bcobs-l")
    rows = {r["id"]: r for r in dashboard.Feed(top=10).snapshot()["rows"]}
    assert rows[remote.connection_id]["topics"] == "bcobs-r1 bcobs-r2"
    assert rows[local.id]["topics"] == "bcobs-l"
    assert "topics" not in rows[plain.connection_id]


@pytest.mark.django_db(transaction=True)
def test_the_feed_sends_the_topics_panel_with_the_snapshot(
    admin_client: Client, memory_backend: None
) -> None:
    _open_row(OTHER_A, "bcobs-feed")
    events = collect_events(
        admin_client.get(reverse("admin:django_flosse_dashboard_stream")), max_events=1
    )
    assert [e.event for e in events] == ["snapshot"]
    snapshot = events[0].json()
    panel = snapshot["topics"]
    assert [r.get("topics") for r in snapshot["rows"]] == ["bcobs-feed"]
    assert panel["rows"] == [{"topic": "bcobs-feed", "subscribers": 1, "published": 0,
                              "last": None}]  # fmt: skip
    assert panel["window"] == dashboard.TOPICS_WINDOW


@pytest.mark.django_db
def test_the_page_has_the_topics_panel_column_and_notice(admin_client: Client) -> None:
    html = admin_client.get(reverse("admin:django_flosse_dashboard")).content.decode()
    assert "data-flosse-topics-table" in html
    assert "data-flosse-unshared" in html
    assert "data-flosse-lag" in html
    assert ">Topics</th>" in html
    i18n = json.loads(html.split('id="flosse-i18n" type="application/json">')[1].split("<")[0])
    assert "%(processes)s" in i18n["unshared"]


@pytest.mark.django_db
def test_a_changed_panel_rides_in_an_update_that_changes_nothing_else(
    memory_backend: None, subscribed_local: list[Connection]
) -> None:
    feed = dashboard.Feed(top=10)
    snapshot = feed.snapshot()
    assert feed.poll() is None
    unchanged = feed.unchanged()
    assert set(unchanged) == {"t", "total", "cards", "upsert", "remove"}
    assert (unchanged["upsert"], unchanged["remove"]) == ([], [])
    assert (unchanged["total"], unchanged["cards"]) == (snapshot["total"], snapshot["cards"])
