"""Ending connections from outside their stream: request_stop and close_lost (terminate.py).

Both work on the connection history, so they reach every process and host: a live stream of
this process stops at once, the others through their rows.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.db import OperationalError
from django.db.models.query import QuerySet
from django.test import override_settings
from django.utils import timezone
from structlog.testing import capture_logs

from django_flosse import reasons, terminate
from django_flosse.models import StreamConnection
from django_flosse.observing._history import PersistenceWriter
from django_flosse.observing.log import CONNECTIONS_LOST
from django_flosse.observing.registry import current_process, registry
from django_flosse.terminate import close_lost, request_stop
from tests.support.history import open_connection, stale_row
from tests.support.observe import sample

# -------------------------------------------------------------------------- close_lost


@pytest.mark.django_db(transaction=True)
def test_stale_open_rows_of_other_processes_are_closed_as_lost(writer: PersistenceWriter) -> None:
    stale = stale_row("deadhost:1", age=60)
    fresh = stale_row("livehost:2", age=1)
    done = stale_row("deadhost:1", age=60, closed_at=timezone.now(), close_reason="completed")
    mine = stale_row(current_process(), age=60)
    lost_before = sample("flosse_connections_closed_total", stream=stale.stream, reason="lost")

    assert close_lost() == 1
    # Counted by the process that closed the row: the dead one cannot.
    lost_after = sample("flosse_connections_closed_total", stream=stale.stream, reason="lost")
    assert lost_after - lost_before == 1
    stale.refresh_from_db()
    assert stale.close_reason == "lost" and stale.closed_at == stale.last_seen_at
    for other in (fresh, done, mine):
        before = other.close_reason
        other.refresh_from_db()
        assert other.close_reason == before

    # The writer runs the same check as it flushes.
    later = stale_row("deadhost:3", age=60)
    open_connection()
    writer.flush()
    later.refresh_from_db()
    assert later.close_reason == "lost"


@pytest.mark.django_db
@pytest.mark.parametrize(("lost_after", "closed"), [(30.0, 0), (5.0, 1)])
def test_close_lost_waits_lost_after_seconds(lost_after: float, closed: int) -> None:
    row = stale_row("deadhost:1", age=10)
    with override_settings(FLOSSE={"LOST_AFTER": lost_after}):
        assert close_lost() == closed
    row.refresh_from_db()
    assert row.close_reason == ("lost" if closed else "")


@pytest.mark.django_db
def test_close_lost_logs_how_many_it_closed_and_nothing_when_none() -> None:
    with capture_logs() as logs:
        assert close_lost() == 0
    assert logs == []
    for _ in range(3):
        stale_row("deadhost:1", age=60)
    with capture_logs() as logs:
        assert close_lost() == 3
    assert [(log["event"], log["log_level"], log["connections"]) for log in logs] == [
        (CONNECTIONS_LOST, "warning", 3)
    ]


@pytest.mark.django_db
@pytest.mark.django_db
def test_close_lost_logs_a_database_error_and_raises_it(monkeypatch: pytest.MonkeyPatch) -> None:
    stale_row("deadhost:1", age=60)  # something to close, so that the UPDATE runs

    def down(*args: Any, **kwargs: Any) -> Any:
        raise OperationalError("database is locked")

    monkeypatch.setattr(QuerySet, "update", down)
    with capture_logs() as logs, pytest.raises(OperationalError, match="locked"):
        close_lost()
    assert [(log["event"], log["during"]) for log in logs] == [
        ("sse.persistence.error", "close_lost")
    ]


# ------------------------------------------------------------------------ request_stop


@pytest.mark.django_db(transaction=True)
def test_request_stop_stops_local_streams_and_flags_rows_for_other_processes(
    writer: PersistenceWriter,
) -> None:
    local = open_connection()
    writer.flush()
    remote = stale_row("otherhost:7", age=0)
    finished = stale_row("otherhost:7", age=0, closed_at=timezone.now(), close_reason="completed")

    assert request_stop([local.id, remote.connection_id, finished.connection_id, "nope"]) == 2
    assert local.stop_reason == "terminated"  # at once, no flush needed
    remote.refresh_from_db()
    finished.refresh_from_db()
    assert remote.stop_requested == "terminated"
    assert finished.stop_requested == ""
    with pytest.raises(ValueError, match="unknown close reason"):
        request_stop([local.id], "bored")
    registry.close(local, "terminated")


@pytest.mark.django_db
@pytest.mark.parametrize("reason", [reasons.SHUTDOWN, reasons.TIMEOUT, reasons.TERMINATED])
def test_request_stop_passes_its_reason_on(reason: str) -> None:
    local = open_connection()
    remote = stale_row("otherhost:7", age=0)
    assert request_stop([local.id, remote.connection_id], reason) == 2
    assert local.stop_reason == reason
    remote.refresh_from_db()
    assert remote.stop_requested == reason
    registry.close(local, reason)


@pytest.mark.django_db
def test_request_stop_counts_each_connection_once() -> None:
    local = open_connection()
    StreamConnection.objects.create(  # this process's own row of the same connection
        connection_id=local.id,
        stream="persist.unit",
        process=current_process(),
        opened_at=timezone.now(),
        last_seen_at=timezone.now(),
    )
    remote = stale_row("otherhost:7", age=0)
    ids = [local.id, remote.connection_id, local.id, remote.connection_id]
    assert request_stop(ids) == 2
    registry.close(local, reasons.TERMINATED)


@pytest.mark.django_db
def test_request_stop_works_in_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(terminate, "BATCH_SIZE", 2)
    rows = [stale_row("otherhost:7", age=0) for _ in range(5)]
    assert request_stop([row.connection_id for row in rows]) == 5
    # Only these rows: a history writer of an earlier test may have flushed late ones.
    ids = [row.connection_id for row in rows]
    asked = StreamConnection.objects.filter(connection_id__in=ids)
    assert set(asked.values_list("stop_requested", flat=True)) == {"terminated"}


@pytest.mark.django_db
def test_a_database_error_propagates_after_the_local_stops(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    local = open_connection()

    def down(*args: Any, **kwargs: Any) -> Any:
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(QuerySet, "update", down)
    with pytest.raises(OperationalError):
        request_stop([local.id])
    assert local.stop_reason == "terminated"  # stopped all the same
    registry.close(local, reasons.TERMINATED)


@pytest.mark.parametrize("reason", ["", "bored", "forbidden", "Terminated"])
def test_request_stop_refuses_what_is_not_a_close_reason(reason: str) -> None:
    local = open_connection()
    with pytest.raises(ValueError, match="unknown close reason"):
        request_stop([local.id], reason)
    assert local.stop_reason is None  # nothing was asked
    registry.close(local, reasons.COMPLETED)
