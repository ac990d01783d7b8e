"""Traffic per stream and time bucket (``observing._activity``): counted as connections open
and close, written by the history writer for other processes, read by the dashboard."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from django_flosse.models import StreamActivity
from django_flosse.observing import _activity
from django_flosse.observing._activity import (
    BUCKET,
    DASHBOARD_STREAM,
    KEEP,
    Activity,
    activity,
    bucket_of,
)
from django_flosse.observing.registry import Connection, current_process, registry

START = 1_700_000_000.0  # a bucket boundary (divisible by BUCKET)


class Clock:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = START
        monkeypatch.setattr(_activity.time, "time", lambda: self.now)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    return Clock(monkeypatch)


def _connection(stream: str = "act.test", reason: str | None = None) -> Connection:
    return Connection(id=uuid.uuid4().hex, stream=stream, close_reason=reason)


def test_opens_and_closes_are_counted_per_stream_and_bucket(clock: Clock) -> None:
    act = Activity()
    for _ in range(3):
        act.connection_opened(_connection())
    act.connection_closed(_connection(reason="cancelled"))
    clock.now += BUCKET
    act.connection_closed(_connection(reason="error"))
    act.connection_closed(_connection(reason="completed"))
    act.connection_opened(_connection("act.other"))

    assert act.counts(START) == {"act.test": (3, 1, 1), "act.other": (1, 0, 0)}
    assert act.counts(START + BUCKET) == {"act.test": (0, 0, 1), "act.other": (1, 0, 0)}
    # Open connections at the end of each bucket, carried over quiet ones.
    buckets = [int(START) + i * BUCKET for i in range(4)]
    assert act.active_series(buckets) == [2, 1, 1, 1]


def test_the_dashboard_stream_is_left_out(clock: Clock) -> None:
    act = Activity()
    act.connection_opened(_connection(DASHBOARD_STREAM))
    assert act.counts(START) == {} and act.take_rows(START) == []


def test_old_buckets_are_forgotten_but_long_lived_connections_still_count(clock: Clock) -> None:
    act = Activity()
    act.connection_opened(_connection())
    act.connection_opened(_connection())
    clock.now += KEEP + 5 * BUCKET  # nothing since: the first bucket is dropped
    act.connection_opened(_connection("act.other"))

    assert act.counts(clock.now - 600) == {"act.other": (1, 0, 0)}
    assert act.active_series([bucket_of(clock.now) - BUCKET, bucket_of(clock.now)]) == [2, 3]


def test_rows_for_the_writer_are_the_changed_buckets_and_the_open_streams(clock: Clock) -> None:
    act = Activity()
    act.connection_opened(_connection())
    first = act.take_rows(clock.now)
    assert [(r.bucket, r.stream, r.opened, r.active) for r in first] == [
        (int(START), "act.test", 1, 1)
    ]
    assert act.take_rows(clock.now) == first  # still open: its bucket row is refreshed
    clock.now += BUCKET
    rows = act.take_rows(clock.now)
    assert [(r.bucket, r.opened, r.active) for r in rows] == [(int(START) + BUCKET, 0, 1)]
    act.connection_closed(_connection(reason="cancelled"))
    act.give_back(rows)  # a failed write: written again next time
    assert [(r.bucket, r.cancelled, r.active) for r in act.take_rows(clock.now)] == [
        (int(START) + BUCKET, 1, 0)
    ]
    assert act.take_rows(clock.now) == []  # nothing open, nothing changed


@pytest.mark.django_db
def test_the_writer_stores_this_process_buckets(
    writer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    connection = Connection(id=uuid.uuid4().hex, stream="act.stored", process=current_process())
    assert registry.open(connection) is None
    connection.events_sent, connection.bytes_sent = 4, 100
    writer.flush()
    registry.close(connection, "cancelled")
    writer.flush()
    rows = list(StreamActivity.objects.filter(stream="act.stored").order_by("bucket"))
    # One row, or two if the flushes fell on both sides of a bucket boundary.
    assert {row.process for row in rows} == {current_process()}
    assert (sum(r.opened for r in rows), sum(r.cancelled for r in rows)) == (1, 1)
    assert (rows[-1].active, rows[-1].events_total, rows[-1].bytes_total) == (0, 4, 100)

    # The dashboard of another process counts them (from the table, not from its memory).
    from django_flosse.observing import _dashboard

    activity.reset()
    monkeypatch.setattr(_dashboard, "current_process", lambda: "another.host:1")
    cards = _dashboard.Feed(top=10).snapshot()["cards"]
    card = next(c for c in cards if c["stream"] == "act.stored")
    assert (card["opened"], card["cancelled"], card["active"]) == (1, 1, 0)


@pytest.mark.django_db
def test_the_writer_deletes_buckets_the_dashboard_no_longer_shows(writer: Any) -> None:
    StreamActivity.objects.create(process="gone:1", stream="s", bucket=int(START))
    recent = StreamActivity.objects.create(
        process="gone:1", stream="s", bucket=bucket_of(time.time())
    )
    writer.apply_retention()
    assert list(StreamActivity.objects.values_list("pk", flat=True)) == [recent.pk]
