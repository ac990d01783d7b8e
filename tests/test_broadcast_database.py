"""The ``database`` broadcast backend in this process, on SQLite and on PostgreSQL.

SQLite is the test database file; PostgreSQL is the throwaway cluster of
``tests/support/postgres.py``, reached through a database alias added to this process
(``tests.support.broadcast.pg_alias``) and named by ``FLOSSE["BROADCAST_DATABASE"]``.
Subscribers are real ``subscribe()`` iterators (sync ones in threads, async ones on the
test's loop); the reader thread, the LISTEN session and the publishing threads are the
backend's own.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import NotSupportedError, OperationalError, connections, transaction
from django.test import RequestFactory, override_settings
from structlog.testing import capture_logs

from django_flosse import abroadcast, broadcast, subscribe
from django_flosse.broadcasting import RESET_EVENT
from django_flosse.broadcasting.backends import get_backend
from django_flosse.broadcasting.backends.database import DatabaseBackend
from django_flosse.models import BroadcastMessage, BroadcastTopic
from tests.support.broadcast import WAIT, pg_alias
from tests.support.observe import wait_until
from tests.support.postgres import postgres_fixture as postgres_fixture  # the "postgres" fixture
from tests.support.subscribing import Reader, request, resume_while_publishing

# "__all__": the default database and, when the cluster runs, the "pg" alias (threads may
# only connect to the aliases a test names).
pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


def reader_of(*topics: str, last_id: str | None = None, query_id: str | None = None) -> Reader:
    """A sync subscriber of ``topics`` in a thread (not started: ``start()`` it)."""
    return Reader(subscribe(request(last_id, query_id=query_id), *topics), start=False)


class Setup:
    """The database the backend uses in one test."""

    def __init__(self, alias: str) -> None:
        self.alias = alias

    @property
    def vendor(self) -> str:
        return str(connections[self.alias].vendor)

    def backend(self) -> DatabaseBackend:
        backend = get_backend()
        assert isinstance(backend, DatabaseBackend)
        return backend

    def messages(self, topic: str) -> list[tuple[int, str]]:
        rows = BroadcastMessage.objects.using(self.alias).filter(topic=topic)
        return list(rows.order_by("position").values_list("position", "body"))

    def watch(self, topic: str, **ids: str) -> Reader:
        """A sync subscriber of ``topic`` that has joined (it gets what comes next)."""
        joined = self.backend().subscribers(topic)
        collector = reader_of(topic, **ids)
        collector.start()
        self.wait_joined(topic, joined + 1)
        return collector

    def wait_joined(self, topic: str, count: int) -> None:
        backend = self.backend()
        joined = wait_until(lambda: backend.subscribers(topic) >= count, WAIT)
        assert joined is not None, f"{backend.subscribers(topic)} of {count} joined {topic!r}"


def _flosse(**extra: Any) -> dict[str, Any]:
    from django.conf import settings

    return {**settings.FLOSSE, "BROADCAST_BACKEND": "database", **extra}


@pytest.fixture(scope="module", autouse=True)
def _pg(request: pytest.FixtureRequest, django_db_setup: None) -> Iterator[str | None]:
    """The "pg" alias for the whole module, or None when PostgreSQL is not installed (its
    tests skip then). Added after the session's test databases are set up (they are the
    default one's: the cluster's database is migrated already), and before each test's
    setup, which lets threads connect to the aliases it names."""
    try:
        cluster = request.getfixturevalue("postgres")
    except pytest.skip.Exception:
        yield None
        return
    with pg_alias(cluster) as alias:
        yield alias


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, _pg: str | None) -> Iterator[Setup]:
    if request.param == "sqlite":
        alias = "default"
    elif _pg is None:
        pytest.skip("PostgreSQL is not installed")
    else:
        alias = _pg
    with override_settings(FLOSSE=_flosse(BROADCAST_DATABASE=alias)):
        yield Setup(alias)


def _bodies(data: list[str]) -> list[str]:
    return [f"data: {d}\n\n" for d in data]


# --------------------------------------------------------------------------- positions
def test_positions_are_gap_free_and_in_commit_order_with_concurrent_publishers(
    db: Setup,
) -> None:
    watcher = db.watch("race")
    threads, per_thread = 4, 25

    def publish(n: int) -> None:
        try:
            for i in range(per_thread):
                broadcast("race", f"{n}-{i}")
        finally:
            connections.close_all()

    workers = [threading.Thread(target=publish, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(WAIT)
    total = threads * per_thread
    rows = db.messages("race")
    assert [position for position, _ in rows] == list(range(1, total + 1))
    assert BroadcastTopic.objects.using(db.alias).get(topic="race").position == total
    # Each publisher's own events keep its call order.
    published = [body.split()[1] for _, body in rows]
    for n in range(threads):
        mine = [p for p in published if p.startswith(f"{n}-")]
        assert mine == [f"{n}-{i}" for i in range(per_thread)]
    # The live subscriber saw all of them once, in position order.
    events = watcher.wait_for(total)
    assert [e.data for e in events] == published
    watcher.stop()
    assert len(watcher.events) == total


# --------------------------------------------------------------------------- transactions
def test_a_publish_inside_atomic_is_delivered_on_commit_and_not_on_rollback(db: Setup) -> None:
    watcher = db.watch("tx")
    with transaction.atomic(using=db.alias):
        broadcast("tx", "committed")
        assert db.messages("tx") == []  # not before the commit
    watcher.wait_for(1)

    class Boom(Exception):
        pass

    with pytest.raises(Boom), transaction.atomic(using=db.alias):
        broadcast("tx", "rolled back")
        raise Boom
    broadcast("tx", "after")
    watcher.wait_for(2)
    watcher.stop()
    assert watcher.data() == ["committed", "after"]
    assert [body for _, body in db.messages("tx")] == _bodies(["committed", "after"])


def test_on_commit_false_publishes_at_once_even_if_the_transaction_rolls_back(
    db: Setup,
) -> None:
    watcher = db.watch("now")

    class Boom(Exception):
        pass

    if db.vendor == "sqlite":
        # One writer: a connection of its own would wait for this very transaction.
        with pytest.raises(NotSupportedError, match="SQLite"), transaction.atomic():
            broadcast("now", "refused", on_commit=False)
        assert db.messages("now") == []
        watcher.stop()
        return
    with pytest.raises(Boom), transaction.atomic(using=db.alias):
        broadcast("now", "independent", on_commit=False)
        watcher.wait_for(1)  # delivered before the transaction even ends
        raise Boom
    watcher.stop()
    assert watcher.data() == ["independent"]
    assert [body for _, body in db.messages("now")] == _bodies(["independent"])


def test_a_postgresql_notification_wakes_the_reader_between_two_polls(db: Setup) -> None:
    if db.vendor != "postgresql":
        pytest.skip("only PostgreSQL rings; other databases are polled")
    from django_flosse.broadcasting._messages import make_draft
    from django_flosse.broadcasting.backends._store import store_and_close

    with override_settings(
        FLOSSE=_flosse(BROADCAST_DATABASE=db.alias, BROADCAST_POLL_INTERVAL=3600)
    ):
        watcher = db.watch("bell")
        listener = db.backend()._listener
        assert listener is not None and listener.listening.wait(WAIT)
        draft = make_draft("bell", "rung", None, dumps=str, max_bytes=1000, published_at=0.0)
        # Stored as another process would: no poke of this process's reader, and no
        # poll for an hour: only the notification can bring it.
        thread = threading.Thread(
            target=store_and_close, args=(db.alias, [draft], db.backend().config)
        )
        thread.start()
        thread.join(WAIT)
        watcher.wait_for(1)
        watcher.stop()
    assert watcher.data() == ["rung"]


def test_an_id_given_out_by_another_process_is_never_ahead_of_a_join(db: Setup) -> None:
    """A client that reconnects to this process with the id of an event another process
    already sent resumes there, even before this process's reader has polled it."""
    from django_flosse.broadcasting._ids import IdFormat
    from django_flosse.broadcasting._messages import make_draft
    from django_flosse.broadcasting.backends._store import store_and_close

    with override_settings(
        FLOSSE=_flosse(BROADCAST_DATABASE=db.alias, BROADCAST_POLL_INTERVAL=3600)
    ):
        watcher = db.watch("ahead")  # the reader tracks the topic, and will not poll
        backend = db.backend()
        if backend._listener is not None:
            backend._listener.close()  # no doorbell either: as if it rang late
        drafts = [
            make_draft("ahead", f"e{i}", None, dumps=str, max_bytes=1000, published_at=0.0)
            for i in range(5)
        ]
        # Published by "another process" (no poke of this one's reader).
        thread = threading.Thread(target=store_and_close, args=(db.alias, drafts, backend.config))
        thread.start()
        thread.join(WAIT)
        ids = IdFormat(backend.tag, ["ahead"], backend.format_position, backend.parse_position)
        resumed = reader_of("ahead", last_id=ids.format({"ahead": 3}))
        resumed.start()
        resumed.wait_for(2)
        broadcast("ahead", "live")
        resumed.wait_for(3)
        resumed.stop()
        watcher.stop()
    assert resumed.data() == ["e3", "e4", "live"]


def test_a_join_the_reader_needs_no_query_for_is_answered_at_once(
    db: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A join of a tracked topic, with no id or one the reader has delivered, takes its cut
    on the calling thread (no round, no thread hop: a reconnect storm's busy event loop made
    that hop cost about 10 ms); one ahead of the reader goes through it (it catches up)."""
    from django_flosse.broadcasting.backends.base import Subscriber

    watcher = db.watch("at-once")
    broadcast("at-once", "e0")
    watcher.wait_for(1)
    backend = db.backend()
    served: list[Subscriber] = []
    serve = backend._serve_joins

    def serving(joins: list[tuple[Subscriber, Any]]) -> None:
        served.extend(subscriber for subscriber, _ in joins)
        serve(joins)

    monkeypatch.setattr(backend, "_serve_joins", serving)

    def join(resumes_at: dict[str, int] | None) -> tuple[Subscriber, dict[str, Any], bool]:
        subscriber = Subscriber(("at-once",), 100, None)
        subscriber.resumes_at = resumes_at
        future = backend.join(subscriber)
        at_once = future.done()
        cut = future.result(WAIT)
        backend.leave(subscriber)
        return subscriber, cut, at_once

    for resumes_at in (None, {"at-once": 0}, {"at-once": 1}):
        subscriber, cut, at_once = join(resumes_at)
        assert (cut, at_once, subscriber in served) == ({"at-once": 1}, True, False)
    subscriber, cut, at_once = join({"at-once": 2})  # ahead: published elsewhere, maybe
    assert (cut, subscriber in served) == ({"at-once": 1}, True)
    watcher.stop()


def test_joins_at_once_while_the_reader_delivers_miss_and_repeat_nothing(db: Setup) -> None:
    """Subscribers resuming while a publisher runs take their cut at once (or through the
    reader when it holds the fan-out): each gets every event after its id, once, in order."""
    watcher = db.watch("busy")
    for i in range(10):
        broadcast("busy", f"e{i}")
    resume_while_publishing("busy", [event.id for event in watcher.wait_for(10)], total=150)
    watcher.stop()


# --------------------------------------------------------------------------- subscribers
async def test_async_and_sync_subscribers_get_every_event_of_their_topics_once_in_order(
    db: Setup,
) -> None:
    import asyncio

    from asgiref.sync import sync_to_async

    sync_a, sync_ab = reader_of("a"), reader_of("a", "b")
    for collector in (sync_a, sync_ab):
        collector.start()
    got: dict[str, list[str]] = {"a": [], "b": []}

    async def consume(topic: str, count: int) -> None:
        async for event in subscribe(RequestFactory().get("/"), topic):
            got[topic].append(event.data)
            if len(got[topic]) == count:
                return

    tasks = [asyncio.create_task(consume("a", 30)), asyncio.create_task(consume("b", 20))]
    await sync_to_async(db.wait_joined, thread_sensitive=False)("a", 3)
    await sync_to_async(db.wait_joined, thread_sensitive=False)("b", 2)
    expected_a, expected_b = [f"a{i}" for i in range(30)], [f"b{i}" for i in range(20)]

    def publish() -> None:
        try:
            for i in range(30):
                broadcast("a", f"a{i}")
                if i < 20:
                    broadcast("b", f"b{i}")
        finally:
            connections.close_all()

    await sync_to_async(publish, thread_sensitive=False)()
    await abroadcast("a", "a-last")
    await asyncio.wait_for(asyncio.gather(*tasks), WAIT)
    assert got == {"a": expected_a, "b": expected_b}
    await sync_to_async(sync_a.wait_for, thread_sensitive=False)(31)
    await sync_to_async(sync_ab.wait_for, thread_sensitive=False)(51)
    for collector in (sync_a, sync_ab):
        await sync_to_async(collector.stop, thread_sensitive=False)()
    assert sync_a.data() == [*expected_a, "a-last"]
    both = sync_ab.data()
    assert [d for d in both if d.startswith("a")] == [*expected_a, "a-last"]
    assert [d for d in both if d.startswith("b")] == expected_b
    assert len(both) == 51


@pytest.mark.parametrize("how", ["header", "query"])
def test_resume_from_an_id_in_the_middle_of_the_history(db: Setup, how: str) -> None:
    first = db.watch("resume")
    for i in range(10):
        broadcast("resume", f"e{i}")
    events = first.wait_for(10)
    first.stop()
    middle = events[3].id
    again = reader_of(
        "resume", **({"last_id": middle} if how == "header" else {"query_id": middle})
    )
    again.start()
    again.wait_for(6)  # replayed from the history
    broadcast("resume", "live")
    again.wait_for(7)
    again.stop()
    assert again.data() == [f"e{i}" for i in range(4, 10)] + ["live"]
    assert [e.id for e in again.events[:6]] == [e.id for e in events[4:]]


def test_a_trimmed_position_gets_a_reset(db: Setup) -> None:
    with override_settings(FLOSSE=_flosse(BROADCAST_DATABASE=db.alias, BROADCAST_HISTORY=5)):
        first = db.watch("trim")
        for i in range(99):
            broadcast("trim", f"e{i}")
        # The live reader must not be more than 5 behind when the trim comes (it would get a
        # reset too): on PostgreSQL a publish (one round trip) outpaces it on a busy machine.
        first.wait_for(99)
        broadcast("trim", "e99")  # the 100th publish trims the topic to its last 5
        events = first.wait_for(100)
        first.stop()
        assert [p for p, _ in db.messages("trim")] == list(range(96, 101))
        late = reader_of("trim", last_id=events[10].id)
        late.start()
        late.wait_for(1)
        broadcast("trim", "after")
        late.wait_for(2)
        late.stop()
    reset, after = late.events
    assert reset.event == RESET_EVENT and reset.data == '{"topics": ["trim"]}'
    assert after.data == "after"


def test_a_read_storm_shares_one_history_query(db: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(20):
        broadcast("storm", f"e{i}")
    n = 30
    backend = db.backend()
    joins, reads, queries = [0], [0], []
    real_join, real_read, real_round, real_messages = (
        backend.join,
        backend.read,
        backend._round,
        backend._messages,
    )

    def join(subscriber: Any) -> Any:
        joins[0] += 1
        return real_join(subscriber)

    def read(topic: str, after: Any, upto: Any) -> Any:
        reads[0] += 1
        return real_read(topic, after, upto)

    def round_() -> None:
        # Let every subscriber of the storm ask before the reader answers: the reads
        # then coincide as they do when thousands reconnect at once.
        if backend._joins:
            wait_until(lambda: joins[0] >= n, WAIT)
        if backend._reads:
            wait_until(lambda: reads[0] >= n, WAIT)
        real_round()

    def messages(topic: str, after: int, limit: int) -> Any:
        queries.append((topic, after))
        return real_messages(topic, after, limit)

    monkeypatch.setattr(backend, "join", join)
    monkeypatch.setattr(backend, "read", read)
    monkeypatch.setattr(backend, "_round", round_)
    monkeypatch.setattr(backend, "_messages", messages)
    from django_flosse.broadcasting._ids import IdFormat

    # The id of position 10, as a subscriber that saw it has it.
    ids = IdFormat(backend.tag, ["storm"], backend.format_position, backend.parse_position)
    storm = [reader_of("storm", last_id=ids.format({"storm": 10})) for _ in range(n)]
    for collector in storm:
        collector.start()
    for collector in storm:
        collector.wait_for(10)
    for collector in storm:
        collector.stop()
    assert all(c.data() == [f"e{i}" for i in range(10, 20)] for c in storm)
    assert queries.count(("storm", 10)) == 1, queries


def test_resumes_spread_over_time_share_one_history_query(
    db: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reconnect storm comes over a second or more, not in one instant: each read ends
    before the next client asks. Found by tests/reliability/test_broadcast_storm.py (a
    query per client); the page is now kept a few seconds for the next resume."""
    for i in range(20):
        broadcast("spread", f"e{i}")
    backend = db.backend()
    queries: list[tuple[str, int]] = []
    real_messages = backend._messages

    def messages(topic: str, after: int, limit: int) -> Any:
        queries.append((topic, after))
        return real_messages(topic, after, limit)

    monkeypatch.setattr(backend, "_messages", messages)
    from django_flosse.broadcasting._ids import IdFormat

    ids = IdFormat(backend.tag, ["spread"], backend.format_position, backend.parse_position)
    for _ in range(5):  # one after the other
        client = reader_of("spread", last_id=ids.format({"spread": 10}))
        client.start()
        client.wait_for(10)
        client.stop()
        assert client.data() == [f"e{i}" for i in range(10, 20)]
    assert queries.count(("spread", 10)) == 1, queries


def test_a_kept_page_never_hides_later_events(db: Setup) -> None:
    """An empty page ("nothing after this yet") is not kept, and a kept page is handed out
    only while it reaches the reader's bound: a resume after new events gets them."""
    first = db.watch("later")
    broadcast("later", "e0")
    (event,) = first.wait_for(1)
    first.stop()
    at_head = reader_of("later", last_id=event.id)  # reads an empty page
    at_head.start()
    db.wait_joined("later", 1)
    broadcast("later", "e1")
    at_head.wait_for(1)
    at_head.stop()
    broadcast("later", "e2")
    again = reader_of("later", last_id=event.id)  # the same position, two events later
    again.start()
    again.wait_for(2)
    again.stop()
    assert at_head.data() == ["e1"] and again.data() == ["e1", "e2"]


def test_the_reader_survives_a_database_error(
    db: Setup, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    watcher = db.watch("survive")
    broadcast("survive", "before")
    watcher.wait_for(1)
    backend = db.backend()
    with capture_logs() as logs:
        if db.vendor == "postgresql":
            # A real failure: PostgreSQL ends every other session (the reader's, the
            # listener's) as an administrator or a failover would.
            with connections[db.alias].cursor() as cursor:
                cursor.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
        else:
            failures = [3]
            real = backend._heads

            def failing(topics: list[str]) -> dict[str, int]:
                if failures[0] > 0:
                    failures[0] -= 1
                    raise OperationalError("disk I/O error (simulated)")
                return real(topics)

            monkeypatch.setattr(backend, "_heads", failing)
        for i in range(5):
            broadcast("survive", f"during{i}")
        watcher.wait_for(6)
        recovered = wait_until(
            lambda: (
                any(entry.get("part") == "reader" and "recovered_after" in entry for entry in logs)
                or db.vendor == "postgresql"
            ),
            WAIT,
        )
        assert recovered is not None
    watcher.stop()
    assert watcher.data() == ["before"] + [f"during{i}" for i in range(5)]
    errors = [e for e in logs if e["event"] == "sse.broadcast.backend_error" and "error" in e]
    parts = [e["part"] for e in errors]
    assert parts.count("reader") <= 1 and parts.count("listener") <= 1, errors
    if db.vendor == "sqlite":
        assert parts == ["reader"]


# --------------------------------------------------------------------------- the command
@pytest.mark.parametrize(
    ("args", "data", "event"),
    [
        (["hello world"], "hello world", None),
        (['{"a": 1}'], '{"a": 1}', None),  # sent as the string given
        (['{"a": [1, 2]}', "--json"], '{"a": [1, 2]}', None),
        (['"text"', "--json", "--event", "note"], "text", "note"),  # a JSON str is a str
    ],
)
def test_the_command_publishes(db: Setup, args: list[str], data: str, event: str | None) -> None:
    from io import StringIO

    out = StringIO()
    call_command("flosse_broadcast", "cmd", *args, stdout=out)
    assert "Broadcast to 'cmd'" in out.getvalue()
    ((position, body),) = db.messages("cmd")
    assert position == 1
    assert body == (f"event: {event}\n" if event else "") + f"data: {data}\n\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["cmd", "{nope", "--json"], "DATA is not valid JSON: Expecting property name"),
        (["bad topic!", "x"], "a broadcast topic is 1-128 characters"),
        (["cmd", "x", "--event", "flosse-reset"], "is reserved"),
    ],
)
def test_the_command_refuses_bad_input(db: Setup, args: list[str], message: str) -> None:
    with pytest.raises(CommandError, match=message):
        call_command("flosse_broadcast", *args)
    assert not BroadcastMessage.objects.using(db.alias).exists()
