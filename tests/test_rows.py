"""A connection as a history row, and the batched statements (observing/_rows.py).

The registry keeps what the request said; a row must fit its columns and the database's
rules, or one bad value would fail a whole batch of inserts again and again.
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime
from datetime import timezone as dt_timezone
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection as db_connection
from django.test import override_settings
from django.utils import timezone

from django_flosse.models import StreamConnection
from django_flosse.observing._rows import (
    as_datetime,
    forget_deleted_users,
    history_row,
    update_each,
)
from django_flosse.observing.registry import Connection, current_process

NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt_timezone.utc)


def connection(**fields: Any) -> Connection:
    return Connection(**{"id": uuid.uuid4().hex, "stream": "rows.unit", **fields})


@pytest.mark.parametrize(
    ("client_ip", "stored"),
    [
        ("192.0.2.10", "192.0.2.10"),
        ("2001:db8::7", "2001:db8::7"),
        ("2001:DB8:0:0::7", "2001:db8::7"),  # normalised
        ("fe80::1%eth0", "fe80::1"),  # the zone is not part of the address
        ("unknown, 10.0.0.1", None),  # a proxy header's list
        ("unknown", None),
        ("999.1.1.1", None),
        ("", None),
        (None, None),
    ],
)
def test_client_addresses_are_validated(client_ip: str | None, stored: str | None) -> None:
    assert history_row(connection(client_ip=client_ip), NOW).client_ip == stored


@pytest.mark.parametrize(
    ("field", "value", "stored"),
    [
        ("path", "/a\x00b/", "/ab/"),  # PostgreSQL refuses NUL in text
        ("path", "p" * 900, "p" * 500),
        ("route", "r" * 900, "r" * 500),
        ("stream", "s" * 300, "s" * 200),
        ("username", "u" * 200, "u" * 150),
        ("user_agent", "a" * 600, "a" * 512),
        ("last_event_id", "\x00" + "7" * 600, "7" * 512),
        ("process", "h" * 300, "h" * 255),
        ("error_id", "e" * 20, "e" * 16),
    ],
)
def test_values_are_cut_to_their_columns_and_rid_of_nul(
    field: str, value: str, stored: str
) -> None:
    row = history_row(connection(**{field: value}), NOW)
    assert getattr(row, field) == stored
    column = StreamConnection._meta.get_field(field)
    assert len(stored) == min(len(value.replace("\x00", "")), column.max_length)


@pytest.mark.parametrize(
    ("user_id", "stored"), [("42", 42), (None, None), ("not-a-pk", None), ("", None)]
)
def test_user_keys_get_the_keys_type(user_id: str | None, stored: int | None) -> None:
    assert history_row(connection(user_id=user_id), NOW).user_id == stored


def test_an_open_connection_is_an_open_row_seen_now() -> None:
    opened = time.time() - 5
    row = history_row(connection(opened_at=opened, process=""), NOW)
    assert row.closed_at is None and row.close_reason == ""
    assert row.last_seen_at == NOW
    assert row.opened_at == as_datetime(opened)
    assert row.process == current_process()  # a connection without one is this process's


def test_a_closed_connection_is_a_closed_row_last_seen_at_its_close() -> None:
    closed = time.time()
    row = history_row(
        connection(closed_at=closed, close_reason="cancelled", events_sent=3, bytes_sent=90),
        NOW,
    )
    assert row.closed_at == row.last_seen_at == as_datetime(closed)
    assert (row.close_reason, row.events_sent, row.bytes_sent) == ("cancelled", 3, 90)


def test_a_reason_without_a_close_time_is_not_written() -> None:
    # The stream sets its reason a moment before closed_at: a row built in between is open.
    row = history_row(connection(close_reason="completed"), NOW)
    assert (row.closed_at, row.close_reason) == (None, "")


@pytest.mark.parametrize("use_tz", [True, False])
def test_as_datetime_follows_use_tz(use_tz: bool) -> None:
    timestamp = NOW.timestamp()
    with override_settings(USE_TZ=use_tz, TIME_ZONE="Europe/Paris"):
        moment = as_datetime(timestamp)
    if use_tz:
        assert moment == NOW and timezone.is_aware(moment)
    else:
        assert moment == datetime(2025, 1, 2, 4, 4, 5)  # Paris wall-clock time, naive


@pytest.mark.django_db
def test_a_row_of_a_hostile_connection_saves() -> None:
    hostile = connection(
        path="/\x00" + "x" * 2000,
        client_ip="<script>",
        user_agent="\x00" * 10 + "a" * 10_000,
        last_event_id="1" * 10_000,
        user_id="999999",  # no such user
        error_id="e" * 100,
    )
    row = history_row(hostile, NOW)
    forget_deleted_users([row])
    row.save()
    row.full_clean()  # every value fits its column


@pytest.mark.django_db
def test_forget_deleted_users_keeps_the_users_that_exist(
    django_assert_num_queries: Any,
) -> None:
    alive = User.objects.create_user("alive")
    gone = User.objects.create_user("gone")
    rows = [
        history_row(connection(user_id=str(alive.pk), username="alive"), NOW),
        history_row(connection(user_id=str(gone.pk), username="gone"), NOW),
        history_row(connection(), NOW),
    ]
    gone.delete()
    with django_assert_num_queries(1):  # one query per flush, however many rows
        forget_deleted_users(rows)
    assert [(row.user_id, row.username) for row in rows] == [
        (alive.pk, "alive"),
        (None, "gone"),  # the name stays: the history says who it was
        (None, ""),
    ]
    with django_assert_num_queries(0):
        forget_deleted_users([history_row(connection(), NOW)])  # no user: no query


@pytest.mark.django_db
def test_update_each_writes_every_row_in_one_statement(django_assert_num_queries: Any) -> None:
    rows = [history_row(connection(), NOW) for _ in range(3)]
    StreamConnection.objects.bulk_create(rows)
    saved = list(StreamConnection.objects.order_by("pk"))
    for i, row in enumerate(saved):
        row.events_sent, row.bytes_sent, row.close_reason = i + 1, 10 * (i + 1), "error"
        row.path = "/not-written/"
    with django_assert_num_queries(1) as captured:
        update_each(saved, ["events_sent", "bytes_sent", "close_reason"], "default")
    # One prepared statement run with executemany (not bulk_update's CASE per field).
    assert captured.captured_queries[0]["sql"] == (
        '3 times: UPDATE "django_flosse_streamconnection" SET "events_sent" = %s, '
        '"bytes_sent" = %s, "close_reason" = %s WHERE "id" = %s'
    )
    assert list(
        StreamConnection.objects.order_by("pk").values_list(
            "events_sent", "bytes_sent", "close_reason", "path"
        )
    ) == [(1, 10, "error", ""), (2, 20, "error", ""), (3, 30, "error", "")]


@pytest.mark.django_db
def test_update_each_of_nothing_runs_no_query(django_assert_num_queries: Any) -> None:
    with django_assert_num_queries(0):
        update_each([], ["events_sent"], db_connection.alias)
