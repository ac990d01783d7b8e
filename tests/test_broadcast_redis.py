"""The ``redis`` broadcast backend in this process, against a real ``redis-server``.

The server comes from ``tests/support/redis.py`` (skipped without ``redis-server``, failed in
CI); every test starts from an empty Redis. Subscriptions are made from RequestFactory
requests and iterated both ways (``async for`` and ``for``); events are published with
``broadcast``/``abroadcast`` or the backend itself. Faults (Redis stopped, restarted with or
without its data) use a server of their own. Real servers and processes are in
``tests/reliability/test_broadcast_redis_cluster.py``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import RequestFactory, override_settings
from structlog.testing import capture_logs

from django_flosse import abroadcast, broadcast, subscribe
from django_flosse.broadcasting.backends import get_backend
from django_flosse.broadcasting.backends.base import Subscriber
from django_flosse.broadcasting.backends.redis import EPOCH_KEY, RedisBackend, _complete
from tests.support.observe import wait_until
from tests.support.redis import RedisServer, broadcast_after_restart, own_redis_server
from tests.support.redis import redis_server_fixture as redis_server_fixture  # the fixture
from tests.support.subscribing import Reader, resume_while_publishing, wait_for

WAIT = 15.0  # seconds any expected event may take on a loaded machine (never reached)


def settings_for(server: RedisServer, **extra: Any) -> Any:
    return override_settings(
        FLOSSE={"BROADCAST_BACKEND": "redis", "BROADCAST_REDIS_URL": server.url, **extra}
    )


@pytest.fixture
def redis(redis_server: RedisServer) -> Iterator[RedisServer]:
    """The session's Redis, emptied, with this test's settings pointing at it."""
    with redis_server.client() as client:
        client.flushall()
    with settings_for(redis_server):
        yield redis_server


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A Redis of this test only (it will be stopped and restarted)."""
    with own_redis_server() as server, settings_for(server):
        yield server


def request(last_id: str = "", *, query: bool = False) -> Any:
    factory = RequestFactory()
    if query:
        return factory.get("/", {"lastEventId": last_id})
    return factory.get("/", HTTP_LAST_EVENT_ID=last_id) if last_id else factory.get("/")


def backend() -> RedisBackend:
    found = get_backend()
    assert isinstance(found, RedisBackend)
    return found


def joined(topic: str, count: int = 1) -> None:
    """Wait until ``count`` subscribers of this process are joined to ``topic``."""
    assert wait_until(lambda: backend().subscribers(topic) >= count, WAIT) is not None


async def take(subscription: Any, count: int) -> list[Any]:
    """The first ``count`` events of an async iteration (bounded in time)."""
    events = []

    async def run() -> None:
        async for event in subscription:
            events.append(event)
            if len(events) >= count:
                return

    try:
        await asyncio.wait_for(run(), WAIT)
    finally:
        subscription.close()
    return events


def datas(events: list[Any]) -> list[str]:
    return [event.data for event in events]


# --------------------------------------------------------------------------- ids


def test_positions_are_stream_ids_and_parsing_is_strict(redis: RedisServer) -> None:
    b = backend()
    assert b.zero == (0, 0)
    assert b.format_position((1700000000000, 3)) == "1700000000000-3"
    assert b.parse_position("1700000000000-3") == (1700000000000, 3)
    for bad in ["", "-", "1", "1-", "-1", "1-2-3", "a-1", "1-a", " 1-2", "1-2\n", "１-2",
                "1" * 21 + "-1", "99999999999999999999-0", "1-" + "9" * 30]:  # fmt: skip
        assert b.parse_position(bad) is None, bad
    assert (1, 9) < (2, 0)  # positions order like the stream


def test_tag_is_the_epoch_in_redis(redis: RedisServer) -> None:
    tag = backend().tag
    with redis.client() as client:
        assert client.get(EPOCH_KEY) == tag[1:].encode()
    assert tag.startswith("r") and tag[1:].isalnum()
    assert backend().tag == tag


def test_missing_redis_py_says_what_to_install(
    redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)
    monkeypatch.setitem(sys.modules, "redis.asyncio", None)
    with pytest.raises(ImproperlyConfigured, match=r"pip install django-flosse\[redis\]"):
        get_backend()


# --------------------------------------------------------------------------- live


async def test_async_subscribers_get_every_event_once_in_order(redis: RedisServer) -> None:
    subscriptions = [subscribe(request(), "orders") for _ in range(5)]
    tasks = [asyncio.ensure_future(take(s, 50)) for s in subscriptions]
    await asyncio.to_thread(joined, "orders", 5)
    for i in range(25):
        await abroadcast("orders", str(i))
    for i in range(25, 50):
        await asyncio.to_thread(broadcast, "orders", str(i))
    results = await asyncio.gather(*tasks)
    for events in results:
        assert datas(events) == [str(i) for i in range(50)]
        assert len({e.id for e in events}) == 50
    # One id per event, the same for every subscriber of the topic.
    assert [e.id for e in results[0]] == [e.id for e in results[4]]


def test_sync_subscribers_multi_topic_order_per_topic(redis: RedisServer) -> None:
    readers = [Reader(subscribe(request(), "a", "b"), until=40, start=False) for _ in range(3)]
    for reader in readers:
        reader.start()
    joined("a", 3)
    b = backend()
    from django_flosse.broadcasting._publish import _draft

    for i in range(10):  # batches: several drafts in one MULTI, in order
        b.publish([_draft("a", f"a{i}", None), _draft("b", f"b{i}", None)])
    for i in range(10, 20):
        broadcast("b", f"b{i}", event="tick")
        broadcast("a", f"a{i}")
    for reader in readers:
        events = reader.result()
        for topic in "ab":
            mine = [d for d in datas(events) if d.startswith(topic)]
            assert mine == [f"{topic}{i}" for i in range(20)]
        assert [e.event for e in events if e.data.startswith("b")][10:] == ["tick"] * 10


async def test_a_new_topic_is_read_at_once(
    redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A join that brings a topic interrupts the blocking read: with a read that blocks
    for a minute, the new topic's event still arrives (within WAIT, well under it)."""
    from django_flosse.broadcasting.backends import redis as module

    monkeypatch.setattr(module, "BLOCK_MS", 60_000)
    monkeypatch.setattr(module, "COMMAND_TIMEOUT", 120.0)
    first = asyncio.ensure_future(take(subscribe(request(), "old"), 1))
    await asyncio.to_thread(joined, "old")
    second = asyncio.ensure_future(take(subscribe(request(), "new"), 1))
    await asyncio.to_thread(joined, "new")
    await abroadcast("new", "x")
    assert datas(await second) == ["x"]
    await abroadcast("old", "y")
    assert datas(await first) == ["y"]


def test_a_join_of_a_followed_topic_is_answered_at_once(redis: RedisServer) -> None:
    """The reader follows the topic already: the join takes its cut on the calling thread
    (no trip through the loop thread; a reconnect storm's busy event loop made the way back
    cost about 10 ms). A new topic's join asks Redis, on the loop thread."""
    watcher = Reader(subscribe(request(), "followed"), until=1)
    joined("followed")
    b = backend()
    follower, newcomer = Subscriber(("followed",), 100, None), Subscriber(("fresh",), 100, None)
    at_once = b.join(follower)
    assert at_once.done()
    assert b.join(newcomer).result(WAIT) == {"fresh": (0, 0)}
    broadcast("followed", "x")
    assert datas(watcher.result()) == ["x"]  # delivered to both in one batch
    assert [m.topic for m in follower.queue] == ["followed"]
    for subscriber in (follower, newcomer):
        subscriber.close()
        b.leave(subscriber)


def test_joins_at_once_while_the_reader_delivers_miss_and_repeat_nothing(
    redis: RedisServer,
) -> None:
    """Subscribers resuming while a publisher runs take their cut at once (or on the loop
    thread while the reader holds the fan-out): each gets every event after its id, once."""
    watcher = Reader(subscribe(request(), "busy2"))
    joined("busy2")
    for i in range(10):
        broadcast("busy2", f"e{i}")
    resume_while_publishing("busy2", [event.id for event in watcher.wait_for(10)], total=150)
    watcher.stop()


def test_joins_past_the_pool_size_neither_leak_nor_exhaust_it(redis: RedisServer) -> None:
    """Every join of a new topic cancels the reader's blocked XREAD, and a reconnect storm
    joins many at once: the pool (MAX_CONNECTIONS) must get every connection back."""
    from django_flosse.broadcasting.backends.redis import MAX_CONNECTIONS

    topics = [f"pool{i}" for i in range(3 * MAX_CONNECTIONS)]
    readers = []
    for topic in topics:  # one new topic after another: one cancelled read each
        readers.append(Reader(subscribe(request(), topic), until=1))
        joined(topic)
    storm = [Reader(subscribe(request(), "storm"), until=1) for _ in range(4 * MAX_CONNECTIONS)]
    joined("storm", len(storm))
    for topic in [*topics, "storm"]:
        broadcast(topic, topic)
    for reader, topic in zip(readers, topics, strict=True):
        assert datas(reader.result()) == [topic]
    assert all(datas(reader.result()) == ["storm"] for reader in storm)
    with redis.client() as client:
        assert len(client.client_list()) - 1 <= MAX_CONNECTIONS  # ours, not this one


def test_publish_outside_and_inside_a_transaction(
    redis: RedisServer, transactional_db: None
) -> None:
    from django.db import transaction

    reader = Reader(subscribe(request(), "tx"), until=2, start=False)
    reader.start()
    joined("tx")
    with transaction.atomic():
        broadcast("tx", "committed")
    with pytest.raises(RuntimeError), transaction.atomic():
        broadcast("tx", "rolled back")
        raise RuntimeError
    broadcast("tx", "after")
    assert datas(reader.result()) == ["committed", "after"]


# --------------------------------------------------------------------------- resume


async def _history(topic: str, count: int) -> list[Any]:
    """Publish ``count`` events to ``topic`` while one subscriber records them."""
    task = asyncio.ensure_future(take(subscribe(request(), topic), count))
    await asyncio.to_thread(joined, topic)
    for i in range(count):
        await abroadcast(topic, str(i))
    return await task


@pytest.mark.parametrize("query", [False, True], ids=["header", "query"])
async def test_resume_replays_then_goes_live_exactly_once(redis: RedisServer, query: bool) -> None:
    events = await _history("feed", 30)
    last = events[9].id  # the client saw 0..9
    resumed = subscribe(request(last, query=query), "feed")
    task = asyncio.ensure_future(take(resumed, 30))
    await asyncio.to_thread(joined, "feed")
    for i in range(30, 40):
        await abroadcast("feed", str(i))
    assert datas(await task) == [str(i) for i in range(10, 40)]


def test_resume_with_publishes_during_the_replay(redis: RedisServer) -> None:
    """Events published while a resumed subscriber joins and replays come once, in order."""
    for i in range(600):  # more than one page of history
        broadcast("busy", str(i))
    with redis.client() as client:
        first_id = client.xrange("flosse:topic:busy", count=1)[0][0].decode()
    from django_flosse.broadcasting._ids import IdFormat

    b = backend()
    ids = IdFormat(b.tag, ["busy"], b.format_position, b.parse_position)
    last = ids.format({"busy": b.parse_position(first_id)})
    stop = threading.Event()
    published = [600]

    def publisher() -> None:
        while not stop.is_set() and published[0] < 800:
            broadcast("busy", str(published[0]))
            published[0] += 1

    thread = threading.Thread(target=publisher)
    thread.start()
    try:
        reader = Reader(subscribe(request(last), "busy"), until=799, start=False)
        reader.start()
        assert wait_until(lambda: published[0] >= 800, WAIT) is not None
    finally:
        stop.set()
        thread.join(WAIT)
    assert datas(reader.result()) == [str(i) for i in range(1, 800)]


def test_trimmed_id_gets_a_reset(own_redis: RedisServer) -> None:
    with own_redis.client() as client:
        client.config_set("stream-node-max-entries", 5)  # so MAXLEN ~ trims this small
    with settings_for(own_redis, BROADCAST_HISTORY=10):
        broadcast("t", "first")
        with own_redis.client() as client:
            first = client.xrange("flosse:topic:t", count=1)[0][0].decode()
        for i in range(100):
            broadcast("t", str(i))
        b = backend()
        from django_flosse.broadcasting._ids import IdFormat

        old = IdFormat(b.tag, ["t"], b.format_position, b.parse_position).format(
            {"t": b.parse_position(first)}
        )
        reader = Reader(subscribe(request(old), "t"), until=2, start=False)
        reader.start()
        joined("t")
        broadcast("t", "new")
        reset, new = reader.result()
    assert reset.event == "flosse-reset" and json.loads(reset.data) == {"topics": ["t"]}
    assert new.data == "new"


@pytest.mark.parametrize("how", ["made up", "another subscription", "ahead"])
def test_ids_that_cannot_be_placed_get_a_reset(redis: RedisServer, how: str) -> None:
    broadcast("x", "0")
    b = backend()
    from django_flosse.broadcasting._ids import IdFormat

    if how == "made up":
        last = "r1234.abc.1-1"
    elif how == "another subscription":
        last = IdFormat(b.tag, ["y"], b.format_position, b.parse_position).format({"y": (1, 0)})
    else:
        ahead = (int(time.time() * 1000) + 10**9, 0)
        last = IdFormat(b.tag, ["x"], b.format_position, b.parse_position).format({"x": ahead})
    reader = Reader(subscribe(request(last), "x"), until=2, start=False)
    reader.start()
    joined("x")
    broadcast("x", "1")
    reset, event = reader.result()
    assert (reset.event, event.data) == ("flosse-reset", "1")


async def test_an_id_of_before_flushall_gets_a_reset(redis: RedisServer) -> None:
    events = await _history("f", 3)
    old_tag = backend().tag
    # A subscriber that is there when the reader finds the new life is closed with the
    # others (its client reconnects: test_restart_without_data_resets_and_nothing_hangs).
    # This one comes once the process knows: a watcher keeps the reader reading meanwhile.
    watcher = asyncio.ensure_future(take(subscribe(request(), "w"), 1))
    await asyncio.to_thread(joined, "w")
    with redis.client() as client:
        client.flushall()
    assert await asyncio.to_thread(wait_until, lambda: backend().tag != old_tag, WAIT) is not None
    assert await watcher == []  # closed by the reader, no event
    task = asyncio.ensure_future(take(subscribe(request(events[0].id), "f"), 2))
    await asyncio.to_thread(joined, "f")
    await abroadcast("f", "after")
    reset, event = await task
    assert (reset.event, event.data) == ("flosse-reset", "after")


def test_complete_rule() -> None:
    """``_complete``: Redis 7's XINFO STREAM fields decide whether ``after`` can resume."""
    info = {
        "max-deleted-entry-id": b"0-0",
        "first-entry": (b"5-0", {}),
        "last-generated-id": b"9-0",
    }
    assert _complete(info, (5, 0)) and _complete(info, (0, 0)) and _complete(info, (9, 0))
    assert not _complete(info, (4, 0))  # made again: its first entry is past an id it had
    trimmed = {**info, "max-deleted-entry-id": b"4-0"}
    assert _complete(trimmed, (4, 0)) and _complete(trimmed, (6, 0))
    assert not _complete(trimmed, (3, 0)) and not _complete(trimmed, (0, 0))
    assert _complete(None, (0, 0)) and not _complete(None, (1, 0))
    redis6 = {"first-entry": (b"5-0", {}), "last-generated-id": b"9-0"}
    assert _complete(redis6, (5, 0)) and _complete(redis6, (9, 0)) and not _complete(redis6, (4, 0))


# --------------------------------------------------------------------------- shared reads


def _calls(server: RedisServer, command: str) -> int:
    with server.client() as client:
        stats = client.info("commandstats").get(f"cmdstat_{command}")
    return int(stats["calls"]) if stats else 0


def test_reads_of_the_same_position_in_flight_share_one_command(
    redis: RedisServer,
) -> None:
    for i in range(5):
        broadcast("shared", str(i))
    b = backend()
    b.tag  # noqa: B018 (the loop thread is up)
    before = _calls(redis, "xrange")
    with redis.client() as client:
        client.execute_command("CLIENT", "PAUSE", "500", "ALL")  # both reads wait for Redis
    futures = [b.read("shared", (0, 0), (2**63, 0)) for _ in range(10)]
    other = b.read("shared", (1, 0), (2**63, 0))
    pages = [f.result(WAIT) for f in futures]
    other.result(WAIT)
    assert all(f is futures[0] for f in futures)
    assert [m.body for m in pages[0].messages] == [f"data: {i}\n\n".encode() for i in range(5)]
    assert pages[0].complete
    assert _calls(redis, "xrange") - before == 2  # one per (topic, after)
    # Done: the next read is a new command.
    b.read("shared", (0, 0), (2**63, 0)).result(WAIT)
    assert _calls(redis, "xrange") - before == 3


def test_reads_of_one_position_one_after_the_other_share_one_command(
    redis: RedisServer,
) -> None:
    """A reconnect storm comes over seconds, not in one instant: found by
    tests/reliability/test_broadcast_storm.py (985 XRANGE for 1,000 clients at 20
    positions); the page is now kept for the next resume at its position."""
    for i in range(5):
        broadcast("spread", str(i))
    b = backend()
    head = b.read("spread", (0, 0), (2**63, 0)).result(WAIT).messages[-1].position
    before = _calls(redis, "xrange")
    pages = [b.read("spread", (0, 0), head).result(WAIT) for _ in range(10)]
    assert _calls(redis, "xrange") - before == 0  # kept from the read above
    assert all(page is pages[0] for page in pages)
    broadcast("spread", "5")  # a newer event than the kept page holds: read again
    b.read("spread", (0, 0), (2**63, 0)).result(WAIT)
    assert _calls(redis, "xrange") - before == 1


def test_a_redis_that_lost_its_data_forgets_the_kept_pages(redis: RedisServer) -> None:
    for i in range(3):
        broadcast("lost", str(i))
    b = backend()
    b.tag  # noqa: B018 (the epoch of this life is known)
    b.read("lost", (0, 0), (0, 0)).result(WAIT)
    assert len(b._kept) == 1
    with redis.client() as client:
        client.flushall()
    b._submit(b._known_epoch).result(WAIT)  # what the reader does when the epoch changed
    assert len(b._kept) == 0


# --------------------------------------------------------------------------- faults


def _running_loop_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "flosse-broadcast-redis"]


def _where(threads: list[threading.Thread]) -> str:
    """Where each of ``threads`` is (for the message of a failed assertion)."""
    frames = sys._current_frames()
    return "\n".join(
        f"{thread!r}:\n" + "".join(traceback.format_stack(frames[thread.ident]))
        for thread in threads
        if thread.ident in frames
    )


def test_close_stops_the_thread_and_ends_subscriptions(redis: RedisServer) -> None:
    reader = Reader(subscribe(request(), "c"), until=1, start=False)
    reader.start()
    joined("c")
    b = backend()
    loop_thread = b._thread._thread
    assert loop_thread is not None
    started = time.monotonic()
    b.close()
    took = time.monotonic() - started
    reader.thread.join(WAIT)
    assert not reader.thread.is_alive() and reader.error is None and reader.events == []
    assert not loop_thread.is_alive(), f"close() returned after {took:.2f} s\n" + _where(
        [loop_thread]
    )
    left = _running_loop_threads()  # another test's backend that did not stop
    assert left == [], _where(left)


def test_outage_with_data_kept_subscribers_stay(own_redis: RedisServer) -> None:
    """Redis stops and comes back with its data: publish raises meanwhile, the reader logs
    once and reconnects, and the subscribers receive what comes after, without a reset."""
    with own_redis.client() as client:
        client.config_set("save", "")  # SHUTDOWN SAVE writes a snapshot all the same
    reader = Reader(subscribe(request(), "o"), until=3, start=False)
    with capture_logs() as logs:
        reader.start()
        joined("o")
        broadcast("o", "before")
        assert wait_until(lambda: len(reader.events) == 1, WAIT) is not None
        own_redis.shutdown_saving()
        with pytest.raises(Exception, match=r"could not publish to Redis at redis://127\.0\.0\.1"):
            broadcast("o", "lost")
        assert wait_until(lambda: len(logs) > 0, WAIT) is not None
        time.sleep(0.5)  # a few reconnect attempts (the backoff starts at 0.05-0.1 s)
        own_redis.start()
        assert wait_until(lambda: _published(own_redis, "o", "during"), WAIT) is not None
        broadcast("o", "after")
        events = reader.result()
    assert datas(events) == ["before", "during", "after"]
    errors = [r for r in logs if r["event"] == "sse.broadcast.backend_error" and "error" in r]
    assert len(errors) == 1, errors
    assert errors[0]["url"] == own_redis.url
    assert next(r for r in logs if "recovered_after" in r)["part"] == "reader"


def _published(server: RedisServer, topic: str, data: str) -> bool:
    try:
        broadcast(topic, data)
    except Exception:
        return False
    return True


def test_restart_without_data_resets_and_nothing_hangs(own_redis: RedisServer) -> None:
    """Redis killed and started empty: live subscriptions end (the client reconnects), their
    ids belong to the past life and get a reset; new subscribers and publishers work."""
    first = Reader(subscribe(request(), "k"), until=5, start=False)
    first.start()
    joined("k")
    broadcast("k", "0")
    assert wait_until(lambda: len(first.events) == 1, WAIT) is not None
    old_tag = backend().tag
    own_redis.kill()
    own_redis.start()
    first.thread.join(WAIT)  # the reader found a new epoch and closed it
    assert not first.thread.is_alive() and first.error is None
    assert datas(first.events) == ["0"]
    assert backend().tag != old_tag
    second = Reader(subscribe(request(first.events[0].id), "k"), until=2, start=False)
    second.start()
    joined("k")
    broadcast_after_restart("k", "1")
    reset, event = second.result()
    assert (reset.event, event.data) == ("flosse-reset", "1")


async def test_publish_from_short_lived_loops(redis: RedisServer) -> None:
    """abroadcast from loops that come and go (async_to_sync makes one per call)."""
    from asgiref.sync import async_to_sync

    task = asyncio.ensure_future(take(subscribe(request(), "loops"), 5))
    await asyncio.to_thread(joined, "loops")

    def publish_five() -> None:
        for i in range(5):
            async_to_sync(abroadcast)("loops", str(i))

    await asyncio.to_thread(publish_five)
    assert datas(await task) == [str(i) for i in range(5)]


def test_a_join_while_redis_is_down_waits_for_it(own_redis: RedisServer) -> None:
    """A stream opened during an outage waits for Redis, as the live ones do (its stream
    sends heartbeats), instead of ending with an error its client would reconnect into; it
    gives up once its subscriber is closed (the client went away). Publishing fails at once."""
    import redis as redis_py

    backend().tag  # noqa: B018 (epoch known)
    own_redis.kill()
    waiting = Subscriber(("down",), 10, None)
    gone = Subscriber(("down",), 10, None)
    joining, abandoned = backend().join(waiting), backend().join(gone)
    with pytest.raises(Exception, match="could not publish"):
        broadcast("down", "x")
    assert not joining.done() and not abandoned.done()
    gone.close()
    with pytest.raises(redis_py.ConnectionError):
        abandoned.result(WAIT)
    own_redis.start()  # empty: a new life, where the topic has no stream yet
    assert joining.result(WAIT) == {"down": (0, 0)}
    broadcast_after_restart("down", "after")
    wait_for(lambda: len(waiting.queue) == 1, "the live event")


def test_the_history_is_trimmed_and_expires(redis: RedisServer) -> None:
    with settings_for(redis, BROADCAST_HISTORY=50, BROADCAST_HISTORY_SECONDS=600):
        for i in range(400):
            broadcast("trim", str(i))
        with redis.client() as client:
            length = client.xlen("flosse:topic:trim")
            ttl = client.ttl("flosse:topic:trim")
    assert 50 <= length < 400  # approximate: at least the history, whole nodes removed
    assert 0 < ttl <= 600


# --------------------------------------------------------------------------- docs/async.md


async def test_the_async_page_pubsub_example_runs_on_redis(redis: RedisServer) -> None:
    """The ``broadcast``/``subscribe`` example of docs/async.md, against this Redis."""
    import re
    from pathlib import Path

    from django_flosse.testing import acollect_events

    page = (Path(__file__).parent.parent / "docs" / "async.md").read_text()
    section = page.split("## Pub/sub", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert code is not None and "subscribe(request" in code[1]
    namespace: dict[str, Any] = {}
    exec(compile(code[1], "docs/async.md", "exec"), namespace)

    response = await namespace["chat_feed"](request())
    collecting = asyncio.ensure_future(acollect_events(response, max_events=2, timeout=WAIT))
    await asyncio.to_thread(joined, "chat")
    await namespace["post_message"]("hello")
    await namespace["post_message"]("again")
    events = await collecting
    assert [(e.event, e.json()) for e in events] == [
        ("message", {"text": "hello"}),
        ("message", {"text": "again"}),
    ]
    assert events[0].id.startswith(backend().tag + ".")
