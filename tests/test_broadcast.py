"""The broadcast core on the ``memory`` backend: publish, deliver, fall behind, close.

Validation (a bad call raises from the call itself, even inside ``atomic()``, and publishes
nothing), publishing on commit, one encoding shared by every subscriber, a publish racing
a subscriber's replay, a subscriber that falls past its buffer, sync and async iteration
and how they end. Resume ids are in ``test_broadcast_ids.py``; real servers in
``test_broadcast_servers.py``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import json
import math
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest
from django.db import transaction
from django.test import override_settings
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from django_flosse import abroadcast, broadcast, subscribe
from django_flosse.broadcasting import RESET_EVENT, _subscription
from django_flosse.broadcasting._ids import IdFormat
from django_flosse.broadcasting._messages import MAX_TOPICS, Draft
from django_flosse.broadcasting.backends import get_backend
from django_flosse.broadcasting.backends.base import Page, Subscriber, done
from django_flosse.broadcasting.backends.memory import MemoryBackend
from django_flosse.events import EncodedEvent
from django_flosse.formatters import to_sse
from django_flosse.observing.registry import registry
from django_flosse.testing import acollect_events, collect_events, parse_events
from tests.support.subscribing import (
    MEMORY,
    WAIT,
    Reader,
    datas,
    joined,
    opened_connection,
    parsed,
    request,
    use_memory,
    wait_for,
)


class RecordingBackend(MemoryBackend):
    """The memory backend, keeping what it was asked to publish (topics, independent)."""

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.calls: list[tuple[list[str], bool]] = []

    def publish(self, drafts: Sequence[Draft], *, independent: bool = False) -> None:
        self.calls.append(([d.topic for d in drafts], independent))
        super().publish(drafts, independent=independent)


@pytest.fixture
def configure(settings: Any) -> Callable[..., Any]:
    """``configure(**extra)``: the memory backend with ``extra`` settings."""
    return functools.partial(use_memory, settings)


@pytest.fixture
def recording(configure: Callable[..., Any]) -> RecordingBackend:
    backend = configure(BROADCAST_BACKEND=RecordingBackend)
    assert isinstance(backend, RecordingBackend)
    return backend


async def until(check: Callable[[], bool], what: str) -> None:
    """The async wait_for: the subscriber runs on this loop, so the test must yield."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


async def anext_in_time(events: AsyncIterator[EncodedEvent]) -> EncodedEvent:
    return await asyncio.wait_for(anext(events), WAIT)


# --------------------------------------------------------------------------- validation

BAD_TOPICS = [
    "",
    "x" * 129,
    "two words",
    "slash/ed",
    "comma,ed",
    "new\nline",
    "tab\t",
    "caf\u00e9",
    "\u0661\u0662",  # Arabic-Indic digits are digits, but not ASCII
    "trailing\n",
    None,
    42,
    b"bytes",
    ("tuple",),
]


@pytest.mark.parametrize("topic", BAD_TOPICS, ids=repr)
def test_a_bad_topic_raises_and_publishes_nothing(recording: RecordingBackend, topic: Any) -> None:
    with pytest.raises(ValueError, match=r"1-128 characters of letters, digits and '\._:-'"):
        broadcast(topic, "x")
    assert recording.calls == []


@pytest.mark.parametrize("topic", ["a", "x" * 128, "Az09._:-", "user-42", "order:7.paid"])
def test_a_good_topic_publishes(recording: RecordingBackend, topic: str) -> None:
    broadcast(topic, "x")
    assert recording.calls == [([topic], False)]


class Unserialisable:
    pass


def _circular() -> list[Any]:
    loop: list[Any] = []
    loop.append(loop)
    return loop


BAD_DATA = [
    (b"bytes", "may not be bytes: decode it to str first"),
    (bytearray(b"x"), "may not be bytearray"),
    (memoryview(b"x"), "may not be memoryview"),
    (Unserialisable(), "cannot serialise Unserialisable as JSON"),
    ({"x": {1, 2}}, "cannot serialise dict as JSON"),
    (math.nan, "cannot serialise float as JSON"),
    ({"nested": [math.inf]}, "cannot serialise dict as JSON"),
    (-math.inf, "cannot serialise float"),
    (_circular(), "cannot serialise list"),
    ("lone \ud800 surrogate", "not valid UTF-8"),
]


@pytest.mark.parametrize(("data", "message"), BAD_DATA, ids=lambda v: type(v).__name__)
def test_data_that_cannot_be_sent_raises_and_publishes_nothing(
    recording: RecordingBackend, data: Any, message: str
) -> None:
    with pytest.raises(ValueError, match="cannot broadcast this data") as info:
        broadcast("t", data)
    assert message in str(info.value)
    assert recording.calls == []


BAD_EVENTS = [
    (RESET_EVENT, "the event name 'flosse-reset' is reserved"),
    ("two\nlines", "may not contain '\\n'"),
    ("carriage\rreturn", "may not contain '\\r'"),
    ("crlf\r\n", "may not contain '\\r'"),
    (7, "event name must be a str; got int"),
    (b"order", "event name must be a str; got bytes"),
    ("lone \udfff", "not valid UTF-8"),
]


@pytest.mark.parametrize(("event", "message"), BAD_EVENTS, ids=repr)
def test_a_bad_event_name_raises_and_publishes_nothing(
    recording: RecordingBackend, event: Any, message: str
) -> None:
    with pytest.raises(ValueError) as info:
        broadcast("t", "x", event=event)
    assert message in str(info.value)
    assert recording.calls == []


def test_the_encoded_size_limit_counts_the_whole_body(configure: Callable[..., Any]) -> None:
    backend = configure(BROADCAST_BACKEND=RecordingBackend, BROADCAST_MAX_BYTES=100)
    overhead = len(b"event: e\ndata: \n\n")
    broadcast("t", "x" * (100 - overhead), event="e")  # exactly the limit: fine
    assert backend.calls == [(["t"], False)]
    with pytest.raises(ValueError) as info:
        broadcast("t", "x" * (101 - overhead), event="e")
    assert "at most 100 bytes encoded (FLOSSE['BROADCAST_MAX_BYTES']); this one is 101" in str(
        info.value
    )
    # Non-ASCII counts in bytes, not characters.
    with pytest.raises(ValueError, match="this one is"):
        broadcast("t", "\u00e9" * 50)
    assert len(backend.calls) == 1


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("topic", "data", "event"),
    [("bad topic", "x", None), ("t", b"x", None), ("t", math.nan, None), ("t", "x", RESET_EVENT)],
    ids=["topic", "bytes", "nan", "reserved"],
)
def test_inside_atomic_a_bad_call_raises_at_once_and_nothing_is_published(
    recording: RecordingBackend,
    django_capture_on_commit_callbacks: Any,
    topic: Any,
    data: Any,
    event: Any,
) -> None:
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        with transaction.atomic():
            with pytest.raises(ValueError):
                broadcast(topic, data, event=event)
            with pytest.raises(ValueError):
                broadcast(topic, data, event=event, on_commit=False)
    assert callbacks == []
    assert recording.calls == []


async def test_abroadcast_validates_the_same(recording: RecordingBackend) -> None:
    with pytest.raises(ValueError, match="1-128 characters"):
        await abroadcast("no spaces", "x")
    with pytest.raises(ValueError, match="reserved"):
        await abroadcast("t", "x", event=RESET_EVENT)
    with pytest.raises(ValueError, match="cannot broadcast this data"):
        await abroadcast("t", math.nan)
    assert recording.calls == []


def test_subscribe_needs_good_topics(configure: Callable[..., Any]) -> None:
    configure()
    with pytest.raises(ValueError, match="at least one topic"):
        subscribe(request())
    with pytest.raises(ValueError, match="1-128 characters"):
        subscribe(request(), "ok", "not ok")
    with pytest.raises(ValueError, match=f"at most {MAX_TOPICS} topics"):
        subscribe(request(), *(f"t{i}" for i in range(MAX_TOPICS + 1)))
    many = subscribe(request(), *(f"t{i}" for i in range(MAX_TOPICS)), "t0")
    assert len(many.topics) == MAX_TOPICS  # duplicates count once
    assert subscribe(request(), "b", "a", "b").topics == ("a", "b")


# --------------------------------------------------------------------------- on commit


@pytest.mark.django_db(transaction=True)
def test_inside_atomic_the_event_arrives_after_commit(recording: RecordingBackend) -> None:
    reader = Reader(subscribe(request(), "t"))
    joined(recording, "t")
    with transaction.atomic():
        broadcast("t", "committed")
        with transaction.atomic():  # a savepoint: still the outer commit
            broadcast("t", "nested")
        assert recording.calls == []
        assert reader.pending() == 0
    assert recording.calls == [(["t"], False), (["t"], False)]
    assert datas(reader.take(2)) == ["committed", "nested"]
    reader.stop()


@pytest.mark.django_db(transaction=True)
def test_nothing_is_published_on_rollback(recording: RecordingBackend) -> None:
    reader = Reader(subscribe(request(), "t"))
    joined(recording, "t")
    with pytest.raises(ZeroDivisionError), transaction.atomic():
        broadcast("t", "rolled back")
        1 / 0  # noqa: B018
    with transaction.atomic():
        broadcast("t", "kept")
        try:
            with transaction.atomic():  # a savepoint rolled back: its event goes with it
                broadcast("t", "savepoint rolled back")
                raise KeyError
        except KeyError:
            pass
    broadcast("t", "after")
    assert datas(reader.take(2)) == ["kept", "after"]
    assert reader.pending() == 0
    assert recording.calls == [(["t"], False), (["t"], False)]
    reader.stop()


@pytest.mark.django_db(transaction=True)
def test_on_commit_false_publishes_at_once(recording: RecordingBackend) -> None:
    reader = Reader(subscribe(request(), "t"))
    joined(recording, "t")
    with pytest.raises(ZeroDivisionError), transaction.atomic():
        broadcast("t", "now", on_commit=False)
        assert recording.calls == [(["t"], True)]  # independent of this transaction
        assert datas(reader.take(1)) == ["now"]
        1 / 0  # noqa: B018
    broadcast("t", "outside", on_commit=False)  # no transaction: an ordinary publish
    assert datas(reader.take(1)) == ["outside"]
    assert recording.calls[-1] == (["t"], False)
    reader.stop()


@pytest.mark.django_db
def test_on_commit_callbacks_are_registered_not_run(
    recording: RecordingBackend, django_capture_on_commit_callbacks: Any
) -> None:
    """In a TestCase-style transaction the event waits for the commit that never comes."""
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        broadcast("t", "later")
    assert len(callbacks) == 1
    assert recording.calls == []
    callbacks[0]()
    assert recording.calls == [(["t"], False)]


async def test_abroadcast_from_async_code(configure: Callable[..., Any]) -> None:
    backend = configure()
    events = subscribe(request(), "t").__aiter__()
    first = asyncio.ensure_future(anext(events))
    await until(lambda: backend.subscribers("t") == 1, "the subscriber")
    await abroadcast("t", {"id": 7}, event="order")
    event = parsed(await asyncio.wait_for(first, WAIT))
    assert (event.event, event.json()) == ("order", {"id": 7})
    broadcast("t", "sync")  # the sync call from the loop's thread: no I/O on this backend
    assert parsed(await anext_in_time(events)).data == "sync"
    await events.aclose()  # type: ignore[attr-defined]
    assert backend.subscribers("t") == 0


# --------------------------------------------------------------------------- encode once


async def test_one_encoding_for_every_subscriber(configure: Callable[..., Any]) -> None:
    backend = configure()
    singles = [subscribe(request(), "a").__aiter__() for _ in range(3)]
    multis = [
        subscribe(request(), "a", "b").__aiter__(),
        subscribe(request(), "a", "c").__aiter__(),
    ]
    firsts = [asyncio.ensure_future(anext(s)) for s in singles + multis]
    await until(lambda: backend.subscribers("a") == 5, "five subscribers")
    broadcast("a", {"x": 1}, event="e")
    got: list[EncodedEvent] = await asyncio.wait_for(asyncio.gather(*firsts), WAIT)
    one, two, three, m1, m2 = got
    # Single-topic subscribers: one event object, one bytes object, one id.
    assert one is two is three
    assert one.frame is two.frame
    # Multi-topic subscribers: the same body after their own id line.
    body = one.frame.split(b"\n", 1)[1]
    assert body == b'event: e\ndata: {"x": 1}\n\n'
    for multi in (m1, m2):
        assert multi.frame.split(b"\n", 1)[1] == body
        assert multi.frame.startswith(b"id: " + multi.id.encode() + b"\n")  # type: ignore[union-attr]
    assert len({one.id, m1.id, m2.id}) == 3
    for events in singles + multis:
        await events.aclose()  # type: ignore[attr-defined]


def test_a_broadcast_event_is_read_only_and_sends_its_bytes(configure: Callable[..., Any]) -> None:
    backend = configure()
    reader = Reader(subscribe(request(), "t"))
    joined(backend, "t")
    broadcast("t", ["line"], event="e")
    (event,) = reader.take(1)
    reader.stop()
    with pytest.raises(AttributeError, match=r"read-only .* yield SSEEvent\(data=event.data"):
        event.data = "changed"
    with pytest.raises(AttributeError, match="read-only"):
        event.id = "mine"
    assert to_sse(event) == event.frame.decode() == event.encode()
    assert [(e.event, e.data) for e in parse_events(to_sse(event))] == [("e", '["line"]')]


# --------------------------------------------------------------------------- race


class RacingBackend(MemoryBackend):
    """Publishes at a chosen moment of a subscriber's replay (set ``race``)."""

    race: str | None = None  # "before-join", "after-join", "before-read", "during-read"
    extra: tuple[str, ...] = ()

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.raced = threading.Event()

    def _publish_extra(self) -> None:
        extra, self.extra = self.extra, ()
        for data in extra:
            broadcast("t", data)
        if extra:
            self.raced.set()

    def join(self, subscriber: Any) -> concurrent.futures.Future[dict[str, Any]]:
        if self.race == "before-join":
            self._publish_extra()
        cut = super().join(subscriber)
        if self.race == "after-join":
            self._publish_extra()
        return cut

    def read(self, topic: str, after: Any, upto: Any) -> concurrent.futures.Future[Page]:
        if self.race == "before-read":
            self._publish_extra()
        if self.race != "during-read" or not self.extra:
            return super().read(topic, after, upto)
        # The page is read, then more is published, then the page is handed over (as a
        # reader thread of the database backend would): the subscriber waits meanwhile.
        future: concurrent.futures.Future[Page] = concurrent.futures.Future()

        def later() -> None:
            page = super(RacingBackend, self).read(topic, after, upto).result()
            self._publish_extra()
            future.set_result(page)

        threading.Thread(target=later).start()
        return future


RACES = ["before-join", "after-join", "before-read", "during-read"]


@pytest.mark.parametrize("race", RACES)
def test_a_publish_during_the_replay_is_sent_once(configure: Callable[..., Any], race: str) -> None:
    backend = configure(BROADCAST_BACKEND=RacingBackend)
    live = Reader(subscribe(request(), "t"))
    joined(backend, "t")
    for i in range(1, 4):
        broadcast("t", str(i))
    first_id = live.take(3)[0].id
    backend.race, backend.extra = race, ("4", "5")
    resumed = Reader(subscribe(request(first_id), "t"))
    joined(backend, "t", count=2)
    assert backend.raced.wait(WAIT)
    broadcast("t", "6")
    assert datas(resumed.take_until("6")) == ["2", "3", "4", "5", "6"]
    assert datas(live.take_until("6")) == ["4", "5", "6"]
    resumed.stop()
    live.stop()


@pytest.mark.parametrize("race", RACES)
async def test_a_publish_during_the_replay_is_sent_once_async(
    configure: Callable[..., Any], race: str
) -> None:
    backend = configure(BROADCAST_BACKEND=RacingBackend)
    for i in range(1, 4):
        broadcast("t", str(i))
    backend.race, backend.extra = race, ("4", "5")
    # An id before the first event: everything is replayed (multi-topic: its own ids).
    start = IdFormat(backend.tag, ("s", "t"), backend.format_position, backend.parse_position)
    events = subscribe(request(start.format({"s": 0, "t": 0})), "t", "s").__aiter__()
    got = [await anext_in_time(events) for _ in range(5)]
    assert backend.raced.is_set()
    broadcast("t", "6")
    got.append(await anext_in_time(events))
    assert datas(got) == ["1", "2", "3", "4", "5", "6"]
    await events.aclose()  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- overflow


async def _joined_and_idle(backend: Any, subscription: Any) -> AsyncIterator[EncodedEvent]:
    """Start ``subscription``, get one event, then leave it unread."""
    events: AsyncIterator[EncodedEvent] = subscription.__aiter__()
    first = asyncio.ensure_future(anext(events))
    await until(lambda: subscription._subscriber is not None and backend.subscribers("t"), "join")
    broadcast("t", "0")
    assert parsed(await asyncio.wait_for(first, WAIT)).data == "0"
    return events


async def test_a_subscriber_past_its_buffer_catches_up_from_the_history(
    configure: Callable[..., Any],
) -> None:
    backend = configure(BROADCAST_BUFFER=4, BROADCAST_HISTORY=1000)
    req = request()
    connection = opened_connection(req)
    slow_sub = subscribe(req, "t")
    slow = await _joined_and_idle(backend, slow_sub)
    fast = Reader(subscribe(request(), "t"))
    await until(lambda: backend.subscribers("t") == 2, "the fast subscriber")
    subscriber = slow_sub._subscriber
    for i in range(1, 301):
        broadcast("t", str(i))  # returns at once: the slow one is never waited for
        assert len(subscriber.queue) <= 4  # memory stays bounded
    assert subscriber.overflowed
    assert subscriber not in backend._fanout._routes.get("t", {})  # dropped from the fan-out
    assert len(backend._topics["t"].history) <= 1000
    # The other one (a thread that reads as fast as it can) gets every event too.
    assert datas(await asyncio.to_thread(fast.take_until, "300")) == [str(i) for i in range(1, 301)]
    got = [await anext_in_time(slow) for _ in range(300)]
    assert datas(got) == [str(i) for i in range(1, 301)]
    assert connection.broadcast_replayed == 300 - 4  # the queue, then the history
    await until(lambda: backend.subscribers("t") == 2, "the slow one back live")
    broadcast("t", "live")
    assert parsed(await anext_in_time(slow)).data == "live"
    assert connection.broadcast_resets == 0
    await slow.aclose()  # type: ignore[attr-defined]
    fast.stop()
    registry.close(connection, "cancelled")


async def test_a_subscriber_too_far_behind_gets_one_reset(configure: Callable[..., Any]) -> None:
    backend = configure(BROADCAST_BUFFER=4, BROADCAST_HISTORY=10)
    subscription = subscribe(request(), "t")
    slow = await _joined_and_idle(backend, subscription)
    for i in range(1, 101):
        broadcast("t", str(i))
        assert len(subscription._subscriber.queue) <= 4
    assert len(backend._topics["t"].history) == 10
    got = [await anext_in_time(slow) for _ in range(5)]
    assert datas(got) == ["1", "2", "3", "4", "<reset>"]
    reset = got[-1]
    assert json.loads(reset.data) == {"topics": ["t"]}
    await until(lambda: backend.subscribers("t") == 1, "back live")
    broadcast("t", "after")
    assert parsed(await anext_in_time(slow)).data == "after"
    await slow.aclose()  # type: ignore[attr-defined]
    # The reset's id resumes right after the gap it skipped.
    events = subscribe(request(reset.id), "t").__aiter__()
    assert parsed(await anext_in_time(events)).data == "after"
    await events.aclose()  # type: ignore[attr-defined]


def test_a_sync_subscriber_past_its_buffer_catches_up(configure: Callable[..., Any]) -> None:
    backend = configure(BROADCAST_BUFFER=2)
    gate = threading.Event()
    subscription = subscribe(request(), "t")
    got: list[EncodedEvent] = []

    def slow_reader() -> None:
        for event in subscription:
            got.append(event)
            gate.wait(WAIT)  # stuck after the first event until the test lets it go
            if len(got) == 51:
                return

    thread = threading.Thread(target=slow_reader)
    thread.start()
    joined(backend, "t")
    for i in range(51):
        broadcast("t", str(i))
        assert len(subscription._subscriber.queue) <= 2
    gate.set()
    thread.join(WAIT)
    assert not thread.is_alive()
    assert datas(got) == [str(i) for i in range(51)]
    assert backend.subscribers("t") == 0  # the loop's end closed it


# --------------------------------------------------------------------------- iteration


def test_a_sync_subscriber_ends_promptly_when_its_connection_closes(
    configure: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not at its next periodic look: the close wakes it."""
    monkeypatch.setattr(_subscription, "SYNC_WAIT_SECONDS", 3600.0)
    backend = configure()
    req = request()
    connection = opened_connection(req)
    reader = Reader(subscribe(req, "a", "b"))
    joined(backend, "a", "b")
    broadcast("b", "one")
    assert datas(reader.take(1)) == ["one"]
    assert connection.topics == ("a", "b")
    registry.close(connection, "cancelled")
    reader.thread.join(WAIT)  # far less than an hour
    assert not reader.thread.is_alive()
    assert reader.error is None
    assert backend.subscribers("a") == backend.subscribers("b") == 0
    assert backend._fanout.topics() == []


async def test_an_async_subscriber_ends_when_its_connection_closes(
    configure: Callable[..., Any],
) -> None:
    backend = configure()
    req = request()
    connection = opened_connection(req)
    events = subscribe(req, "t").__aiter__()
    waiting = asyncio.ensure_future(anext(events))
    await until(lambda: backend.subscribers("t") == 1, "the subscriber")
    await asyncio.sleep(0.01)
    assert not waiting.done()
    registry.close(connection, "terminated")
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(waiting, WAIT)
    assert backend._fanout.topics() == []


def test_a_subscription_closed_before_it_starts_never_joins(
    configure: Callable[..., Any],
) -> None:
    backend = configure()
    subscription = subscribe(request(), "t")
    subscription.close()
    assert list(subscription) == []
    assert backend._fanout.topics() == []


def test_a_close_racing_the_join_leaves_nothing_behind(configure: Callable[..., Any]) -> None:
    """The connection closes (another thread) while the subscriber is joining."""
    closing: list[Any] = []

    class CloseDuringJoin(MemoryBackend):
        def join(self, subscriber: Any) -> concurrent.futures.Future[dict[str, Any]]:
            closing[0].close()  # its close runs leave() before the join adds it
            return super().join(subscriber)

    backend = configure(BROADCAST_BACKEND=CloseDuringJoin)
    subscription = subscribe(request(), "t")
    closing.append(subscription)
    assert list(subscription) == []
    assert backend._fanout.topics() == []
    broadcast("t", "nobody")
    assert backend._fanout.topics() == []


def test_a_subscription_is_iterated_once(configure: Callable[..., Any]) -> None:
    backend = configure()
    subscription = subscribe(request(), "t")
    reader = Reader(subscription)
    joined(backend, "t")
    with pytest.raises(RuntimeError, match="iterated once; call subscribe\\(\\) again"):
        next(iter(subscription))
    reader.stop()


async def test_an_async_subscription_is_iterated_once(configure: Callable[..., Any]) -> None:
    backend = configure()
    subscription = subscribe(request(), "t")
    events = subscription.__aiter__()
    waiting = asyncio.ensure_future(anext(events))
    await until(lambda: backend.subscribers("t") == 1, "the subscriber")
    with pytest.raises(RuntimeError, match="iterated once"):
        await anext(subscription.__aiter__())
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await events.aclose()  # type: ignore[attr-defined]
    assert backend.subscribers("t") == 0


def _publish_when_joined(backend: Any, topic: str, values: list[str]) -> threading.Thread:
    def publish() -> None:
        wait_for(lambda: backend.subscribers(topic) == 1, "the view's subscriber")
        for value in values:
            broadcast(topic, value)

    thread = threading.Thread(target=publish)
    thread.start()
    return thread


@pytest.mark.django_db
def test_a_sync_view_streams_and_leaves_when_the_client_goes(
    client: Any, configure: Callable[..., Any]
) -> None:
    backend = configure()
    publisher = _publish_when_joined(backend, "a", ["1", "2", "3"])
    events = collect_events(client.get("/broadcast/sync/a,b/"), max_events=3, timeout=WAIT)
    publisher.join(WAIT)
    assert [e.data for e in events] == ["1", "2", "3"]
    assert len({e.id for e in events}) == 3
    wait_for(lambda: backend._fanout.topics() == [], "the subscriber to leave")
    assert registry.active() == 0


@pytest.mark.django_db
async def test_an_async_view_streams_and_leaves_when_the_client_goes(
    async_client: Any, configure: Callable[..., Any]
) -> None:
    backend = configure()
    publisher = _publish_when_joined(backend, "a", ["1", "2"])
    response = await async_client.get("/broadcast/async/a/")
    events = await acollect_events(response, max_events=2, timeout=WAIT)
    await asyncio.to_thread(publisher.join, WAIT)
    assert [e.data for e in events] == ["1", "2"]
    await until(lambda: backend._fanout.topics() == [], "the subscriber to leave")


# --------------------------------------------------------------------------- properties

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def _normalised(text: str) -> str:
    """What a client reads back: SSE ends lines at CRLF, CR and LF alike."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _frame_fields(frame: bytes) -> list[str]:
    """The field names of one frame; it must be one event (one blank line, at the end)."""
    text = frame.decode()
    assert text.endswith("\n\n") and "\n\n" not in text[:-2] and "\r" not in text
    return [line.partition(":")[0] for line in text[:-2].split("\n")]


@hypothesis_settings(max_examples=300)
@given(
    topic=st.text(max_size=130) | st.sampled_from(["t", "user-42", "a.b:c_d-e"]),
    data=st.text() | st.binary(max_size=8) | _JSON,
    event=st.none() | st.text(max_size=20) | st.sampled_from([RESET_EVENT, "order"]),
)
def test_any_broadcast_raises_or_parses_back_exactly(topic: Any, data: Any, event: Any) -> None:
    with override_settings(FLOSSE=MEMORY):
        backend = get_backend()
        try:
            broadcast(topic, data, event=event)
        except ValueError:
            return
        # Replay from before the topic's first event: the same frame as a live delivery.
        ids = IdFormat(backend.tag, (topic,), backend.format_position, backend.parse_position)
        head = backend._topics[topic].head
        subscription = subscribe(request(ids.format({topic: head - 1})), topic)
        events = iter(subscription)
        sent = next(events)
        events.close()  # type: ignore[attr-defined]
    fields = _frame_fields(sent.frame)
    assert fields[0] == "id" and fields.count("id") == 1
    assert set(fields[1:]) <= {"event", "data"} and fields.count("event") <= 1
    (received,) = parse_events(sent.frame)
    assert received.id == sent.id == ids.format({topic: head})
    assert received.event == (event or "message")
    if isinstance(data, str):
        assert received.data == _normalised(data)
    else:
        assert json.loads(received.data) == data


class LaggingBackend(MemoryBackend):
    """A process whose reader is one event behind the history (as a database or Redis
    reader is for a moment after a publish elsewhere): its join's cut is one event back,
    and that event is not delivered live to the subscribers that join now."""

    def join(self, subscriber: Subscriber) -> concurrent.futures.Future[dict[str, Any]]:
        cut = super().join(subscriber).result()
        return done({topic: position - 1 if position else 0 for topic, position in cut.items()})


def test_an_id_a_moment_ahead_of_this_process_resumes_without_a_reset(
    configure: Callable[..., Any],
) -> None:
    """A client killed on one server reconnects to another whose reader is a moment behind:
    its id is real (the history holds it), so it resumes, with no reset and no repeat."""
    configure(BROADCAST_BACKEND=LaggingBackend)
    for i in range(1, 4):
        broadcast("t", str(i))
    probe = Reader(subscribe(request(), "t"))
    joined(get_backend(), "t")
    broadcast("t", "4")
    head_id = probe.take(1)[0].id
    probe.stop()
    resumed = Reader(subscribe(request(head_id), "t"))
    joined(get_backend(), "t")
    broadcast("t", "5")
    assert datas(resumed.take_until("5")) == ["5"]
    resumed.stop()


def test_an_id_ahead_of_the_history_still_resets(configure: Callable[..., Any]) -> None:
    configure(BROADCAST_BACKEND=LaggingBackend)
    for i in range(1, 4):
        broadcast("t", str(i))
    probe = Reader(subscribe(request(), "t"))
    joined(get_backend(), "t")
    broadcast("t", "4")
    real_id = probe.take(1)[0].id
    probe.stop()
    made_up = real_id.rpartition(".")[0] + ".9"
    resumed = Reader(subscribe(request(made_up), "t"))
    (reset,) = resumed.take(1)
    assert reset.event == RESET_EVENT
    resumed.stop()


def test_the_memory_backend_forgets_quiet_topics_nobody_subscribes_to(
    configure: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Per-user topics must not pile up in memory: once a minute the whole history is
    trimmed by age, and a topic left empty with no subscriber is forgotten."""
    import time

    from django_flosse.broadcasting.backends import memory

    backend = configure(BROADCAST_HISTORY_SECONDS=10)
    monkeypatch.setattr(memory, "SWEEP_SECONDS", 0.0)
    long_ago = time.time() - 100
    for topic in ("user-1", "user-2", "watched"):
        backend.publish([Draft(topic, b"data: old\n\n", long_ago)])
    watcher = Reader(subscribe(request(), "watched"))
    joined(backend, "watched")
    broadcast("fresh", "now")
    assert sorted(backend._topics) == ["fresh", "watched"]
    assert len(backend._topics["watched"].history) == 0  # trimmed, kept for its subscriber
    watcher.stop()


# --------------------------------------------------------------------------- kept pages
def _page(first: int, count: int, size: int = 10) -> Any:
    from django_flosse.broadcasting._messages import Message
    from django_flosse.broadcasting.backends.base import Page

    return Page([Message("t", p, b"x" * size, 0.0) for p in range(first, first + count)], True)


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_kept_pages_are_handed_out_while_they_reach_the_bound() -> None:
    from django_flosse.broadcasting.backends.base import PAGE_SIZE, KeptPages

    kept = KeptPages(seconds=5.0, max_bytes=10_000, clock=_Clock())
    page = _page(11, 10)  # positions 11..20, read after 10
    kept.keep("t", 10, page)
    assert kept.get("t", 10, upto=20) is page
    assert kept.get("t", 10, upto=21) is None  # newer events: read again
    assert kept.get("t", 11, upto=20) is None and kept.get("u", 10, upto=20) is None
    full = _page(1, PAGE_SIZE, size=1)
    kept.keep("t", 0, full)
    assert kept.get("t", 0, upto=10**9) is full  # a full page: the caller reads on
    kept.keep("t", 30, _page(31, 0))
    assert kept.get("t", 30, upto=30) is None  # an empty page is never kept


def test_kept_pages_expire_after_their_last_use_and_stay_within_their_bytes() -> None:
    from django_flosse.broadcasting.backends.base import KeptPages

    clock = _Clock()
    kept = KeptPages(seconds=5.0, max_bytes=250, clock=clock)
    for after in range(3):
        clock.now = float(after)
        kept.keep("t", after * 10, _page(after * 10 + 1, 10))
    assert len(kept) == 2  # 100 bytes each: the oldest went
    assert kept.get("t", 0, upto=10) is None and kept.get("t", 20, upto=30) is not None
    clock.now = 6.5  # the page after 10 was kept at 1, the one after 20 used again at 2
    kept.expire()
    assert len(kept) == 1
    clock.now = 6.9
    assert kept.get("t", 20, upto=30) is not None  # used again: kept 5 s from now
    clock.now = 11.8
    kept.expire()
    assert len(kept) == 1
    clock.now = 11.9
    kept.expire()
    assert len(kept) == 0
