"""The connection history in the admin: read-only lists, terminate, and who may do what."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from django_flosse.models import StreamConnection
from django_flosse.observing import _history as persistence
from django_flosse.observing.registry import Connection, current_process, registry

pytestmark = pytest.mark.django_db

CHANGELIST = "admin:django_flosse_streamconnection_changelist"


@pytest.fixture(autouse=True)
def _no_writer() -> Iterator[None]:
    """These tests write rows themselves; keep the process's writer out of their way."""
    was_subscribed = persistence.writer in registry.observers()
    registry.unsubscribe(persistence.writer)
    persistence.writer.reset()  # streams of earlier tests: not written into these
    StreamConnection.objects.all().delete()  # nor what was written after their cleanup
    yield
    if was_subscribed:
        registry.subscribe(persistence.writer)


def make_row(**fields: Any) -> StreamConnection:
    now = timezone.now()
    values: dict[str, Any] = {
        "connection_id": uuid.uuid4().hex,
        "stream": "chat.room",
        "path": "/chat/room/",
        "process": "web-1:100",
        "opened_at": now - timedelta(minutes=5),
        "last_seen_at": now,
        "events_sent": 12,
        "bytes_sent": 3400,
    }
    values.update(fields)
    row: StreamConnection = StreamConnection.objects.create(**values)
    return row


def user_with(username: str, *codenames: str, staff: bool = True) -> User:
    user: User = User.objects.create_user(username, password="pw", is_staff=staff)
    perms = Permission.objects.filter(
        content_type__app_label="django_flosse", codename__in=codenames
    )
    assert perms.count() == len(codenames)
    user.user_permissions.add(*perms)
    return user


@pytest.fixture
def rows() -> list[StreamConnection]:
    return [
        make_row(username="ada", client_ip="10.0.0.7"),
        make_row(
            stream="feed.prices",
            path="/prices/",
            username="bob",
            closed_at=timezone.now(),
            close_reason="cancelled",
        ),
        make_row(
            stream="feed.prices",
            path="/prices/",
            process="web-2:200",
            closed_at=timezone.now() - timedelta(minutes=1),
            close_reason="lost",
        ),
    ]


def changelist(client: Client, query: str = "") -> Any:
    return client.get(reverse(CHANGELIST) + query)


def shown_streams(response: Any) -> list[str]:
    return re.findall(r'<th class="field-stream">(?:<a [^>]*>)?([^<]*)<', response.content.decode())


# ---------------------------------------------------------------------- what a superuser sees


def test_changelist_shows_the_columns(client: Client, rows: list[StreamConnection]) -> None:
    client.force_login(User.objects.create_superuser("root", password="pw"))
    response = changelist(client)
    assert response.status_code == 200
    html = response.content.decode()
    for column in (
        "stream",
        "user_display",
        "client_ip",
        "process",
        "opened_at",
        "duration",
        "events_sent",
        "bytes_sent",
        "state",
    ):
        assert f'class="sortable column-{column}' in html or f'class="column-{column}' in html
    assert "10.0.0.7" in html and "web-2:200" in html and "0:05:" in html
    assert sorted(shown_streams(response)) == ["chat.room", "feed.prices", "feed.prices"]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("?state=open", ["chat.room"]),
        ("?state=closed", ["feed.prices", "feed.prices"]),
        ("?close_reason__exact=lost", ["feed.prices"]),
        ("?close_reason__exact=cancelled", ["feed.prices"]),
        ("?stream=chat.room", ["chat.room"]),
        ("?q=bob", ["feed.prices"]),
        ("?q=10.0.0.7", ["chat.room"]),
        ("?q=/chat/", ["chat.room"]),
        ("?q=web-2", []),  # process is a column, not a search field
    ],
)
def test_filters_and_search(
    client: Client, rows: list[StreamConnection], query: str, expected: list[str]
) -> None:
    client.force_login(User.objects.create_superuser("root", password="pw"))
    response = changelist(client, query)
    assert response.status_code == 200
    assert sorted(shown_streams(response)) == expected


def test_user_filter_and_opened_filter(client: Client, rows: list[StreamConnection]) -> None:
    root = User.objects.create_superuser("root", password="pw")
    make_row(stream="mine", user=root, username="root", closed_at=timezone.now())
    client.force_login(root)
    response = changelist(client, f"?user__id__exact={root.pk}")
    assert shown_streams(response) == ["mine"]
    # The filtered user is listed (and selected) though no connection of theirs is open.
    assert re.search(r'<li class="selected">\s*<a [^>]*>root</a>', response.content.decode())
    html = changelist(client).content.decode()
    assert f'<a href="?user__id__exact={root.pk}">root</a>' in html  # the column links there
    assert len(shown_streams(changelist(client, "?user__isnull=True"))) == 3  # anonymous
    [past_week] = re.findall(r'<a href="(\?opened_at__gte=[^"]*)">Past 7 days</a>', html)
    response = changelist(client, past_week.replace("&amp;", "&"))
    assert response.status_code == 200 and len(shown_streams(response)) == 4


def test_the_user_filter_lists_only_users_with_open_connections(client: Client) -> None:
    """No enumeration: users with no open connection (or none at all) are not listed."""
    viewer = user_with("viewer", "view_streamconnection")
    for i in range(30):
        User.objects.create_user(f"bystander{i}")
    connected = User.objects.create_user("connected")
    gone = User.objects.create_user("gone")
    make_row(user=connected, username="connected")
    make_row(user=gone, username="gone", closed_at=timezone.now(), close_reason="cancelled")
    client.force_login(viewer)
    html = changelist(client).content.decode()
    [filter_html] = re.findall(r'data-filter-title="user".*?</details>', html, re.S)
    assert f"?user__id__exact={connected.pk}" in filter_html
    assert f"?user__id__exact={gone.pk}" not in filter_html
    assert "bystander" not in html and "viewer</a>" not in filter_html


def test_the_changelist_reads_no_whole_table_for_its_filters(
    client: Client, rows: list[StreamConnection], django_assert_max_num_queries: Any
) -> None:
    """Filters that read every row (DISTINCT over the history, the user table, the dates of
    a date hierarchy) made the page take seconds on a big history."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client.force_login(User.objects.create_superuser("root", password="pw"))
    with CaptureQueriesContext(connection) as queries:
        assert changelist(client).status_code == 200
    table = StreamConnection._meta.db_table
    for query in queries:
        sql = query["sql"]
        assert "auth_user" not in sql or '"auth_user"."id" =' in sql, sql  # the session's user
        if table in sql and "DISTINCT" in sql.upper():
            assert '"closed_at" IS NULL' in sql, sql  # open rows only
        assert "django_datetime_trunc" not in sql, sql


def test_the_admin_closes_rows_of_dead_processes_as_lost(client: Client) -> None:
    dead = make_row(process="gone:1", last_seen_at=timezone.now() - timedelta(hours=1))
    client.force_login(User.objects.create_superuser("root", password="pw"))
    assert changelist(client).status_code == 200
    dead.refresh_from_db()
    assert dead.close_reason == "lost"


# ---------------------------------------------------------------------- read-only


def test_no_add_change_or_delete(client: Client, rows: list[StreamConnection]) -> None:
    client.force_login(User.objects.create_superuser("root", password="pw"))
    row = rows[0]
    assert client.get(reverse("admin:django_flosse_streamconnection_add")).status_code == 403
    change = reverse("admin:django_flosse_streamconnection_change", args=[row.pk])
    page = client.get(change)
    assert page.status_code == 200 and b'name="_save"' not in page.content  # read-only view
    assert client.post(change, {"stream": "hacked"}).status_code == 403
    delete = reverse("admin:django_flosse_streamconnection_delete", args=[row.pk])
    assert client.post(delete, {"post": "yes"}).status_code == 403
    row.refresh_from_db()
    assert row.stream == "chat.room"
    assert b"delete_selected" not in changelist(client).content


# ---------------------------------------------------------------------- roles


def test_anonymous_is_sent_to_the_login(client: Client, rows: list[StreamConnection]) -> None:
    response = changelist(client)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))


def test_staff_without_view_permission_gets_403(client: Client) -> None:
    client.force_login(user_with("clerk"))
    assert changelist(client).status_code == 403


def test_non_staff_with_the_permission_is_sent_to_the_login(client: Client) -> None:
    client.force_login(user_with("outsider", "view_streamconnection", staff=False))
    assert changelist(client).status_code == 302


def _terminate(client: Client, rows: list[StreamConnection]) -> Any:
    """POST the admin action as the browser would: with the CSRF token of the page."""
    page = changelist(client)
    token = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', page.content)
    assert token is not None
    return client.post(
        reverse(CHANGELIST),
        {
            "csrfmiddlewaretoken": token.group(1).decode(),
            "action": "terminate",
            "index": "0",
            "_selected_action": [str(row.pk) for row in rows],
        },
    )


def test_viewer_without_terminate_permission_cannot_terminate(
    rows: list[StreamConnection],
) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(user_with("viewer", "view_streamconnection"))
    page = changelist(client)
    assert page.status_code == 200
    assert b'value="terminate"' not in page.content
    _terminate(client, rows)
    assert not StreamConnection.objects.exclude(stop_requested="").exists()


def test_terminate_action_flags_open_rows_and_stops_local_streams(
    rows: list[StreamConnection],
) -> None:
    live = Connection(id=uuid.uuid4().hex, stream="chat.room", process=current_process())
    assert registry.open(live) is None
    local = make_row(connection_id=live.id, process=current_process())
    client = Client(enforce_csrf_checks=True)
    client.force_login(user_with("operator", "view_streamconnection", "terminate_streamconnection"))
    assert b'value="terminate"' in changelist(client).content

    response = _terminate(client, [*rows, local])
    assert response.status_code == 302
    assert live.stop_reason == "terminated"  # this process's stream: at once
    flagged = StreamConnection.objects.exclude(stop_requested="")
    # Open rows only: the closed one is left alone.
    assert sorted(flagged.values_list("pk", flat=True)) == [rows[0].pk, local.pk]
    messages = [str(m) for m in response.wsgi_request._messages]
    assert messages == ["Asked 2 open connections to terminate."]
    registry.close(live, "terminated")


def test_terminate_without_the_csrf_token_is_refused(rows: list[StreamConnection]) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(User.objects.create_superuser("root", password="pw"))
    response = client.post(
        reverse(CHANGELIST),
        {"action": "terminate", "index": "0", "_selected_action": [str(rows[0].pk)]},
    )
    assert response.status_code == 403
    assert not StreamConnection.objects.exclude(stop_requested="").exists()


def test_dashboard_urls_come_first() -> None:
    assert reverse("admin:django_flosse_dashboard")
    assert reverse("admin:django_flosse_dashboard_stream")
