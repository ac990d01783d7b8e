"""The persistence writer: rows in batches, off the streaming path, across processes."""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import User
from django.db import OperationalError, connections
from django.db import connection as db_connection
from django.db.backends import utils as db_utils
from django.db.models.query import QuerySet
from django.test import AsyncClient, Client, override_settings
from structlog.testing import capture_logs

from django_flosse.models import StreamConnection
from django_flosse.observing import _history as persistence
from django_flosse.observing import _retention, _rows
from django_flosse.observing._history import PersistenceWriter
from django_flosse.observing.registry import current_process, registry
from django_flosse.testing import acollect_events, collect_events
from tests.support.history import HISTORY_SETTINGS, open_connection, row, stale_row
from tests.support.servers import REPO_ROOT

# ---------------------------------------------------------------------- rows and counters


@pytest.mark.django_db(transaction=True)
def test_a_stream_becomes_a_row_with_its_request_fields(
    writer: PersistenceWriter, client: Client
) -> None:
    user = User.objects.create_user("ada", password="x")
    client.force_login(user)
    response = client.get(
        "/sync/count/?n=3",
        HTTP_USER_AGENT="pytest-agent",
        HTTP_LAST_EVENT_ID="41",
        REMOTE_ADDR="10.1.2.3",
    )
    assert len(collect_events(response, max_events=10)) == 3
    assert not StreamConnection.objects.exists()  # nothing before the flush
    writer.flush()

    saved = StreamConnection.objects.get()
    assert saved.stream == "tests.views.sync_count"
    assert (saved.path, saved.route) == ("/sync/count/", "sync/count/")
    assert (saved.user_id, saved.username) == (user.pk, "ada")
    assert saved.client_ip == "10.1.2.3"
    assert (saved.user_agent, saved.last_event_id) == ("pytest-agent", "41")
    assert saved.process == current_process()
    assert saved.events_sent == 3 and saved.bytes_sent > 0
    assert saved.close_reason == "completed"
    assert saved.closed_at is not None and saved.closed_at >= saved.opened_at
    assert saved.last_event_at is not None
    assert saved.last_seen_at == saved.closed_at


@pytest.mark.django_db(transaction=True)
def test_open_rows_get_counters_and_last_seen_then_their_close(writer: PersistenceWriter) -> None:
    connection = open_connection(path="/live/")
    writer.flush()
    first = row(connection)
    assert first.closed_at is None and first.close_reason == ""
    assert first.events_sent == 0

    connection.events_sent, connection.bytes_sent = 5, 120
    connection.last_event_at = time.time()
    writer.flush()
    second = row(connection)
    assert (second.events_sent, second.bytes_sent) == (5, 120)
    assert second.last_event_at is not None
    assert second.last_seen_at > first.last_seen_at

    connection.events_sent, connection.bytes_sent = 7, 150
    connection.error_id = "abcd1234"
    registry.close(connection, "error")
    writer.flush()
    closed = row(connection)
    assert closed.close_reason == "error" and closed.error_id == "abcd1234"
    assert (closed.events_sent, closed.bytes_sent) == (7, 150)
    assert closed.closed_at is not None


@pytest.mark.django_db(transaction=True)
def test_a_close_that_arrives_while_its_insert_is_in_flight_is_written(
    writer: PersistenceWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    connection = open_connection()
    original = persistence.close_rows

    def close_meanwhile(*args: Any) -> None:
        registry.close(connection, "cancelled")  # the row was built open a moment ago
        original(*args)

    monkeypatch.setattr(persistence, "close_rows", close_meanwhile)
    writer.flush()
    assert row(connection).closed_at is None
    monkeypatch.undo()
    writer.flush()
    assert row(connection).close_reason == "cancelled"


@pytest.mark.django_db(transaction=True)
def test_one_flush_is_a_few_queries_however_many_connections(
    writer: PersistenceWriter, django_assert_max_num_queries: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    connections = [open_connection() for _ in range(1200)]
    fields = StreamConnection._meta.concrete_fields
    per_insert = min(_rows.BATCH_SIZE, db_connection.ops.bulk_batch_size(fields, connections))
    inserts = math.ceil(1200 / per_insert)  # 3 on PostgreSQL, 22 on SQLite (999 variables)
    # + claim, refresh, stop poll, lost check and transaction control, the traffic buckets'
    # upsert, and a new writer's first retention pass (newest id, expired ids, old buckets)
    with django_assert_max_num_queries(inserts + 14):
        writer.flush()
    monkeypatch.setattr(_retention, "INTERVAL", 3600.0)  # the next pass is not due yet
    assert StreamConnection.objects.filter(closed_at__isnull=True).count() == 1200

    for i, live in enumerate(connections):
        live.events_sent = i + 1
    for live in connections[:600]:
        registry.close(live, "cancelled")
    # One executemany UPDATE for the 600 closes and one for the 600 moved counters (not
    # bulk_update's CASE per batch, quadratic in the database), last seen, the stop poll,
    # the lost check, the traffic buckets' upsert and transaction control.
    with django_assert_max_num_queries(9):
        writer.flush()
    assert StreamConnection.objects.filter(close_reason="cancelled").count() == 600
    assert StreamConnection.objects.get(connection_id=connections[0].id).events_sent == 1
    assert StreamConnection.objects.get(connection_id=connections[599].id).events_sent == 600
    assert StreamConnection.objects.get(connection_id=connections[-1].id).events_sent == 1200


@pytest.mark.django_db(transaction=True)
def test_client_ips_that_are_not_addresses_are_stored_as_null(writer: PersistenceWriter) -> None:
    bad = open_connection(client_ip="unknown, 10.0.0.1")
    scoped = open_connection(client_ip="fe80::1%eth0")
    good = open_connection(client_ip="2001:db8::7")
    writer.flush()
    assert row(bad).client_ip is None
    assert row(scoped).client_ip == "fe80::1"
    assert row(good).client_ip == "2001:db8::7"


@pytest.mark.django_db(transaction=True)
def test_over_long_values_and_nul_characters_are_trimmed(writer: PersistenceWriter) -> None:
    connection = open_connection(path="/a\x00b/" + "x" * 900, user_agent="y" * 600)
    writer.flush()
    saved = row(connection)
    assert saved.path.startswith("/ab/") and len(saved.path) == 500
    assert len(saved.user_agent) == 512


@pytest.mark.django_db(transaction=True)
def test_a_user_deleted_before_the_flush_leaves_the_row_without_user(
    writer: PersistenceWriter,
) -> None:
    user = User.objects.create_user("gone")
    connection = open_connection(user_id=str(user.pk), username="gone")
    user.delete()
    writer.flush()
    saved = row(connection)
    assert saved.user_id is None and saved.username == "gone"


# ---------------------------------------------------------------------- off the hot path


class _AllThreadsQueries:
    """Every SQL statement run by any thread (CaptureQueriesContext sees one connection)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.queries: list[tuple[str, str]] = []
        original = getattr(db_utils.CursorWrapper, "_execute_with_wrappers")  # noqa: B009

        def recording(cursor: Any, sql: str, *args: Any, **kwargs: Any) -> Any:
            self.queries.append((threading.current_thread().name, sql))
            return original(cursor, sql, *args, **kwargs)

        monkeypatch.setattr(db_utils.CursorWrapper, "_execute_with_wrappers", recording)


@pytest.mark.django_db(transaction=True)
def test_streaming_a_sync_view_runs_no_query(
    writer: PersistenceWriter,
    client: Client,
    monkeypatch: pytest.MonkeyPatch,
    django_assert_num_queries: Any,
) -> None:
    recorder = _AllThreadsQueries(monkeypatch)
    with django_assert_num_queries(0):
        events = collect_events(client.get("/sync/count/?n=50"), max_events=100)
        more = collect_events(client.get("/sync/count/?n=5"), max_events=2)
    assert (len(events), len(more)) == (50, 2)
    assert recorder.queries == []
    writer.flush()  # what was queued is all there
    assert StreamConnection.objects.filter(stream="tests.views.sync_count").count() == 2
    assert recorder.queries  # and the recorder does see queries


def _flush_and_read(writer: PersistenceWriter) -> list[tuple[str, str]]:
    writer.flush()
    rows = list(StreamConnection.objects.values_list("stream", "close_reason"))
    connections.close_all()  # of asgiref's worker thread: the test database can be dropped
    return rows


@pytest.mark.django_db(transaction=True)
async def test_streaming_an_async_view_runs_no_query(
    writer: PersistenceWriter,
    async_client: AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # (django_assert_num_queries cannot be entered on the event loop: it connects.)
    recorder = _AllThreadsQueries(monkeypatch)
    response = await async_client.get("/async/count/?n=50")
    events = await acollect_events(response, max_events=100)
    response = await async_client.get("/async/endless/?every=0.01")
    endless = await acollect_events(response, max_events=5)
    assert (len(events), len(endless)) == (50, 5)
    assert recorder.queries == []
    assert sorted(await sync_to_async(_flush_and_read)(writer)) == [
        ("tests.views.async_count", "completed"),
        ("tests.views.async_endless", "cancelled"),
    ]


# ---------------------------------------------------------------------- database errors


@pytest.mark.django_db(transaction=True)
def test_a_database_error_is_logged_and_retried_without_losing_rows(
    writer: PersistenceWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened = open_connection()
    writer.flush()
    closing = open_connection()
    registry.close(opened, "completed")
    original = QuerySet.bulk_create
    calls = []

    def fail_once(self: QuerySet[Any], *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise OperationalError("database is locked")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(QuerySet, "bulk_create", fail_once)
    with capture_logs() as logs:
        writer.flush()
    errors = [log for log in logs if log["event"] == "sse.persistence.error"]
    assert len(errors) == 1 and "database is locked" in errors[0]["error"]
    assert errors[0]["waiting"] == 2
    # All or nothing: the close that shared the failed flush was rolled back too.
    assert row(opened).closed_at is None
    assert not StreamConnection.objects.filter(connection_id=closing.id).exists()

    with capture_logs() as logs:
        writer.flush()
    assert [log["event"] for log in logs] == ["sse.persistence.recovered"]
    assert row(opened).close_reason == "completed"
    assert row(closing).closed_at is None


@pytest.mark.django_db(transaction=True)
def test_the_thread_keeps_going_when_the_database_fails(
    writer: PersistenceWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    def down(*args: Any, **kwargs: Any) -> Any:
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(QuerySet, "bulk_create", down)
    with (
        override_settings(FLOSSE={**HISTORY_SETTINGS, "FLUSH_INTERVAL": 0.05}),
        capture_logs() as logs,
    ):
        connection = open_connection()
        writer._paused = False
        time.sleep(0.4)  # several failing flushes
        thread = writer._thread
        assert thread is not None and thread.is_alive()
        monkeypatch.undo()
        deadline = time.monotonic() + 5
        while not StreamConnection.objects.filter(connection_id=connection.id).exists():
            assert time.monotonic() < deadline, "the row never arrived after the outage"
            time.sleep(0.05)
        registry.close(connection, "completed")
    events = [log["event"] for log in logs]
    # Logged once per outage (not once per failed flush), and the recovery.
    assert events.count("sse.persistence.error") == 1
    assert "sse.persistence.recovered" in events


# ---------------------------------------------------------------------- other processes


@pytest.mark.django_db(transaction=True)
def test_first_flush_closes_rows_left_by_an_earlier_process_with_our_identity(
    writer: PersistenceWriter,
) -> None:
    ghost = stale_row(current_process(), age=5)  # e.g. a restarted container, pid 1 again
    live = open_connection()
    writer.flush()
    ghost.refresh_from_db()
    assert ghost.close_reason == "lost"
    assert row(live).closed_at is None
    writer.flush()  # later flushes leave our own rows alone
    assert row(live).closed_at is None


@pytest.mark.django_db(transaction=True)
async def test_stop_requested_on_a_row_ends_the_live_stream_within_2s(
    writer: PersistenceWriter, async_client: AsyncClient
) -> None:
    writer._paused = False  # the real thread, with the default FLUSH_INTERVAL of 1 s
    response = await async_client.get("/async/endless/?every=0.05")
    rows = StreamConnection.objects.filter(stream="tests.views.async_endless")
    deadline = time.monotonic() + 5
    while not await rows.aexists():
        assert time.monotonic() < deadline, "the row was never written"
        await asyncio.sleep(0.02)

    # Another process (the admin of any host) asks; this one only sees the database.
    asked = time.monotonic()
    await rows.aupdate(stop_requested="terminated")
    events = await acollect_events(response, max_events=10_000, timeout=5)
    took = time.monotonic() - asked
    assert events[-1].event == "terminated" and events[-1].json() == {"reason": "terminated"}
    assert took < 2.0, f"took {took:.2f} s"

    deadline = time.monotonic() + 5
    while (await rows.aget()).close_reason != "terminated":
        assert time.monotonic() < deadline, "the close was never written"
        await asyncio.sleep(0.05)
    await sync_to_async(connections.close_all)()  # asgiref's worker thread's connection


# ---------------------------------------------------------------------- process lifecycle


def test_the_writer_starts_again_in_a_forked_child(writer: PersistenceWriter) -> None:
    parent = open_connection()
    parent_thread = writer._thread
    assert parent_thread is not None
    writer._pid = -1  # as after fork(): the pid this state belongs to is no longer ours
    child = open_connection()
    assert list(writer._pending) == [child.id]  # the parent's pending rows are the parent's
    assert writer._thread is not None and writer._thread is not parent_thread
    for connection in (parent, child):
        registry.close(connection, "completed")


def test_nothing_is_queued_when_persistence_is_off(writer: PersistenceWriter) -> None:
    with override_settings(FLOSSE={"PERSISTENCE": False}):
        connection = open_connection()
    assert writer._pending == {}
    registry.close(connection, "completed")
    assert writer._finished == {}


def test_the_decorator_without_the_app_imports_no_model() -> None:
    script = """
import sys
import django
from django.conf import settings
settings.configure(INSTALLED_APPS=[], ROOT_URLCONF=__name__, SECRET_KEY="x", ALLOWED_HOSTS=["*"])
django.setup()
from django.test import RequestFactory
from django_flosse import sse_stream
from django_flosse.testing import collect_events

@sse_stream
def view(request):
    yield "hello"

import django_flosse.urls  # the metrics URLs load without the app too

urlpatterns = []
events = collect_events(view(RequestFactory().get("/")), max_events=5)
assert [e.data for e in events] == ["hello"], events
model_users = ("django_flosse.models", "django_flosse.admin", "django_flosse.terminate",
               "django_flosse.observing._history", "django_flosse.observing._rows")
loaded = sorted(m for m in model_users if m in sys.modules)
assert not loaded, loaded
print("ok")
"""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


@pytest.mark.django_db(transaction=True)
def test_the_writer_thread_closes_its_database_connection_when_it_stops(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Regression: with ``CONN_MAX_AGE`` the thread keeps its connection between flushes (as
    it should), and when it stopped (idle, or asked to) it left that connection for the
    garbage collector (Python 3.13 warns "unclosed database": it failed a test on a fresh
    clone at a random later point)."""
    from django.db.backends.signals import connection_created

    # New connections of any thread read this dict: the writer's thread keeps its own.
    monkeypatch.setitem(connections.settings["default"], "CONN_MAX_AGE", 600)

    opened: list[Any] = []

    def note(sender: Any, connection: Any, **kwargs: Any) -> None:
        if threading.current_thread().name == "flosse-persistence":
            opened.append(connection)

    connection_created.connect(note)
    try:
        with override_settings(FLOSSE=HISTORY_SETTINGS):
            connection = open_connection()
            deadline = time.monotonic() + 30
            while not StreamConnection.objects.filter(connection_id=connection.id).exists():
                assert time.monotonic() < deadline, "the writer never wrote the row"
                time.sleep(0.05)
            persistence.writer.close()  # stops and joins the thread
    finally:
        connection_created.disconnect(note)
    assert opened, "the writer's thread opened no connection of its own"
    assert all(wrapper.connection is None for wrapper in opened)
