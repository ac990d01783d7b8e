"""Database hygiene: a stream does not hold a connection while it waits (streaming/_db.py).

The policy: connections are released before streaming and after idle steps, never inside
``transaction.atomic()``, and a hop to the request's thread is spent only when there is a
connection there to release.
"""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import User
from django.db import connection, connections, transaction

from django_flosse.streaming import _db
from django_flosse.streaming._db import (
    LentDatabases,
    arelease_before_streaming,
    arelease_while_idle,
    async_views_release,
    opened_for_this_request,
    release_connections,
)


class FakeConnection:
    def __init__(self, is_open: bool, in_atomic_block: bool) -> None:
        self.connection = object() if is_open else None
        self.in_atomic_block = in_atomic_block
        self.closed = False

    def close(self) -> None:
        self.closed = True
        self.connection = None


@pytest.mark.parametrize(
    ("is_open", "in_atomic_block", "closed"),
    [
        (True, False, True),
        (True, True, False),  # its transaction needs it: never closed
        (False, False, False),  # nothing to close
    ],
)
def test_release_connections(is_open: bool, in_atomic_block: bool, closed: bool) -> None:
    fake = FakeConnection(is_open, in_atomic_block)
    release_connections([fake])
    assert fake.closed is closed


@pytest.mark.django_db(transaction=True)
def test_release_closes_this_threads_connection_but_not_inside_atomic() -> None:
    User.objects.exists()
    assert connection.connection is not None
    release_connections()
    assert connection.connection is None

    with transaction.atomic():
        User.objects.create_user("kept")
        release_connections()
        assert connection.connection is not None  # the transaction goes on
    assert User.objects.filter(username="kept").exists()  # and was committed


@pytest.mark.parametrize(
    ("databases", "expected"),
    [
        ({"default": {}}, True),
        ({}, False),  # no database set up: nothing to release, no hop
    ],
)
def test_async_views_release_where_a_database_is_set_up(
    monkeypatch: pytest.MonkeyPatch, databases: dict[str, Any], expected: bool
) -> None:
    monkeypatch.setattr(_db, "settings", SimpleNamespace(DATABASES=databases))
    assert async_views_release() is expected


# ---------------------------------------------------------- the request's thread, seen from the loop


def _query() -> None:
    User.objects.exists()


def _is_open() -> bool:
    return connection.connection is not None


@pytest.fixture
async def shared_thread_without_connection() -> None:
    """These tests open connections on asgiref's shared thread and watch them being seen
    and released: an earlier test's connection, still open there, must not hide the new one
    (``connection_created`` is not sent for a connection already open)."""
    await sync_to_async(connections.close_all)()


@pytest.mark.django_db(transaction=True)
async def test_a_connection_opened_on_the_requests_thread_is_seen_and_released(
    hops: list[str], shared_thread_without_connection: None
) -> None:
    assert not opened_for_this_request()
    await sync_to_async(_query)()  # Django's async ORM and sync middleware do this
    assert opened_for_this_request()  # seen from the loop, without a hop

    await arelease_before_streaming()
    assert hops == ["release_connections"]
    assert not await sync_to_async(_is_open)()
    assert not opened_for_this_request()

    await arelease_before_streaming()  # nothing left to release: no hop
    assert hops == ["release_connections"]


@pytest.mark.django_db(transaction=True)
async def test_a_connection_closed_meanwhile_does_not_count(hops: list[str]) -> None:
    await sync_to_async(_query)()
    await sync_to_async(connections.close_all)()
    assert not opened_for_this_request()
    await arelease_before_streaming()
    assert hops == []


@pytest.mark.django_db(transaction=True)
async def test_a_connection_opened_in_another_context_is_not_this_requests(
    hops: list[str],
) -> None:
    # Another request's thread: its context is not ours (a plain thread, no copy back).
    opened, done = threading.Event(), threading.Event()

    def other_request() -> None:
        _query()
        opened.set()
        done.wait(timeout=30)
        connections.close_all()

    thread = threading.Thread(target=other_request)
    thread.start()
    try:
        assert await sync_to_async(opened.wait, thread_sensitive=False)(timeout=30)
        assert not opened_for_this_request()
        await arelease_before_streaming()
        assert hops == []
    finally:
        done.set()
        thread.join()


# ------------------------------------------------------------------------ LentDatabases


@pytest.mark.django_db(transaction=True)
def test_a_generator_thread_borrows_the_views_connection_and_releases_it() -> None:
    User.objects.create_user("seen")
    lent = LentDatabases()
    views_connection = connections["default"]
    seen: list[Any] = []

    def generator_thread() -> None:
        lent.borrow()
        try:
            seen.append(connections["default"] is views_connection)
            seen.append(User.objects.filter(username="seen").exists())
            lent.release()
        finally:
            lent.give_back()

    thread = threading.Thread(target=generator_thread)
    thread.start()
    thread.join()
    assert seen == [True, True]
    assert views_connection.connection is None  # released on the generator's thread
    User.objects.exists()  # and usable again on the view's: the next query reconnects


@pytest.mark.django_db  # the test runs inside a transaction, as with ATOMIC_REQUESTS
def test_a_borrowed_connection_inside_a_transaction_is_never_released() -> None:
    User.objects.create_user("uncommitted")
    lent = LentDatabases()
    seen: list[bool] = []

    def generator_thread() -> None:
        lent.borrow()
        try:
            lent.release()
            seen.append(User.objects.filter(username="uncommitted").exists())
        finally:
            lent.give_back()

    thread = threading.Thread(target=generator_thread)
    thread.start()
    thread.join()
    assert seen == [True]  # the same transaction, still open
    assert connections["default"].connection is not None


@pytest.mark.django_db(transaction=True)
async def test_an_idle_wait_releases_what_the_producer_opened_and_hops_only_then(
    hops: list[str], shared_thread_without_connection: None
) -> None:
    await arelease_while_idle()  # nothing opened in this context: no hop
    assert hops == []
    await sync_to_async(_query)()  # the producer's async ORM call, on the request's thread
    await arelease_while_idle()
    assert hops == ["release_connections"]
    assert not await sync_to_async(_is_open)()


@pytest.mark.django_db(transaction=True)
async def test_a_slow_orm_call_outside_djangos_handler_is_not_interrupted_by_a_release() -> None:
    """Regression: an async view called directly (a ``RequestFactory`` test) whose ORM call
    took longer than ``IDLE_STEP_SECONDS`` failed with asgiref's "would deadlock": the
    stream tried to release connections on the shared thread the call was still running on
    (CI saw it once, as the docs' blocking example failing on a loaded machine)."""
    import time

    from django.test import RequestFactory

    from django_flosse import sse_stream
    from django_flosse.testing import parse_events

    def slow_count() -> int:
        time.sleep(_db.IDLE_STEP_SECONDS * 4)  # the wait that asks for a release
        return User.objects.count()

    @sse_stream
    async def counts(request: Any) -> Any:
        await User.objects.acreate(username="ada")  # a connection opened for the request
        for _ in range(2):
            yield ("count", {"users": await sync_to_async(slow_count)()})

    response = await counts(RequestFactory().get("/"))
    body = b"".join([chunk async for chunk in response.streaming_content])
    assert [(e.event, e.data) for e in parse_events(body)] == [
        ("count", '{"users": 1}'),
        ("count", '{"users": 1}'),
    ]
