"""Security: who may see what, what a client can learn, and what a client can send.

What is proven elsewhere and not repeated here: the dashboard roles of anonymous users,
staff without permission, non-staff on the feed, viewers and terminate-only users
(``test_dashboard.py``); the admin changelist and its terminate action (``test_admin.py``); the
metrics view's loopback, proxy, network, token and staff rules (``test_metrics.py``); the
generic error frame of ``/sync/fails/`` in process and on real servers (``test_decorators.py``,
``test_servers.py``). This file adds the roles those leave out (superuser, a deactivated
superuser, non-staff holding every permission, staff with the change permission), the feed's
own permission check, CSRF with a wrong token or a foreign origin, exception text and internal
paths on every failure path, metric labels after a full session of one user from one address,
turning client IP recording off, and hostile ``Last-Event-ID`` headers.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.contrib.auth.models import AnonymousUser, Permission, User
from django.test import Client, RequestFactory, override_settings
from django.urls import reverse
from django.utils import timezone
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from django_flosse import views
from django_flosse.models import StreamConnection
from django_flosse.observing import _dashboard as dashboard
from django_flosse.observing import _history as persistence
from django_flosse.observing.registry import Connection, registry
from django_flosse.streaming._clients import MAX_HEADER_LENGTH
from django_flosse.streaming._frames import ERROR_MESSAGE
from django_flosse.testing import collect_events, parse_events
from tests.support.responses import close_response, read_all
from tests.support.servers import LOGGING_SETTINGS, REPO_ROOT, ServerPool
from tests.support.wire import raw_request
from tests.views import SECURITY_SECRET

PAGE = "admin:django_flosse_dashboard"
FEED = "admin:django_flosse_dashboard_stream"
TERMINATE = "admin:django_flosse_dashboard_terminate"
METRICS = "/flosse/metrics/"
OUTSIDER = "203.0.113.9"  # TEST-NET-3: not loopback, not in any allow-list

#: Text that must never reach a client with DEBUG off: the exception's message, its type,
#: a traceback and the server's file system layout.
LEAKS = (SECURITY_SECRET, str(REPO_ROOT), "Traceback", "RuntimeError", 'File "', "views.py")


def _no_leak(body: bytes) -> None:
    text = body.decode("utf-8", "replace")
    for leak in LEAKS:
        assert leak not in text, (leak, text[:500])


def _dashboard_opened() -> int:
    totals = registry.totals().get(dashboard.DASHBOARD_STREAM)
    return 0 if totals is None else totals.opened


# ============================================================================ roles

ROLES: dict[str, dict[str, Any]] = {
    "superuser": {"superuser": True},
    "deactivated superuser": {"superuser": True, "is_active": False},
    "non-staff with every permission": {
        "staff": False,
        "perms": ("view_streamconnection", "terminate_streamconnection"),
    },
    "staff with no permission": {},
    "staff with the change permission": {"perms": ("change_streamconnection",)},
}


def _make(role: str) -> User:
    spec = ROLES[role]
    name = re.sub(r"\W", "-", role)
    if spec.get("superuser"):
        user: User = User.objects.create_superuser(name, password="pw")
    else:
        user = User.objects.create_user(name, password="pw", is_staff=spec.get("staff", True))
    for codename in spec.get("perms", ()):
        user.user_permissions.add(Permission.objects.get(codename=codename))
    if spec.get("is_active") is False:
        user.is_active = False
        user.save()
    return user


def _client(role: str, **kwargs: Any) -> Client:
    client = Client(**kwargs)
    client.force_login(_make(role))  # a deactivated account keeps its session cookie
    return client


def _open_row() -> StreamConnection:
    now = timezone.now()
    row: StreamConnection = StreamConnection.objects.create(
        connection_id=uuid.uuid4().hex,
        stream="security.victim",
        process="elsewhere.example:1",
        opened_at=now,
        last_seen_at=now,
    )
    return row


#: (role, page, terminate, metrics from an outside address): expected status codes. 302 is
#: admin_view's redirect to the login page. Metrics are for staff (any staff, by design).
MATRIX = [
    ("superuser", 200, 200, 200),
    ("deactivated superuser", 302, 302, 403),
    ("non-staff with every permission", 302, 302, 403),
    ("staff with no permission", 403, 403, 200),
    ("staff with the change permission", 200, 403, 200),
]


@pytest.mark.django_db
@pytest.mark.parametrize(("role", "page", "terminate", "metrics"), MATRIX)
def test_role_matrix(role: str, page: int, terminate: int, metrics: int) -> None:
    client = _client(role, REMOTE_ADDR=OUTSIDER)
    row = _open_row()

    assert client.get(reverse(PAGE)).status_code == page

    response = client.post(reverse(TERMINATE), {"connection_id": row.connection_id})
    assert response.status_code == terminate
    row.refresh_from_db()
    assert row.stop_requested == ("terminated" if terminate == 200 else "")

    response = client.get(METRICS)
    assert response.status_code == metrics
    assert (b"flosse_connections_active" in response.content) == (metrics == 200)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("role", "status"),
    [
        ("superuser", 200),
        ("deactivated superuser", 302),
        ("staff with the change permission", 200),
        ("non-staff with every permission", 302),
    ],
)
def test_feed_roles(role: str, status: int) -> None:
    client = _client(role)
    before = _dashboard_opened()
    response = client.get(reverse(FEED))
    assert response.status_code == status
    if status == 200:
        assert [e.event for e in collect_events(response, max_events=1)] == ["snapshot"]
        assert _dashboard_opened() == before + 1
    else:
        assert not response.streaming
        assert _dashboard_opened() == before


@pytest.mark.django_db
@pytest.mark.parametrize(
    "role", ["anonymous", "non-staff with every permission", "staff with no permission"]
)
def test_the_feed_stream_checks_permissions_itself(role: str) -> None:
    """Routed without the admin wrapper (a project's own URL), the feed still refuses."""
    request = RequestFactory().get("/somewhere/feed/")
    request.user = AnonymousUser() if role == "anonymous" else _make(role)
    rejected = registry.totals().get(dashboard.DASHBOARD_STREAM)
    forbidden = 0 if rejected is None else rejected.rejected["forbidden"]
    before = _dashboard_opened()

    response = async_to_sync(views._feed)(request)

    assert response.status_code == 403
    assert not response.streaming
    assert _dashboard_opened() == before
    assert registry.totals()[dashboard.DASHBOARD_STREAM].rejected["forbidden"] == forbidden + 1


def test_the_dashboard_script_never_writes_html() -> None:
    """Usernames, client IPs (from a proxy header when CLIENT_IP_HEADER is set: the client's
    to make up) and stream names reach the page as JSON in the feed; the script must put
    them in as text, never parse them as HTML."""
    scripts = sorted((REPO_ROOT / "django_flosse/static/django_flosse/js").glob("*.js"))
    assert {path.name for path in scripts} >= {"dashboard.js", "chart.js"}
    sinks = r"\.(innerHTML|outerHTML)\b|insertAdjacentHTML|document\.write|\beval\(|new Function"
    for path in scripts:
        assert re.findall(sinks, path.read_text()) == [], path.name
    assert ".textContent = data.ip" in (scripts[0].parent / "dashboard.js").read_text()


# ============================================================================ CSRF


def _csrf_client(role: str = "superuser") -> tuple[Client, str]:
    client = _client(role, enforce_csrf_checks=True)
    client.get(reverse(PAGE))  # the page sets the CSRF cookie, as in the browser
    return client, client.cookies["csrftoken"].value


@pytest.mark.django_db
def test_terminate_without_csrf_fails_even_for_a_superuser() -> None:
    client, _ = _csrf_client()
    row = _open_row()
    assert client.post(reverse(TERMINATE), {"connection_id": row.connection_id}).status_code == 403
    row.refresh_from_db()
    assert row.stop_requested == ""


@pytest.mark.django_db
def test_terminate_with_the_token_of_another_session_fails() -> None:
    client, _ = _csrf_client()
    _, other_token = _csrf_client("staff with the change permission")
    row = _open_row()
    response = client.post(
        reverse(TERMINATE), {"connection_id": row.connection_id}, HTTP_X_CSRFTOKEN=other_token
    )
    assert response.status_code == 403
    row.refresh_from_db()
    assert row.stop_requested == ""


@pytest.mark.django_db
def test_terminate_from_a_foreign_origin_fails_even_with_the_token() -> None:
    client, token = _csrf_client()
    row = _open_row()
    url = reverse(TERMINATE)
    data = {"connection_id": row.connection_id}
    foreign = client.post(url, data, HTTP_X_CSRFTOKEN=token, HTTP_ORIGIN="http://evil.example")
    assert foreign.status_code == 403
    row.refresh_from_db()
    assert row.stop_requested == ""
    # The same request from the site's own origin goes through (the control).
    own = client.post(url, data, HTTP_X_CSRFTOKEN=token, HTTP_ORIGIN="http://testserver")
    assert own.status_code == 200
    row.refresh_from_db()
    assert row.stop_requested == "terminated"


# ============================================================================ leaks


@pytest.mark.parametrize("url", ["/security/leaky/", "/security/leaky-async/"])
def test_no_exception_text_or_path_reaches_the_client(url: str) -> None:
    with capture_logs() as logs:
        response = Client().get(url)
        body = read_all(response)
    _no_leak(body)
    events = parse_events(body)
    assert [e.event for e in events] == ["message", "error"]
    payload = json.loads(events[1].data)
    assert payload == {"message": ERROR_MESSAGE, "error_id": payload["error_id"]}
    # The operator's log has all of it, under the same error id.
    [error] = [e for e in logs if e["event"] == "sse.stream.error"]
    assert error["error_id"] == payload["error_id"]
    assert SECURITY_SECRET in str(error["exc_info"])


def test_a_failing_permission_class_is_a_bare_500() -> None:
    response = Client(raise_request_exception=False).get("/security/leaky-permission/")
    assert response.status_code == 500
    assert not response.streaming
    _no_leak(response.content)


@override_settings(DEBUG=True)
@pytest.mark.parametrize("url", ["/security/leaky/", "/security/leaky-async/"])
def test_with_debug_the_detail_is_there(url: str) -> None:
    events = parse_events(read_all(Client().get(url)))
    payload = json.loads(events[-1].data)
    assert payload["detail"].startswith(f"RuntimeError: {SECURITY_SECRET} at ")
    assert str(REPO_ROOT) in payload["detail"]
    assert payload["message"] == ERROR_MESSAGE


#: The servers the raw requests go through.
REAL_SERVERS = ["uvicorn", "gunicorn", "hypercorn", "granian-asgi", "granian-wsgi"]


@pytest.mark.server
@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", REAL_SERVERS)
@pytest.mark.parametrize(
    "path", ["/security/leaky/", "/security/leaky-async/", "/security/leaky-permission/"]
)
def test_no_leak_through_a_real_server(server_pool: ServerPool, kind: str, path: str) -> None:
    server = server_pool.get(kind, LOGGING_SETTINGS)
    status, body = raw_request(server, path)
    _no_leak(body)
    if path.endswith("permission/"):
        assert status == 500
    else:
        assert status == 200
        assert [e.event for e in parse_events(body)] == ["message", "error"]
    logs = server.logs()
    assert SECURITY_SECRET in logs  # the operator sees it
    assert "Traceback" in logs


# ============================================================================ metric labels


@pytest.mark.django_db
# No history: this test is about metrics and logs, and its rows would be written by the
# history writer's thread on a connection of its own, blocked by this test's transaction
# until after its rollback: a row left behind for the next test.
@override_settings(FLOSSE={"CLIENT_IP_HEADER": "HTTP_X_FORWARDED_FOR", "PERSISTENCE": False})
def test_no_user_ip_or_id_in_any_metric_after_a_users_session() -> None:
    tag = uuid.uuid4().hex[:10]
    user = User.objects.create_user(f"user-{tag}", password="pw", is_staff=True, id=987_654_321)
    client = Client(REMOTE_ADDR="192.0.2.77")
    client.force_login(user)
    headers: dict[str, Any] = {
        "HTTP_X_FORWARDED_FOR": "198.51.100.23, 10.9.8.7",
        "HTTP_USER_AGENT": f"agent-{tag}",
        "HTTP_LAST_EVENT_ID": f"leid-{tag}",
    }
    with capture_logs() as logs:
        for url in (
            f"/sync/count/?n=2&q={tag}",
            "/async/count/?n=2",
            "/sync/private/",
            "/async/private/",
            "/security/leaky/",
            "/security/leaky-async/",
            "/obs/forbidden/",
        ):
            response = client.get(url, **headers)
            if response.streaming:
                read_all(response)  # to the end: completed or error
        held = client.get("/obs/per-user/", **headers)
        assert client.get("/obs/per-user/", **headers).status_code == 429
        close_response(held)
    opened = [e for e in logs if e["event"] == "sse.connection.opened"]
    assert len(opened) == 7  # 6 streams + the held one (forbidden never opened)
    assert {e["client_ip"] for e in opened} == {"198.51.100.23"}
    ids = {e["connection_id"] for e in opened}
    error_ids = {e["error_id"] for e in logs if e["event"] == "sse.stream.error"}
    assert len(error_ids) == 2
    secrets = {
        user.username, str(user.pk), "198.51.100.23", "192.0.2.77", "10.9.8.7", f"agent-{tag}",
        f"leid-{tag}", tag, *ids, *error_ids,
    }  # fmt: skip

    families = [m for m in REGISTRY.collect() if m.name.startswith("flosse_")]
    assert families
    for family in families:
        for s in family.samples:
            keys = set(s.labels) - ({"le"} if s.name.endswith("_bucket") else set())
            assert keys <= {"stream", "reason"}, (s.name, s.labels)
            for value in s.labels.values():
                assert not any(secret in value for secret in secrets), (s.name, s.labels)
    # What Prometheus scrapes: not in any label, help text or sample line either.
    exposition = Client().get(METRICS).content.decode()
    assert "flosse_connections_opened_total" in exposition
    long_secrets = {s for s in secrets if len(s) > 8 and s not in error_ids}
    assert not [s for s in long_secrets if s in exposition]


# ============================================================================ client IPs


class _Recorder:
    """Registry observer keeping what each connection carried when it opened."""

    def __init__(self) -> None:
        self.ips: list[str | None] = []

    def connection_opened(self, connection: Connection) -> None:
        self.ips.append(connection.client_ip)

    def connection_closed(self, connection: Connection) -> None: ...

    def connection_rejected(self, stream: str, reason: str) -> None: ...


@pytest.fixture
def history() -> Iterator[persistence.PersistenceWriter]:
    """The process's writer, subscribed with a clean slate, flushed by the test."""
    writer = persistence.writer
    subscribed = writer in registry.observers()
    writer.reset()
    StreamConnection.objects.all().delete()
    if not subscribed:
        registry.subscribe(writer)
    with writer.paused():
        yield writer
    writer.reset()
    if not subscribed:
        registry.unsubscribe(writer)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("record", [True, False])
@pytest.mark.parametrize("header", [None, "HTTP_X_FORWARDED_FOR"])
def test_client_ip_recording_can_be_turned_off(
    history: persistence.PersistenceWriter, record: bool, header: str | None
) -> None:
    ip = "198.51.100.41" if header else "192.0.2.41"
    flosse = {"PERSISTENCE": True, "RECORD_CLIENT_IP": record, "CLIENT_IP_HEADER": header}
    recorder = _Recorder()
    registry.subscribe(recorder)
    try:
        with override_settings(FLOSSE=flosse), capture_logs() as logs:
            response = Client(REMOTE_ADDR="192.0.2.41").get(
                "/sync/count/?n=2", HTTP_X_FORWARDED_FOR="198.51.100.41"
            )
            assert len(collect_events(response, max_events=5)) == 2
            history.flush()
    finally:
        registry.unsubscribe(recorder)

    row = StreamConnection.objects.get(stream="tests.views.sync_count")
    [opened] = [e for e in logs if e["event"] == "sse.connection.opened"]
    if record:  # the control: the same request is recorded when recording is on
        assert recorder.ips == [ip]
        assert opened["client_ip"] == ip
        assert row.client_ip == ip
    else:
        assert recorder.ips == [None]
        assert opened["client_ip"] is None
        assert row.client_ip is None
        for entry in logs:  # in no field of any log entry
            assert "192.0.2.41" not in repr(entry) and "198.51.100.41" not in repr(entry)


# ============================================================================ Last-Event-ID


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("url", ["/security/echo-last-id/", "/security/echo-last-id-async/"])
def test_an_oversized_last_event_id_is_stored_truncated_and_the_view_still_works(
    history: persistence.PersistenceWriter, url: str
) -> None:
    header = "9" * 100_000
    with override_settings(FLOSSE={"PERSISTENCE": True}), capture_logs() as logs:
        events = collect_events(Client().get(url, HTTP_LAST_EVENT_ID=header), max_events=5)
        history.flush()
    # The view saw the whole header (only the stored copies are cut) and echoed it back.
    assert [(e.event, e.json(), e.id) for e in events] == [("resumed", {"length": 100_000}, header)]
    [opened] = [e for e in logs if e["event"] == "sse.connection.opened"]
    assert opened["last_event_id"] == header[:MAX_HEADER_LENGTH]
    row = StreamConnection.objects.get()
    assert row.last_event_id == header[:MAX_HEADER_LENGTH]


BAD_IDS = [
    pytest.param("1\r\nevent: pwned\r\n\r\ndata: injected", id="crlf"),
    # Markers with letters that are not hex digits: the error frame carries a random hex
    # error_id ("8666f0da" once held "666", the marker this case used to have).
    pytest.param("1\nid: forged", id="lf"),
    pytest.param("1\revent: pwned", id="cr"),
    pytest.param("1\x00event: pwned", id="nul"),
]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("url", ["/security/echo-last-id/", "/security/echo-last-id-async/"])
@pytest.mark.parametrize("header", BAD_IDS)
def test_a_malformed_last_event_id_echoed_back_cannot_inject_a_field(
    history: persistence.PersistenceWriter, url: str, header: str
) -> None:
    with override_settings(FLOSSE={"PERSISTENCE": True}), capture_logs() as logs:
        response = Client().get(url, HTTP_LAST_EVENT_ID=header)
        body = read_all(response)
        history.flush()
    assert b"pwned" not in body and b"injected" not in body and b"forged" not in body
    events = parse_events(body)
    assert [e.event for e in events] == ["error"]  # SSEEvent / tuple id refused: ValueError
    assert events[0].id is None
    [error] = [e for e in logs if e["event"] == "sse.stream.error"]
    assert isinstance(error["exc_info"], ValueError)
    assert "'id'" in str(error["exc_info"])
    row = StreamConnection.objects.get()
    assert "\x00" not in row.last_event_id  # PostgreSQL refuses NUL in text
    assert row.close_reason == "error"


@pytest.mark.parametrize("header", [h.values[0] for h in BAD_IDS])
def test_a_malformed_last_event_id_cannot_forge_a_log_line(
    caplog: pytest.LogCaptureFixture, header: str
) -> None:
    """Unconfigured structlog goes through the stdlib logger: the value is quoted (repr)."""
    caplog.set_level(logging.INFO, logger="django_flosse")
    collect_events(Client().get("/security/echo-last-id/", HTTP_LAST_EVENT_ID=header), max_events=5)
    [opened] = [r for r in caplog.records if "sse.connection.opened" in r.getMessage()]
    message = opened.getMessage()
    assert "\n" not in message and "\r" not in message and "\x00" not in message
    assert repr(header) in message


#: Raw header lines a client can put on the wire. A server may refuse one (4xx); when it
#: passes it on, the stream must stay well-formed (or end with an error frame).
RAW_HEADERS = [
    pytest.param(b"Last-Event-ID: \xff\xfe42\r\n", id="invalid-utf8"),
    pytest.param(b"Last-Event-ID: 1\x00event: pwned\r\n", id="nul"),
    pytest.param(b"Last-Event-ID: 1\revent: pwned\r\n", id="bare-cr"),
    pytest.param(b"Last-Event-ID: 1\r\n event: pwned\r\n", id="obs-fold"),
    pytest.param(b"Last-Event-ID: 1\r\nevent: pwned\r\n", id="another-header"),
    pytest.param(b"Last-Event-ID: " + b"9" * 100_000 + b"\r\n", id="100KB"),
]


@pytest.mark.server
@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", REAL_SERVERS)
@pytest.mark.parametrize("path", ["/security/echo-last-id/", "/security/echo-last-id-async/"])
@pytest.mark.parametrize("raw", RAW_HEADERS)
def test_raw_last_event_id_headers_through_a_real_server(
    server_pool: ServerPool, kind: str, path: str, raw: bytes
) -> None:
    server = server_pool.get(kind, LOGGING_SETTINGS)
    status, body = raw_request(server, path, raw)
    assert status < 500, (status, body[:300])
    if status == 200:
        events = parse_events(body)
        assert len(events) == 1, body[:300]
        assert events[0].event in ("resumed", "error")
        assert "pwned" not in events[0].event
        for line in re.split(rb"\r\n|\r|\n", body)[:-1]:
            assert line == b"" or re.match(rb"(data|event|id): ", line), line[:100]
        assert body.count(b"\nid: ") + body.startswith(b"id: ") <= 1
        if events[0].event == "resumed":  # the view saw the header whole
            assert events[0].json() == {"length": len(events[0].id or "")}
        if events[0].event == "resumed" and raw.startswith(b"Last-Event-ID: \xff"):
            if kind == "granian-wsgi":
                # granian's WSGI environ has an empty value for a header that is not ASCII:
                # the view sees no id (and resumes from the start).
                assert events[0].json() == {"length": 0}
            else:
                # Latin-1 as servers decode headers, then UTF-8 on the wire: one code point
                # per byte.
                assert events[0].id == "\xff\xfe42"
    # Whatever it was, the server is up and serves the next client.
    assert server.returncode is None
    ok_status, ok_body = raw_request(server, path, b"Last-Event-ID: 7\r\n")
    assert ok_status == 200
    assert [(e.event, e.id) for e in parse_events(ok_body)] == [("resumed", "7")]


# ============================================================================ client addresses
@pytest.mark.django_db
@pytest.mark.parametrize(
    ("forwarded", "expected"),
    [
        ("198.51.100.23", "198.51.100.23"),
        ("2001:DB8::1", "2001:db8::1"),  # normal form
        ("fe80::1%eth0", "fe80::1"),  # without its zone
        ("<img src=x onerror=alert(1)>", None),
        ("evil" * 1000, None),
        ("", "192.0.2.41"),  # no header: REMOTE_ADDR
    ],
)
def test_a_client_address_is_kept_only_when_it_parses(forwarded: str, expected: str | None) -> None:
    """Registry and logs (and so the dashboard) keep what the history stores: an IP or
    nothing, never the header's text."""
    seen: list[Connection] = []

    class Spy:
        def connection_opened(self, connection: Connection) -> None:
            seen.append(connection)

        def connection_closed(self, connection: Connection) -> None: ...

        def connection_rejected(self, stream: str, reason: str) -> None: ...

    registry.subscribe(Spy())
    flosse = {"CLIENT_IP_HEADER": "HTTP_X_FORWARDED_FOR", "PERSISTENCE": False}  # no rows left
    with override_settings(FLOSSE=flosse), capture_logs() as logs:
        client = Client(REMOTE_ADDR="192.0.2.41")
        read_all(client.get("/sync/count/?n=1", HTTP_X_FORWARDED_FOR=forwarded))
    assert [c.client_ip for c in seen] == [expected]
    [opened] = [e for e in logs if e["event"] == "sse.connection.opened"]
    assert opened["client_ip"] == expected


@pytest.mark.django_db
def test_the_dashboard_validates_addresses_that_other_code_registered() -> None:
    """A connection registered by a project's own code (not through a request) carries
    whatever it was given: the dashboard still shows an IP or nothing."""
    connection = Connection(id=uuid.uuid4().hex, stream="sec.other", client_ip="x" * 500)
    assert registry.open(connection) is None
    try:
        rows = dashboard.Feed(top=10).snapshot()["rows"]
    finally:
        registry.close(connection, "completed")
    assert [r["ip"] for r in rows if r["id"] == connection.id] == [None]


@pytest.mark.django_db
def test_what_a_client_sends_is_cut_to_the_documented_lengths() -> None:
    from django_flosse.conf import get_config
    from django_flosse.streaming._clients import MAX_PATH_LENGTH, connection_for

    request = RequestFactory().get(
        "/" + "p" * 5000,
        HTTP_USER_AGENT="a" * 5000,
        HTTP_LAST_EVENT_ID="9" * 5000,
        REMOTE_ADDR="203.0.113.9",
    )
    user = User(username="u" * 300, pk=5)
    connection = connection_for(request, "sec.lengths", user, get_config())
    assert len(connection.path) == MAX_PATH_LENGTH == 500
    assert len(connection.user_agent) == len(connection.last_event_id) == MAX_HEADER_LENGTH
    assert len(connection.username) == 150


# ============================================================================ servers and header sizes
@pytest.mark.server
@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("kind", "args", "folded", "big"),
    [
        # uvicorn with httptools (uvicorn[standard], the demo) refuses obs-fold, and has no
        # header size limit of its own: the docs say to bound it in a proxy.
        ("uvicorn", ("--http", "httptools"), 400, 200),
        ("uvicorn", ("--http", "h11"), 200, 200),  # folded lines joined with a space
        ("gunicorn", (), 400, 431),  # limit_request_field_size: 8190
    ],
)
def test_header_limits_of_real_servers_are_as_documented(
    live_server_factory: Any, kind: str, args: tuple[str, ...], folded: int, big: int
) -> None:
    server = live_server_factory(kind, extra_args=list(args))
    path = "/security/echo-last-id-async/"
    status, body = raw_request(server, path, b"Last-Event-ID: 1\r\n event: pwned\r\n")
    assert status == folded
    if status == 200:
        assert [(e.event, e.id) for e in parse_events(body)] == [("resumed", "1 event: pwned")]
    status, _ = raw_request(server, path, b"Last-Event-ID: " + b"9" * 100_000 + b"\r\n")
    assert status == big
