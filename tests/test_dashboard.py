"""The live dashboard: permissions of every role, the feed's protocol, and its cost at scale."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test import Client, override_settings
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from django_flosse.models import StreamActivity, StreamConnection
from django_flosse.observing import _dashboard as dashboard
from django_flosse.observing._activity import bucket_of
from django_flosse.observing.registry import Connection, current_process, registry
from django_flosse.testing import collect_events
from tests.support.admin_login import log_in

PAGE = "admin:django_flosse_dashboard"
FEED = "admin:django_flosse_dashboard_stream"
TERMINATE = "admin:django_flosse_dashboard_terminate"
ELSEWHERE = "elsewhere.example:4242"  # another process: its rows come from the table


def _user(username: str, *perms: str, staff: bool = True) -> User:
    user: User = User.objects.create_user(username, password="pw", is_staff=staff)
    for codename in perms:
        user.user_permissions.add(Permission.objects.get(codename=codename))
    return user


def _client(user: User, **kwargs: Any) -> Client:
    client = Client(**kwargs)
    client.force_login(user)
    return client


def _row(stream: str = "dash.test", *, process: str = ELSEWHERE, **fields: Any) -> StreamConnection:
    now = timezone.now()
    values: dict[str, Any] = {
        "connection_id": uuid.uuid4().hex,
        "stream": stream,
        "process": process,
        "opened_at": now,
        "last_seen_at": now,
        "username": "alice",
        "client_ip": "10.0.0.7",
    }
    values.update(fields)
    return StreamConnection(**values)


def _activity(stream: str = "dash.test", *, process: str = ELSEWHERE, **fields: Any) -> Any:
    """Another process's traffic in the current bucket, as its history writer stores it."""
    values: dict[str, Any] = {
        "process": process,
        "stream": stream,
        "bucket": bucket_of(time.time()),
    }
    values.update(fields)
    return StreamActivity.objects.update_or_create(
        process=values.pop("process"),
        stream=values.pop("stream"),
        bucket=values.pop("bucket"),
        defaults=values,
    )[0]


def _dashboard_opened() -> int:
    totals = registry.totals().get(dashboard.DASHBOARD_STREAM)
    return 0 if totals is None else totals.opened


@pytest.fixture
def local_connections() -> Iterator[list[Connection]]:
    """Connections opened in this process's registry; closed after the test."""
    opened: list[Connection] = []
    yield opened
    for conn in opened:
        registry.close(conn, "completed")


def _open_local(opened: list[Connection], stream: str = "dash.local") -> Connection:
    conn = Connection(id=uuid.uuid4().hex, stream=stream, username="bob", process=current_process())
    assert registry.open(conn) is None
    opened.append(conn)
    return conn


# ----------------------------------------------------------------------------- roles
@pytest.mark.django_db
@pytest.mark.parametrize("name", [PAGE, FEED])
def test_anonymous_is_sent_to_the_admin_login(client: Client, name: str) -> None:
    before = _dashboard_opened()
    response = client.get(reverse(name))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login") + "?next=")
    assert _dashboard_opened() == before


@pytest.mark.django_db
def test_anonymous_cannot_terminate(client: Client) -> None:
    response = client.post(reverse(TERMINATE), {"connection_id": "a" * 32})
    assert response.status_code == 302


@pytest.mark.django_db
@pytest.mark.parametrize("name", [PAGE, FEED])
def test_staff_without_view_permission_gets_403_and_no_stream(name: str) -> None:
    client = _client(_user("staff"))
    before = _dashboard_opened()
    response = client.get(reverse(name))
    assert response.status_code == 403
    assert not response.streaming
    assert _dashboard_opened() == before


@pytest.mark.django_db
def test_a_user_who_is_not_staff_never_gets_the_feed() -> None:
    client = _client(_user("outsider", "view_streamconnection", staff=False))
    response = client.get(reverse(FEED))
    assert response.status_code == 302  # admin_view: not staff means the admin login


@pytest.mark.django_db
def test_viewer_sees_the_page_without_terminate() -> None:
    client = _client(_user("viewer", "view_streamconnection"))
    response = client.get(reverse(PAGE))
    assert response.status_code == 200
    html = response.content.decode()
    assert f'data-stream-url="{reverse(FEED)}"' in html
    assert "data-terminate-url" not in html
    assert "django_flosse/js/chart.js" in html  # before dashboard.js, which uses it
    assert html.index("django_flosse/js/chart.js") < html.index("django_flosse/js/dashboard.js")
    assert "django_flosse/css/dashboard.css" in html
    assert 'id="flosse-i18n"' in html
    assert response.templates[0].name == "django_flosse/dashboard.html"


@pytest.mark.django_db
def test_viewer_cannot_terminate() -> None:
    client = _client(_user("viewer", "view_streamconnection"))
    response = client.post(reverse(TERMINATE), {"connection_id": "a" * 32})
    assert response.status_code == 403


@pytest.mark.django_db
def test_terminate_permission_alone_is_not_enough() -> None:
    client = _client(_user("terminator", "terminate_streamconnection"))
    response = client.post(reverse(TERMINATE), {"connection_id": "a" * 32})
    assert response.status_code == 403


@pytest.mark.django_db(transaction=True)
def test_viewer_gets_the_feed() -> None:
    client = _client(_user("viewer", "view_streamconnection"))
    response = client.get(reverse(FEED))
    assert response.status_code == 200
    assert response["Content-Type"] == "text/event-stream; charset=utf-8"
    assert "no-cache" in response["Cache-Control"]
    events = collect_events(response, max_events=1)
    assert [e.event for e in events] == ["snapshot"]


@pytest.mark.django_db
def test_operator_page_has_terminate_and_csrf_token() -> None:
    client = _client(_user("operator", "view_streamconnection", "terminate_streamconnection"))
    html = client.get(reverse(PAGE)).content.decode()
    assert f'data-terminate-url="{reverse(TERMINATE)}"' in html
    assert 'name="csrfmiddlewaretoken"' in html


@pytest.mark.django_db
def test_terminate_needs_csrf_and_flags_the_row_for_its_process() -> None:
    operator = _user("operator", "view_streamconnection", "terminate_streamconnection")
    client = _client(operator, enforce_csrf_checks=True)
    row = _row()
    row.save()
    url = reverse(TERMINATE)

    assert client.post(url, {"connection_id": row.connection_id}).status_code == 403
    row.refresh_from_db()
    assert row.stop_requested == ""

    client.get(reverse(PAGE))  # sets the CSRF cookie, as the browser's visit does
    token = client.cookies["csrftoken"].value
    response = client.post(url, {"connection_id": row.connection_id}, HTTP_X_CSRFTOKEN=token)
    assert response.status_code == 200
    assert response.json() == {"requested": 1, "stopped": 1}
    row.refresh_from_db()
    assert row.stop_requested == "terminated"


@pytest.mark.django_db
def test_terminate_stops_a_local_stream_at_once(local_connections: list[Connection]) -> None:
    conn = _open_local(local_connections)
    client = _client(_user("operator", "view_streamconnection", "terminate_streamconnection"))
    response = client.post(reverse(TERMINATE), {"connection_id": conn.id})
    assert response.json()["stopped"] == 1
    assert conn.stop_reason == "terminated"


@pytest.mark.django_db
@pytest.mark.parametrize(
    "data", [{}, {"connection_id": ""}, {"connection_id": "x" * 33}, {"connection_id": "a b"}]
)
def test_terminate_refuses_bad_ids(data: dict[str, str]) -> None:
    client = _client(_user("operator", "view_streamconnection", "terminate_streamconnection"))
    assert client.post(reverse(TERMINATE), data).status_code == 400


@pytest.mark.django_db
def test_terminate_is_post_only(admin_client: Client) -> None:
    assert admin_client.get(reverse(TERMINATE)).status_code == 405


# ----------------------------------------------------------------------------- links
@pytest.mark.django_db
def test_app_index_and_history_link_to_the_dashboard() -> None:
    client = _client(_user("viewer", "view_streamconnection"))
    link = f'href="{reverse(PAGE)}"'
    app_index = client.get(reverse("admin:app_list", args=["django_flosse"]))
    assert link in app_index.content.decode()
    changelist = client.get(reverse("admin:django_flosse_streamconnection_changelist"))
    assert link in changelist.content.decode()


@pytest.mark.django_db
def test_app_index_hides_the_link_without_permission() -> None:
    user = _user("auditor", "view_permission")  # sees the auth app, not ours
    response = _client(user).get(reverse("admin:app_list", args=["django_flosse"]))
    assert reverse(PAGE) not in response.content.decode()


# ----------------------------------------------------------------------------- the feed
@pytest.mark.django_db(transaction=True)
def test_first_frame_is_a_snapshot_of_the_table(admin_client: Client) -> None:
    old = _row(opened_at=timezone.now() - timedelta(seconds=30))
    new = _row(username="carol")
    gone = _row(closed_at=timezone.now(), close_reason="cancelled")
    StreamConnection.objects.bulk_create([old, new, gone])
    _activity(opened=3, cancelled=1, active=2)

    events = collect_events(admin_client.get(reverse(FEED)), max_events=1)
    snapshot = events[0].json()

    assert events[0].event == "snapshot"
    assert [r["id"] for r in snapshot["rows"]] == [new.connection_id, old.connection_id]
    assert snapshot["rows"][0] | {"opened": 0} == {
        "id": new.connection_id, "stream": "dash.test", "user": "carol", "ip": "10.0.0.7",
        "process": ELSEWHERE, "opened": 0, "events": 0, "bytes": 0, "last": None,
    }  # fmt: skip
    assert snapshot["total"] == 2
    card = next(c for c in snapshot["cards"] if c["stream"] == "dash.test")
    assert card == {"stream": "dash.test", "active": 2, "opened": 3, "cancelled": 1,
                    "errors": 0, "eps": 0.0, "bps": 0}  # fmt: skip
    assert len(snapshot["history"]) == dashboard.HISTORY_POINTS + 1
    assert snapshot["history"][-1][1] == 2
    assert snapshot["window"] == dashboard.WINDOW


@pytest.mark.django_db
def test_updates_carry_only_changes() -> None:
    rows = [_row(), _row()]
    StreamConnection.objects.bulk_create(rows)
    _activity(opened=2, active=2)
    feed = dashboard.Feed(top=10)
    feed.snapshot()
    assert feed.poll() is None  # nothing changed: no frame

    # What the other process's writer does when one closes and the other sends 5 events.
    StreamConnection.objects.filter(pk=rows[0].pk).update(
        closed_at=timezone.now(), close_reason="cancelled"
    )
    StreamConnection.objects.filter(pk=rows[1].pk).update(events_sent=5, bytes_sent=80)
    _activity(opened=2, cancelled=1, active=1, events_total=5, bytes_total=80)
    update = feed.poll()

    assert update is not None
    assert update["remove"] == [rows[0].connection_id]
    assert [(r["id"], r["events"]) for r in update["upsert"]] == [(rows[1].connection_id, 5)]
    assert update["total"] == 1
    card = next(c for c in update["cards"] if c["stream"] == "dash.test")
    assert (card["active"], card["cancelled"]) == (1, 1)
    assert card["eps"] > 0  # 5 events since the last poll
    settled = feed.poll()  # the rate falls back to 0: that is a change too
    assert settled is not None and settled["upsert"] == settled["remove"] == []
    assert feed.poll() is None


@pytest.mark.django_db
def test_this_process_comes_from_the_registry_at_once(
    local_connections: list[Connection],
) -> None:
    feed = dashboard.Feed(top=10)
    feed.snapshot()
    conn = _open_local(local_connections)  # no row in the table yet

    update = feed.poll()
    assert update is not None
    assert [r["id"] for r in update["upsert"]] == [conn.id]
    card = next(c for c in update["cards"] if c["stream"] == "dash.local")
    assert (card["active"], card["opened"]) == (1, 1)

    conn.events_sent, conn.bytes_sent = 100, 4000
    time.sleep(0.1)
    update = feed.poll()
    assert update is not None
    card = next(c for c in update["cards"] if c["stream"] == "dash.local")
    assert card["eps"] > 0 and card["bps"] > 0

    registry.close(conn, "cancelled")
    update = feed.poll()
    assert update is not None
    assert update["remove"] == [conn.id]
    card = next(c for c in update["cards"] if c["stream"] == "dash.local")
    assert (card["active"], card["cancelled"]) == (0, 1)


@pytest.mark.django_db
def test_the_dashboard_leaves_out_its_own_stream(local_connections: list[Connection]) -> None:
    _open_local(local_connections, stream=dashboard.DASHBOARD_STREAM)
    StreamConnection.objects.bulk_create([_row(dashboard.DASHBOARD_STREAM)])
    snapshot = dashboard.Feed(top=10).snapshot()
    assert snapshot["rows"] == [] and snapshot["total"] == 0
    assert all(c["stream"] != dashboard.DASHBOARD_STREAM for c in snapshot["cards"])


@pytest.mark.django_db
@override_settings(FLOSSE={"DASHBOARD_TOP": 25})
def test_ten_thousand_live_connections_stay_cheap() -> None:
    start = timezone.now() - timedelta(hours=1)
    StreamConnection.objects.bulk_create(
        [
            _row(
                f"dash.big{i % 3}",
                opened_at=start + timedelta(milliseconds=i),
                events_sent=i,
                bytes_sent=10 * i,
            )
            for i in range(10_000)
        ],
        batch_size=500,
    )
    feed = dashboard.Feed(top=25)

    with CaptureQueriesContext(connection) as queries:
        snapshot = feed.snapshot()
    assert len(queries) <= 5  # open per stream, top N, window counts, totals, history
    size = len(json.dumps(snapshot))
    assert size < 16_000
    assert snapshot["total"] == 10_000
    assert len(snapshot["rows"]) == 25
    assert snapshot["rows"][0]["events"] == 9_999  # newest first
    assert sum(c["active"] for c in snapshot["cards"]) == 10_000

    StreamConnection.objects.filter(events_sent=9_999).update(
        closed_at=timezone.now(), close_reason="error"
    )
    with CaptureQueriesContext(connection) as queries:
        update = feed.poll()
    assert len(queries) <= 4
    assert update is not None
    assert update["total"] == 9_999
    assert len(update["remove"]) == 1 and len(update["upsert"]) == 1  # the 26th moved up
    assert len(json.dumps(update)) < 2_000


@pytest.mark.django_db(transaction=True)
@override_settings(FLOSSE={"DASHBOARD_TOP": 5})
def test_the_feed_view_frame_is_bounded(admin_client: Client) -> None:
    StreamConnection.objects.bulk_create([_row() for _ in range(200)])
    events = collect_events(admin_client.get(reverse(FEED)), max_events=1)
    snapshot = events[0].json()
    assert snapshot["top"] == 5 and len(snapshot["rows"]) == 5 and snapshot["total"] == 200


# ----------------------------------------------------------------------------- real servers
def _next_event(lines: Iterator[str]) -> tuple[str, Any]:
    name, data = "message", ""
    for line in lines:
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data = line[6:]
        elif line == "" and data:
            return name, json.loads(data)
    raise AssertionError("the feed ended")


@pytest.mark.server
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("kind", ["uvicorn", "gunicorn"])
def test_feed_on_a_real_server(kind: str, live_server_factory: Any) -> None:
    """The feed streams on ASGI and WSGI servers, and a new stream reaches it at once."""
    User.objects.create_superuser("admin", "admin@example.com", "pw")
    server = live_server_factory(kind)
    with (
        httpx.Client(base_url=server.url, timeout=5.0) as admin,
        httpx.Client(base_url=server.url, timeout=5.0) as other,
    ):
        log_in(admin)
        with admin.stream("GET", reverse(FEED)) as feed:
            lines = feed.iter_lines()
            name, snapshot = _next_event(lines)
            assert name == "snapshot" and snapshot["rows"] == []
            with other.stream("GET", "/obs/async-endless/?every=0.2") as stream:
                started = time.monotonic()
                stream_lines = stream.iter_lines()
                next(stream_lines)
                while True:
                    name, update = _next_event(lines)
                    assert name == "update" and time.monotonic() - started < 2.0
                    if any(r["stream"] == "obs.async_endless" for r in update["upsert"]):
                        break
            print(f"\n{kind}: a new stream reached the feed in {time.monotonic() - started:.2f} s")


@pytest.mark.django_db
@override_settings(USE_TZ=False, TIME_ZONE="America/Chicago")
def test_works_without_time_zone_support() -> None:
    now = timezone.now()  # naive, Chicago wall time
    StreamConnection.objects.bulk_create([_row(opened_at=now, last_seen_at=now)])
    snapshot = dashboard.Feed(top=10).snapshot()
    assert snapshot["total"] == 1
    assert abs(snapshot["rows"][0]["opened"] - time.time()) < 5
