"""The ``database`` backend's one-statement publish on PostgreSQL (``backends/_pgsql``).

A publish is one statement in autocommit (its own transaction): the statements are counted
with Django's ``execute_wrappers`` on the connection that publishes, which is the property a
user relies on (one round trip) and cannot flake. The rest are the guarantees the ORM path
gave and the statement must keep: positions gap-free and in commit order with concurrent
publishers, a topic's first event, the trims, batches of several topics from two
connections, the caller's ``atomic()``, and table names taken from the models.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import pytest
from django.db import DataError, OperationalError, connections, transaction
from django.db.backends.signals import connection_created
from django.test import override_settings
from structlog.testing import capture_logs

from django_flosse import abroadcast, broadcast
from django_flosse.broadcasting._messages import Draft, make_draft
from django_flosse.broadcasting.backends import _publisher, _store, close_backend, get_backend
from django_flosse.broadcasting.backends.database import TRIM_EVERY, DatabaseBackend
from django_flosse.models import BroadcastMessage, BroadcastTopic
from tests.support.broadcast import WAIT, pg_alias
from tests.support.observe import wait_until
from tests.support.postgres import PostgresCluster
from tests.support.postgres import postgres_fixture as postgres_fixture  # the "postgres" fixture
from tests.support.subscribing import Reader, request

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

HISTORY = 10


@pytest.fixture(scope="module", autouse=True)
def _pg(request: pytest.FixtureRequest, django_db_setup: None) -> Iterator[str]:
    """The "pg" alias of the session's cluster for the whole module (skips without it)."""
    cluster: PostgresCluster = request.getfixturevalue("postgres")
    with pg_alias(cluster) as alias:
        yield alias


@pytest.fixture(autouse=True)
def pg(_pg: str) -> Iterator[str]:
    from django.conf import settings

    flosse = {
        **settings.FLOSSE,
        "BROADCAST_BACKEND": "database",
        "BROADCAST_DATABASE": _pg,
        "BROADCAST_HISTORY": HISTORY,
    }
    with override_settings(FLOSSE=flosse):
        yield _pg


def backend() -> DatabaseBackend:
    current = get_backend()
    assert isinstance(current, DatabaseBackend)
    return current


def draft(topic: str, data: str) -> Draft:
    return make_draft(topic, data, None, dumps=str, max_bytes=1000, published_at=time.time())


def stored(topic: str) -> list[tuple[int, str]]:
    rows = BroadcastMessage.objects.using("pg").filter(topic=topic).order_by("position")
    return [
        (p, body.split("data: ", 1)[1].strip()) for p, body in rows.values_list("position", "body")
    ]


def head(topic: str) -> int:
    return int(BroadcastTopic.objects.using("pg").get(topic=topic).position)


class Statements:
    """The statements a connection runs, each with whether it was its own transaction."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, bool]] = []

    def __call__(self, execute: Callable[..., Any], sql: str, *args: Any) -> Any:
        connection = args[-1]["connection"]
        self.seen.append((sql, connection.get_autocommit() and not connection.in_atomic_block))
        return execute(sql, *args)

    @contextlib.contextmanager
    def on_publisher(self) -> Iterator[None]:
        """Count on the publisher thread's connections (each one it opens)."""

        def install(sender: Any, connection: Any, **kwargs: Any) -> None:
            if threading.current_thread().name == _publisher.THREAD_NAME:
                connection.execute_wrappers.append(self)

        connection_created.connect(install)
        try:
            yield
        finally:
            connection_created.disconnect(install)


def run(*coroutines: Any) -> None:
    import asyncio

    async def each() -> None:
        for coroutine in coroutines:
            await coroutine

    asyncio.run(each())


# --------------------------------------------------------------------------- round trips
def test_an_abroadcast_is_one_statement_in_autocommit() -> None:
    statements = Statements()
    close_backend()  # the next publish starts a publisher thread with a new connection
    with statements.on_publisher():
        run(abroadcast("pgsql-trips", "first"), abroadcast("pgsql-trips", "second"))
    assert [own for _, own in statements.seen] == [True, True]
    assert all("pg_notify" in sql for sql, _ in statements.seen)
    assert stored("pgsql-trips") == [(1, "first"), (2, "second")]


def test_a_sync_broadcast_is_one_statement_in_autocommit() -> None:
    statements = Statements()
    with connections["pg"].execute_wrapper(statements):
        broadcast("pgsql-sync-trips", "one")
    assert [own for _, own in statements.seen] == [True]
    assert stored("pgsql-sync-trips") == [(1, "one")]


def test_a_batch_of_several_topics_is_one_statement() -> None:
    statements = Statements()
    drafts = [
        draft("pgsql-b", "b1"),
        draft("pgsql-a", "a1"),
        draft("pgsql-b", "b2"),
        draft("pgsql-a", "a2"),
    ]
    with connections["pg"].execute_wrapper(statements):
        backend().publish(drafts)
    assert len(statements.seen) == 1
    assert stored("pgsql-a") == [(1, "a1"), (2, "a2")]  # call order within each topic
    assert stored("pgsql-b") == [(1, "b1"), (2, "b2")]


def test_a_sync_broadcast_after_the_server_ended_the_session_reconnects(
    postgres: PostgresCluster,
) -> None:
    """A worker or script publishing with ``broadcast()`` has no request cycle that would
    drop a broken connection: the failed call drops it, and the next one reconnects."""
    broadcast("pgsql-ended", "before")
    pid = connections["pg"].connection.info.backend_pid
    with postgres.connect(autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", [pid])
        gone = wait_until(
            lambda: (
                not conn.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone()
            ),
            WAIT,
        )
    assert gone is not None
    with pytest.raises(OperationalError):
        broadcast("pgsql-ended", "lost with the session")
    broadcast("pgsql-ended", "after")
    assert stored("pgsql-ended") == [(1, "before"), (2, "after")]


# --------------------------------------------------------------------------- trimming
def test_the_publish_that_passes_a_multiple_of_trim_every_trims_after_it() -> None:
    publish = backend().publish
    for start in range(0, TRIM_EVERY - 3, 7):  # batches of 7: none ends on the multiple
        publish([draft("pgsql-trim", str(n)) for n in range(start, min(start + 7, TRIM_EVERY - 3))])
    assert len(stored("pgsql-trim")) == TRIM_EVERY - 3  # nothing trimmed yet
    statements = Statements()
    with connections["pg"].execute_wrapper(statements):
        publish([draft("pgsql-trim", str(n)) for n in range(TRIM_EVERY - 3, TRIM_EVERY + 4)])
    # The publish (its own transaction), then, after its commit, the trims: by position
    # and by age (once in TRIM_EVERY events of a topic).
    assert statements.seen[0][1] and "pg_notify" in statements.seen[0][0]
    assert [sql.split()[0] for sql, _ in statements.seen[1:]] == ["DELETE", "DELETE"]
    positions = [position for position, _ in stored("pgsql-trim")]
    assert positions == list(range(TRIM_EVERY - HISTORY + 1, TRIM_EVERY + 5))
    assert head("pgsql-trim") == TRIM_EVERY + 4


def test_a_trim_that_fails_after_the_commit_is_logged_and_the_publish_succeeds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The events are stored when the trim runs: raising would tell the caller (and the
    publisher's per-call retry of a failed batch) that they were not, and publish them twice."""

    def broken(*args: Any) -> None:
        raise OperationalError("the trim failed")

    backend().publish([draft("pgsql-trim-fails", str(n)) for n in range(TRIM_EVERY - 1)])
    monkeypatch.setattr(_store, "_trim", broken)
    with capture_logs() as logs:
        run(abroadcast("pgsql-trim-fails", "the multiple"))
    assert stored("pgsql-trim-fails")[-1] == (TRIM_EVERY, "the multiple")
    assert len(stored("pgsql-trim-fails")) == TRIM_EVERY  # once, and nothing trimmed
    (line,) = [entry for entry in logs if entry.get("part") == "trim"]
    assert line["event"] == "sse.broadcast.backend_error" and "the trim failed" in line["error"]


# --------------------------------------------------------------------------- concurrency
def test_a_topic_s_first_events_from_two_connections_get_positions_1_and_2() -> None:
    for round_ in range(5):
        topic = f"pgsql-first-{round_}"
        start = threading.Barrier(2)

        def publish(data: str, topic: str = topic, start: threading.Barrier = start) -> None:
            try:
                start.wait(WAIT)
                broadcast(topic, data)
            finally:
                connections.close_all()

        threads = [threading.Thread(target=publish, args=(d,)) for d in ("x", "y")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT)
        assert sorted(position for position, _ in stored(topic)) == [1, 2]
        assert sorted(data for _, data in stored(topic)) == ["x", "y"]
        assert head(topic) == 2


def test_batches_of_two_topics_from_two_connections_in_opposite_orders() -> None:
    """Each connection's batches name both topics, in opposite orders: the rows are locked
    in one order (no deadlock), positions stay gap-free and each subscriber gets every
    event once, in position order."""
    watchers = {topic: Reader(subscribe_to(topic)) for topic in ("pgsql-left", "pgsql-right")}
    wait_joined(("pgsql-left", "pgsql-right"))
    rounds = 40
    failures: list[BaseException] = []

    def publish(name: str, topics: tuple[str, str]) -> None:
        try:
            for i in range(rounds):
                backend().publish([draft(t, f"{name}{i}") for t in topics])
        except BaseException as exc:
            failures.append(exc)
        finally:
            connections.close_all()

    threads = [
        threading.Thread(target=publish, args=("p", ("pgsql-left", "pgsql-right"))),
        threading.Thread(target=publish, args=("q", ("pgsql-right", "pgsql-left"))),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert failures == []
    for topic, watcher in watchers.items():
        rows = stored(topic)
        assert [position for position, _ in rows] == list(range(1, 2 * rounds + 1))
        for name in ("p", "q"):  # each connection's own events in its call order
            assert [d for _, d in rows if d.startswith(name)] == [
                f"{name}{i}" for i in range(rounds)
            ]
        events = watcher.wait_for(2 * rounds, WAIT)
        watcher.stop()
        assert [e.data for e in events] == [data for _, data in rows]
        assert len(watcher.events) == 2 * rounds


def test_two_batches_locking_their_topics_in_opposite_orders_do_not_deadlock(
    postgres: PostgresCluster,
) -> None:
    """The rows are locked in sorted topic order whatever the call order: with ``left``
    held by a third session, the batch [left, right] waits for it holding nothing, and so
    does [right, left]; locked in call order, the second would hold ``right`` and wait for
    ``left``, while the first would get ``left`` and wait for ``right``: a deadlock."""
    topics = ("pgsql-dl-left", "pgsql-dl-right")
    backend().publish([draft(t, "row") for t in topics])  # both rows exist
    failures: list[BaseException] = []

    def publish(order: tuple[str, ...]) -> None:
        try:
            backend().publish([draft(t, "batch") for t in order])
        except BaseException as exc:
            failures.append(exc)
        finally:
            connections.close_all()

    with postgres.connect() as holder:
        holder.execute(
            "SELECT 1 FROM django_flosse_broadcasttopic WHERE topic = %s FOR UPDATE", [topics[0]]
        )
        threads = [
            threading.Thread(target=publish, args=(order,)) for order in (topics, topics[::-1])
        ]
        for waiters, thread in enumerate(threads, start=1):
            thread.start()
            waiting = wait_until(partial(waited_for, postgres, waiters), WAIT)
            assert waiting is not None, "the publish did not wait for the held row"
        holder.commit()
    for thread in threads:
        thread.join(WAIT)
    assert failures == []
    assert [head(t) for t in topics] == [3, 3]


def waited_for(cluster: PostgresCluster, sessions: int) -> bool:
    """Whether ``sessions`` sessions of the test database wait for a lock."""
    with cluster.connect() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock'"
        ).fetchone()
    return bool(row and row[0] == sessions)


def subscribe_to(topic: str) -> Any:
    from django_flosse import subscribe

    return subscribe(request(), topic)


def wait_joined(topics: tuple[str, ...]) -> None:
    joined = wait_until(lambda: all(backend().subscribers(t) == 1 for t in topics), WAIT)
    assert joined is not None


# --------------------------------------------------------------------------- atomic()
def test_inside_the_caller_s_atomic_the_publish_is_part_of_its_transaction() -> None:
    """What ``captureOnCommitCallbacks(execute=True)`` or a direct ``publish()`` inside
    ``atomic()`` does: the statement runs in the caller's transaction (rolled back with it),
    in a savepoint (a refused event leaves the transaction usable)."""

    class Boom(Exception):
        pass

    with pytest.raises(Boom), transaction.atomic(using="pg"):
        backend().publish([draft("pgsql-inside", "rolled back")])
        assert stored("pgsql-inside") == [(1, "rolled back")]  # seen by its own transaction
        raise Boom
    assert stored("pgsql-inside") == []
    assert not BroadcastTopic.objects.using("pg").filter(topic="pgsql-inside").exists()
    with transaction.atomic(using="pg"):
        with pytest.raises(DataError):
            backend().publish([draft("pgsql-inside", "bad\x00")])
        backend().publish([draft("pgsql-inside", "kept")])
    assert stored("pgsql-inside") == [(1, "kept")]


# --------------------------------------------------------------------------- table names
def test_table_and_column_names_come_from_the_models(monkeypatch: pytest.MonkeyPatch) -> None:
    """The models have no setting for their tables; a project that renames them (a
    ``class Meta`` patch, a database router's schema) must still publish: the statement
    quotes ``_meta``'s names. Renamed here for one test, with names that need quoting."""
    topics, messages = BroadcastTopic._meta.db_table, BroadcastMessage._meta.db_table
    position = BroadcastMessage._meta.get_field("position")
    renamed = ("Flosse Topics", "Flosse Messages", "Position Here")
    with connections["pg"].cursor() as cursor:
        cursor.execute(f'ALTER TABLE {topics} RENAME TO "{renamed[0]}"')
        cursor.execute(f'ALTER TABLE {messages} RENAME TO "{renamed[1]}"')
        cursor.execute(f'ALTER TABLE "{renamed[1]}" RENAME COLUMN position TO "{renamed[2]}"')
    fields = [*BroadcastTopic._meta.fields, *BroadcastMessage._meta.fields]

    def forget_columns() -> None:  # Django caches each field's column expression
        for field in fields:
            field.__dict__.pop("cached_col", None)

    try:
        forget_columns()
        monkeypatch.setattr(BroadcastTopic._meta, "db_table", renamed[0])
        monkeypatch.setattr(BroadcastMessage._meta, "db_table", renamed[1])
        monkeypatch.setattr(position, "column", renamed[2])
        backend().publish([draft("pgsql-renamed", "one"), draft("pgsql-renamed", "two")])
        assert stored("pgsql-renamed") == [(1, "one"), (2, "two")]
    finally:
        monkeypatch.undo()
        forget_columns()
        with connections["pg"].cursor() as cursor:
            cursor.execute(f'ALTER TABLE "{renamed[1]}" RENAME COLUMN "{renamed[2]}" TO position')
            cursor.execute(f'ALTER TABLE "{renamed[1]}" RENAME TO {messages}')
            cursor.execute(f'ALTER TABLE "{renamed[0]}" RENAME TO {topics}')
