"""``abroadcast()`` on the database backend: the publisher thread (``backends/_publisher``).

It keeps one connection across publishes, closes it when idle or when the backend closes,
replaces it when the server ended it, groups the calls queued while it was busy into one
transaction and gives each caller its own outcome. PostgreSQL is a cluster of this module's
own (one test restarts it), reached through a database alias of this process; SQLite is
the test database, where the behaviour is not PostgreSQL's own.

Which connections the publisher opens is read from Django's ``connection_created`` signal
(sent in the thread that connects), the server's sessions from ``pg_stat_activity``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from typing import Any

import pytest
from django.db import DataError, OperationalError, connections
from django.db.backends.signals import connection_created
from django.test import override_settings

from django_flosse import abroadcast, subscribe
from django_flosse.broadcasting._messages import make_draft
from django_flosse.broadcasting.backends import _publisher, close_backend, get_backend
from django_flosse.broadcasting.backends.database import DatabaseBackend
from django_flosse.models import BroadcastMessage
from tests.support.broadcast import WAIT, pg_alias
from tests.support.observe import wait_until
from tests.support.postgres import PostgresCluster
from tests.support.postgres import own_postgres_fixture as own_postgres_fixture  # the fixture
from tests.support.subscribing import Reader, request

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


@pytest.fixture(scope="module", autouse=True)
def cluster(
    request: pytest.FixtureRequest, django_db_setup: None
) -> Iterator[PostgresCluster | None]:
    """This module's cluster as the database alias "pg", or None without PostgreSQL (its
    tests skip then). Added after the session's test databases are set up and before each
    test's setup, which lets threads connect to the aliases it names."""
    try:
        own: PostgresCluster = request.getfixturevalue("own_postgres")
    except pytest.skip.Exception:
        yield None
        return
    with pg_alias(own):
        yield own


def use(alias: str) -> Any:
    from django.conf import settings

    flosse = {**settings.FLOSSE, "BROADCAST_BACKEND": "database", "BROADCAST_DATABASE": alias}
    return override_settings(FLOSSE=flosse)


@pytest.fixture
def pg(cluster: PostgresCluster | None) -> Iterator[PostgresCluster]:
    """The database backend on the cluster."""
    if cluster is None:
        pytest.skip("PostgreSQL is not installed")
    with use("pg"):
        yield cluster


@pytest.fixture(params=["default", "pg"])
def alias(request: pytest.FixtureRequest) -> Iterator[str]:
    """The database backend on SQLite, then on the cluster."""
    if request.param == "pg" and request.getfixturevalue("cluster") is None:
        pytest.skip("PostgreSQL is not installed")
    with use(request.param):
        yield request.param


@pytest.fixture
def opened() -> Iterator[list[object]]:
    """The connections the publisher thread opens: PostgreSQL's session pid, else an id."""
    found: list[object] = []

    def record(sender: Any, connection: Any, **kwargs: Any) -> None:
        if threading.current_thread().name == _publisher.THREAD_NAME:
            info = getattr(connection.connection, "info", None)
            found.append(getattr(info, "backend_pid", None) or id(connection.connection))

    connection_created.connect(record)
    yield found
    connection_created.disconnect(record)


def backend() -> DatabaseBackend:
    current = get_backend()
    assert isinstance(current, DatabaseBackend)
    return current


def run(*publishes: Coroutine[Any, Any, None]) -> list[BaseException | None]:
    """Each publish on one event loop, one after the other; each one's error or None."""

    async def each() -> list[BaseException | None]:
        outcomes: list[BaseException | None] = []
        for publish in publishes:
            try:
                await publish
            except Exception as exc:
                outcomes.append(exc)
            else:
                outcomes.append(None)
        return outcomes

    return asyncio.run(each())


def data_of(body: str | bytes) -> str:
    """The data of a one-line event."""
    text = body.decode() if isinstance(body, bytes) else body
    return text.split("data: ", 1)[1].removesuffix("\n\n")


def stored(alias: str, topic: str) -> list[tuple[int, str]]:
    """``topic``'s (position, data) in the history."""
    rows = BroadcastMessage.objects.using(alias).filter(topic=topic).order_by("position")
    return [(position, data_of(body)) for position, body in rows.values_list("position", "body")]


def publisher_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == _publisher.THREAD_NAME]


def sessions(cluster: PostgresCluster) -> set[int]:
    """The server pids of the sessions on the test database, but the one asking."""
    with cluster.connect() as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
    return {int(pid) for (pid,) in rows}


# --------------------------------------------------------------------------- the connection
def test_publishes_share_one_connection(alias: str, opened: list[object]) -> None:
    outcomes = run(*(abroadcast("kept", f"e{i}") for i in range(20)))
    assert outcomes == [None] * 20
    assert stored(alias, "kept") == [(i + 1, f"e{i}") for i in range(20)]
    assert len(opened) == 1, opened


@pytest.mark.parametrize(("max_age", "connections_opened"), [(0, 1), (None, 1), (1e-9, 3)])
def test_conn_max_age_caps_the_connection_s_age(
    pg: PostgresCluster,
    opened: list[object],
    monkeypatch: pytest.MonkeyPatch,
    max_age: float | None,
    connections_opened: int,
) -> None:
    """0 (Django's default, one connection per request) and None keep it for the burst; a
    positive age closes it before the first batch past that age (1 ns: every next one)."""
    monkeypatch.setitem(connections.settings["pg"], "CONN_MAX_AGE", max_age)
    assert run(*(abroadcast("aged", f"e{i}") for i in range(3))) == [None] * 3
    assert len(opened) == connections_opened, opened


def test_the_connection_is_closed_when_idle_and_opened_again(
    pg: PostgresCluster, opened: list[object], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_publisher, "IDLE_SECONDS", 0.2)
    before = sessions(pg)
    assert run(abroadcast("idle", "first")) == [None]
    assert wait_until(lambda: not publisher_threads(), WAIT) is not None
    # The server drops a session a moment after its client said goodbye.
    assert wait_until(lambda: sessions(pg) <= before, WAIT) is not None
    assert run(abroadcast("idle", "second")) == [None]
    assert len(opened) == 2
    assert stored("pg", "idle") == [(1, "first"), (2, "second")]


def test_close_ends_the_thread_and_its_session(pg: PostgresCluster, opened: list[object]) -> None:
    before = sessions(pg)
    closed = backend()
    assert run(*(abroadcast("closing", f"e{i}") for i in range(3))) == [None] * 3
    assert opened[0] in sessions(pg)
    close_backend()
    assert publisher_threads() == []  # close() waited for it
    # The server drops a session a moment after its client said goodbye.
    assert wait_until(lambda: sessions(pg) <= before, WAIT) is not None
    draft = make_draft("closing", "late", None, dumps=str, max_bytes=100, published_at=0.0)
    with pytest.raises(RuntimeError, match="closed"):
        asyncio.run(closed.apublish([draft]))
    assert run(abroadcast("closing", "new backend")) == [None]  # the next call makes one


def test_a_session_the_server_ended_is_replaced_without_failing_the_publish(
    pg: PostgresCluster, opened: list[object]
) -> None:
    assert run(abroadcast("killed", "before")) == [None]
    with pg.connect(autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", [opened[0]])
    assert wait_until(lambda: opened[0] not in sessions(pg), WAIT) is not None
    assert run(abroadcast("killed", "after")) == [None]
    assert len(opened) == 2
    assert stored("pg", "killed") == [(1, "before"), (2, "after")]


def test_a_publish_during_an_outage_raises_and_one_after_it_is_delivered(
    pg: PostgresCluster, opened: list[object]
) -> None:
    watcher = Reader(subscribe(request(), "outage"))
    assert wait_until(lambda: backend().subscribers("outage") == 1, WAIT) is not None
    assert run(abroadcast("outage", "before")) == [None]
    watcher.wait_for(1)
    pg.stop_fast()
    try:
        (failed,) = run(abroadcast("outage", "during"))
    finally:
        pg.start_again()
        connections["pg"].close()  # this thread's session ended with the server
    assert isinstance(failed, OperationalError), failed
    assert run(abroadcast("outage", "after")) == [None]
    watcher.wait_for(2, WAIT)  # the reader is back too
    watcher.stop()
    assert [e.data for e in watcher.events] == ["before", "after"]
    assert stored("pg", "outage") == [(1, "before"), (2, "after")]


# --------------------------------------------------------------------------- group commit
class Busy:
    """The publisher held in its first call (the row of topic ``busy`` locked by another
    session), while ``publishes`` are queued behind it; then let go."""

    def __init__(self, cluster: PostgresCluster) -> None:
        self.cluster = cluster
        self.batches: list[list[str]] = []  # each transaction's data, in the thread's order

    def run(self, *publishes: tuple[str, str]) -> list[BaseException | None]:
        assert run(abroadcast("busy", "row")) == [None]  # the row exists
        publisher = backend()._publisher
        insert = publisher._insert

        def recording(drafts: Any) -> None:
            self.batches.append([data_of(draft.body) for draft in drafts])
            insert(drafts)

        publisher._insert = recording  # type: ignore[method-assign]
        outcomes: list[BaseException | None] = []
        with self.cluster.connect() as lock:
            lock.execute(
                "SELECT 1 FROM django_flosse_broadcasttopic WHERE topic = 'busy' FOR UPDATE"
            )

            async def all_of_them() -> None:
                held = asyncio.ensure_future(abroadcast("busy", "held"))
                await asyncio.to_thread(wait_until, self.blocked, WAIT)
                calls = [asyncio.ensure_future(abroadcast(t, d)) for t, d in publishes]
                results = await asyncio.gather(held, *calls, return_exceptions=True)
                outcomes.extend(r if isinstance(r, BaseException) else None for r in results[1:])

            thread = threading.Thread(target=asyncio.run, args=(all_of_them(),))
            thread.start()
            queued = wait_until(lambda: len(publisher._calls) == len(publishes), WAIT)
            assert queued is not None, "the calls were not queued behind the held one"
            lock.commit()
            thread.join(WAIT)
        return outcomes

    def blocked(self) -> bool:
        """The publisher's UPDATE waits for the lock."""
        with self.cluster.connect() as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock'"
            ).fetchone()
        return bool(row and row[0])


def test_calls_queued_meanwhile_share_one_transaction_in_call_order(
    pg: PostgresCluster, opened: list[object]
) -> None:
    calls = [("x" if i % 3 else "y", f"{'x' if i % 3 else 'y'}{i}") for i in range(30)]
    busy = Busy(pg)
    assert busy.run(*calls) == [None] * 30
    assert busy.batches == [["held"], [data for _, data in calls]]
    for topic in ("x", "y"):
        expected = [data for t, data in calls if t == topic]
        assert stored("pg", topic) == list(enumerate(expected, start=1))
    assert len(opened) == 1


def test_a_draft_the_database_refuses_fails_only_its_own_call(
    pg: PostgresCluster, opened: list[object]
) -> None:
    busy = Busy(pg)
    outcomes = busy.run(("t", "a"), ("t", "bad\x00"), ("t", "b"))
    assert outcomes[0] is None and outcomes[2] is None
    assert isinstance(outcomes[1], DataError), outcomes
    assert "NUL" in str(outcomes[1])
    # The batch failed as a whole, then each call alone: only the bad one failed.
    assert busy.batches == [["held"], ["a", "bad\x00", "b"], ["a"], ["bad\x00"], ["b"]]
    assert stored("pg", "t") == [(1, "a"), (2, "b")]
    assert len(opened) == 1  # not a connection error: the connection stays
