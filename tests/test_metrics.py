"""Prometheus metrics: what each connection adds to the samples, and who may read them.

The metrics live on prometheus_client's default registry for the whole test process, so
every check is a difference between a sample before and after, on stream names of this
file's own views (``obs.*``).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.http import HttpResponseBase
from django.test import Client, RequestFactory, override_settings
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from django_flosse import reasons
from django_flosse.observing.metrics import FOLD_INTERVAL, MetricsObserver
from django_flosse.observing.registry import Connection, registry
from django_flosse.streaming._response import SSEResponse
from tests import views
from tests.support.observe import sample
from tests.support.responses import close_response, read_all

METRICS_URL = "/flosse/metrics/"
#: How long to wait for the folding thread (it runs once a second).
FOLD_WAIT = 10.0
OUTSIDER = "203.0.113.5"  # TEST-NET-3: not loopback, not allowed by default


class Samples:
    """The values of the flosse samples of one stream, to compare before and after."""

    NAMES = (
        "flosse_connections_active",
        "flosse_connections_opened_total",
        "flosse_events_sent_total",
        "flosse_sent_bytes_total",
        "flosse_connection_duration_seconds_count",
        "flosse_connection_duration_seconds_sum",
    )
    REASONS = (*reasons.CLOSE_REASONS, "forbidden", "stream_limit", "user_limit")

    def __init__(self, stream: str) -> None:
        self.stream = stream
        self.values = self._read()

    def _read(self) -> dict[str, float]:
        values = {name: sample(name, stream=self.stream) for name in self.NAMES}
        for reason in self.REASONS:
            values[f"closed:{reason}"] = sample(
                "flosse_connections_closed_total", stream=self.stream, reason=reason
            )
            values[f"rejected:{reason}"] = sample(
                "flosse_connections_rejected_total", stream=self.stream, reason=reason
            )
        return values

    def changes(self) -> dict[str, float]:
        """Every sample that moved since this object was made, by how much."""
        now = self._read()
        return {
            name: now[name] - self.values[name] for name in now if now[name] != self.values[name]
        }


def metrics_observer() -> MetricsObserver:
    return next(o for o in registry.observers() if isinstance(o, MetricsObserver))


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.05)


# -------------------------------------------------------------- connection counters


@pytest.mark.parametrize(
    ("url", "stream"),
    [("/obs/count/?n=4", "obs.count"), ("/obs/async-count/?n=4", "obs.async_count")],
    ids=["sync", "async"],
)
def test_a_completed_stream(client: Client, url: str, stream: str) -> None:
    before = Samples(stream)

    body = read_all(client.get(url))

    assert body.count(b"event: tick") == 4
    changes = before.changes()
    duration = changes.pop("flosse_connection_duration_seconds_sum", 0.0)
    assert changes == {
        "flosse_connections_opened_total": 1,
        "closed:completed": 1,
        "flosse_events_sent_total": 4,
        "flosse_sent_bytes_total": len(body),  # folded at close: every byte, exactly
        "flosse_connection_duration_seconds_count": 1,
    }  # and flosse_connections_active is back where it was
    assert 0 <= duration < 30


def test_a_failing_stream_closes_as_error(client: Client) -> None:
    before = Samples("obs.fails")
    body = read_all(client.get("/obs/fails/"))
    assert b"event: error" in body
    changes = before.changes()
    assert changes["closed:error"] == 1
    assert changes["flosse_connections_opened_total"] == 1
    assert changes["flosse_events_sent_total"] == 1  # the error frame is not a producer event
    assert changes["flosse_sent_bytes_total"] == len(body)
    assert "flosse_connections_active" not in changes


def test_active_counts_open_streams(rf: RequestFactory) -> None:
    before = Samples("obs.limited_sync")
    responses = [views.obs_limited_sync(rf.get("/")) for _ in range(3)]
    try:
        assert all(isinstance(r, SSEResponse) for r in responses)
        assert before.changes()["flosse_connections_active"] == 3
    finally:
        for response in responses:
            close_response(response)  # closed before they ever streamed: the client went away
    changes = before.changes()
    assert "flosse_connections_active" not in changes
    assert changes["flosse_connections_opened_total"] == 3
    assert changes["closed:cancelled"] == 3
    assert changes["flosse_connection_duration_seconds_count"] == 3


def test_streams_opened_in_turn_are_each_counted_on_their_own_series(
    rf: RequestFactory,
) -> None:
    """The observer looks each stream's series up once: two streams opened in turn must
    still move their own series, and only theirs."""
    limited, counted = Samples("obs.limited_sync"), Samples("obs.count")
    responses = []
    try:
        for _ in range(2):
            responses.append(views.obs_limited_sync(rf.get("/")))
            responses.append(views.obs_count(rf.get("/obs/count/?n=1")))
        responses.append(views.obs_limited_sync(rf.get("/")))
        assert limited.changes()["flosse_connections_active"] == 3
        assert counted.changes()["flosse_connections_active"] == 2
    finally:
        for response in responses:
            close_response(response)
    for samples, opened in ((limited, 3), (counted, 2)):
        changes = samples.changes()
        assert "flosse_connections_active" not in changes
        assert changes["flosse_connections_opened_total"] == opened
        assert changes["closed:cancelled"] == opened
        assert changes["flosse_connection_duration_seconds_count"] == opened


async def _open_and_read(
    rf: RequestFactory, chunks: int
) -> tuple[HttpResponseBase, AsyncIterator[bytes], int]:
    response = await views.obs_async_endless(rf.get("/obs/async-endless/?every=0.01"))
    frames = response.streaming_content  # type: ignore[attr-defined]
    received = 0
    for _ in range(chunks):
        received += len(await asyncio.wait_for(anext(frames), 5))
    return response, frames, received


async def test_events_and_bytes_are_folded_on_demand_and_at_close(rf: RequestFactory) -> None:
    before = Samples("obs.async_endless")
    response, frames, received = await _open_and_read(rf, chunks=5)
    try:
        (live,) = registry.live("obs.async_endless")
        assert live.bytes_sent == received
        assert live.events_sent >= 5

        metrics_observer().fold()  # the stream is suspended: its counters stand still

        changes = before.changes()
        assert changes["flosse_events_sent_total"] == live.events_sent
        assert changes["flosse_sent_bytes_total"] == received
        assert changes["flosse_connections_active"] == 1

        metrics_observer().fold()  # folding again adds nothing
        assert before.changes()["flosse_sent_bytes_total"] == received

        received += len(await asyncio.wait_for(anext(frames), 5))
    finally:
        await frames.aclose()  # type: ignore[attr-defined]
    (closed,) = [c for c in [response.stream.connection] if not c.is_open]  # type: ignore[attr-defined]
    assert closed.close_reason == "cancelled"
    changes = before.changes()
    assert changes["flosse_sent_bytes_total"] == received == closed.bytes_sent
    assert changes["flosse_events_sent_total"] == closed.events_sent
    assert changes["closed:cancelled"] == 1
    assert changes["flosse_connection_duration_seconds_count"] == 1
    assert "flosse_connections_active" not in changes


async def test_the_folding_thread_folds_live_streams_within_a_second_or_so(
    rf: RequestFactory,
) -> None:
    assert FOLD_INTERVAL <= 1.0
    before = Samples("obs.async_endless")
    _response, frames, received = await _open_and_read(rf, chunks=3)
    try:
        (live,) = registry.live("obs.async_endless")
        deadline = time.monotonic() + FOLD_WAIT
        while before.changes().get("flosse_sent_bytes_total", 0) < received:
            assert time.monotonic() < deadline, "the folding thread never folded the bytes"
            await asyncio.sleep(0.05)
        changes = before.changes()
        assert changes["flosse_sent_bytes_total"] == received
        assert changes["flosse_events_sent_total"] == live.events_sent
    finally:
        await frames.aclose()  # type: ignore[attr-defined]


# ------------------------------------------------------------------------ rejections


def test_forbidden_is_counted_as_rejected_and_never_opened(client: Client) -> None:
    before = Samples("obs.forbidden")
    assert client.get("/obs/forbidden/").status_code == 403
    assert before.changes() == {"rejected:forbidden": 1}


def test_stream_limit_is_counted_as_rejected(rf: RequestFactory) -> None:
    before = Samples("obs.limited_sync")
    admitted = [views.obs_limited_sync(rf.get("/")) for _ in range(50)]
    try:
        refused = views.obs_limited_sync(rf.get("/"))
        assert refused.status_code == 503
        assert before.changes()["rejected:stream_limit"] == 1
        assert before.changes()["flosse_connections_opened_total"] == 50
    finally:
        for response in admitted:
            close_response(response)


def test_user_limit_is_counted_as_rejected(rf: RequestFactory) -> None:
    before = Samples("obs.per_user")
    alice, bob = User(pk=101, username="alice"), User(pk=102, username="bob")

    def request_as(user: User) -> Any:
        request = rf.get("/obs/per-user/")
        request.user = user
        return request

    first = views.obs_per_user(request_as(alice))
    try:
        assert isinstance(first, SSEResponse)
        refused = views.obs_per_user(request_as(alice))
        assert refused.status_code == 429
        other = views.obs_per_user(request_as(bob))  # another user has their own place
        assert isinstance(other, SSEResponse)
        close_response(other)
    finally:
        close_response(first)
    changes = before.changes()
    assert changes["rejected:user_limit"] == 1
    assert changes["flosse_connections_opened_total"] == 2


# ------------------------------------------------------------------------ labels


def test_no_label_is_ever_a_user_an_ip_or_a_connection_id(rf: RequestFactory) -> None:
    username, user_id, address = f"user-{uuid.uuid4().hex[:8]}", 98765, "198.51.100.77"
    user = User(pk=user_id, username=username)
    connection_ids: list[str] = []

    class Ids:
        def connection_opened(self, connection: Connection) -> None:
            connection_ids.append(connection.id)

        def connection_closed(self, connection: Connection) -> None: ...

        def connection_rejected(self, stream: str, reason: str) -> None: ...

    registry.subscribe(Ids())

    def request() -> Any:
        request = rf.get("/?n=2", REMOTE_ADDR=address, HTTP_USER_AGENT="agent-x")
        request.user = user
        return request

    assert len(read_all(views.obs_count(request()))) > 0  # completed
    held = views.obs_per_user(request())
    assert views.obs_per_user(request()).status_code == 429
    close_response(held)  # cancelled
    assert views.obs_forbidden(request()).status_code == 403
    assert len(connection_ids) == 2
    assert registry.totals()["obs.count"].closed == {"completed": 1}
    assert registry.totals()["obs.per_user"].closed == {"cancelled": 1}

    secrets = {username, str(user_id), address, "agent-x", *connection_ids}
    seen_keys: set[str] = set()
    flosse_families = [m for m in REGISTRY.collect() if m.name.startswith("flosse_")]
    assert {m.name for m in flosse_families} >= {
        "flosse_connections_active",
        "flosse_connections_opened",
        "flosse_connections_closed",
        "flosse_connections_rejected",
        "flosse_events_sent",
        "flosse_sent_bytes",
        "flosse_connection_duration_seconds",
    }
    for family in flosse_families:
        for s in family.samples:
            keys = set(s.labels)
            if s.name.endswith("_bucket"):
                keys.discard("le")  # the histogram's own bucket bound
            assert keys <= {"stream", "reason"}, (s.name, s.labels)
            seen_keys |= keys
            assert not secrets & set(s.labels.values()), (s.name, s.labels)
            if "reason" in s.labels:
                assert s.labels["reason"] in Samples.REASONS
    assert seen_keys == {"stream", "reason"}


# ------------------------------------------------------------------ the metrics view


def parse(response: HttpResponseBase) -> dict[str, Any]:
    assert response.status_code == 200
    return {
        family.name: family
        for family in text_string_to_metric_families(response.content.decode("utf-8"))
    }


def test_metrics_view_serves_parsable_samples_to_loopback(client: Client) -> None:
    read_all(client.get("/obs/count/?n=2"))

    response = client.get(METRICS_URL)

    assert response["Content-Type"].startswith("text/plain")
    assert "no-cache" in response["Cache-Control"]
    families = parse(response)
    opened = families["flosse_connections_opened"]
    assert opened.type == "counter"
    (value,) = [
        s.value
        for s in opened.samples
        if s.name == "flosse_connections_opened_total" and s.labels == {"stream": "obs.count"}
    ]
    assert value == sample("flosse_connections_opened_total", stream="obs.count") >= 1
    assert families["flosse_connections_active"].type == "gauge"
    assert families["flosse_connection_duration_seconds"].type == "histogram"


def test_metrics_view_is_also_reachable_by_name() -> None:
    from django.urls import reverse

    assert reverse("flosse:metrics") == METRICS_URL


def test_metrics_view_refuses_other_addresses() -> None:
    response = Client(REMOTE_ADDR=OUTSIDER).get(METRICS_URL)
    assert response.status_code == 403
    assert b"flosse_" not in response.content


def test_metrics_view_allows_ipv6_loopback() -> None:
    assert Client(REMOTE_ADDR="::1").get(METRICS_URL).status_code == 200


@pytest.mark.parametrize(
    "header",
    [
        {"X-Forwarded-For": OUTSIDER},
        {"X-Real-IP": OUTSIDER},
        {"Forwarded": f"for={OUTSIDER}"},
    ],
    ids=["x-forwarded-for", "x-real-ip", "forwarded"],
)
def test_metrics_view_refuses_loopback_behind_a_proxy(header: dict[str, str]) -> None:
    response = Client(REMOTE_ADDR="127.0.0.1").get(METRICS_URL, headers=header)
    assert response.status_code == 403


@override_settings(FLOSSE={"METRICS_TOKEN": "s3cret-token"})
@pytest.mark.parametrize(
    ("authorization", "status"),
    [
        ("Bearer s3cret-token", 200),
        ("bearer s3cret-token", 200),
        ("Bearer wrong-token", 403),
        ("Basic s3cret-token", 403),
        ("s3cret-token", 403),
    ],
)
def test_metrics_view_with_a_bearer_token(authorization: str, status: int) -> None:
    client = Client(REMOTE_ADDR=OUTSIDER)
    response = client.get(METRICS_URL, headers={"Authorization": authorization})
    assert response.status_code == status
    if status == 200:
        assert "flosse_connections_opened" in parse(response)


def test_metrics_view_without_a_configured_token_ignores_bearer_headers() -> None:
    client = Client(REMOTE_ADDR=OUTSIDER)
    assert client.get(METRICS_URL, headers={"Authorization": "Bearer "}).status_code == 403
    assert client.get(METRICS_URL, headers={"Authorization": "Bearer None"}).status_code == 403


@override_settings(FLOSSE={"METRICS_ALLOWED_NETWORKS": ["203.0.113.0/24", "2001:db8::/32"]})
def test_metrics_view_allows_configured_networks() -> None:
    assert Client(REMOTE_ADDR=OUTSIDER).get(METRICS_URL).status_code == 200
    assert Client(REMOTE_ADDR="2001:db8::7").get(METRICS_URL).status_code == 200
    assert Client(REMOTE_ADDR="198.51.100.1").get(METRICS_URL).status_code == 403


@pytest.mark.django_db
def test_metrics_view_allows_staff_users(django_user_model: Any) -> None:
    staff = django_user_model.objects.create_user("ops", password="x", is_staff=True)
    client = Client(REMOTE_ADDR=OUTSIDER)
    client.force_login(staff)
    assert "flosse_connections_active" in parse(client.get(METRICS_URL))


@pytest.mark.django_db
def test_metrics_view_refuses_users_who_are_not_staff(django_user_model: Any) -> None:
    user = django_user_model.objects.create_user("someone", password="x")
    client = Client(REMOTE_ADDR=OUTSIDER)
    client.force_login(user)
    assert client.get(METRICS_URL).status_code == 403


@override_settings(FLOSSE={"METRICS_TOKEN": "s3cret-token"})
def test_metrics_view_refuses_a_non_ascii_bearer_token() -> None:
    """Package bug (access._has_token): ``hmac.compare_digest`` raises ``TypeError`` for a
    ``str`` with non-ASCII characters, so any client can turn the 403 into a 500 by sending
    ``Authorization: Bearer tökén``. Fix: compare bytes (``given.encode()``, ``token.encode()``)."""
    client = Client(REMOTE_ADDR=OUTSIDER, raise_request_exception=False)
    response = client.get(METRICS_URL, headers={"Authorization": "Bearer t\u00f6k\u00e9n"})
    assert response.status_code == 403


def test_events_are_counted_once_when_the_settings_change_mid_stream() -> None:
    """Regression: a settings change used to build a new MetricsObserver; a connection opened
    under the old one and closed under the new one was folded again from zero (counted
    twice). The wiring keeps the observer built from the same class across changes."""
    stream = f"metrics.settings_change.{uuid.uuid4().hex[:8]}"
    connection = Connection(id=uuid.uuid4().hex, stream=stream)
    first = metrics_observer()
    registry.open(connection)
    connection.events_sent, connection.bytes_sent = 7, 70
    first.fold()
    with override_settings(FLOSSE={"HEARTBEAT": 30}):  # re-wires the observers
        assert metrics_observer() is first
        connection.events_sent, connection.bytes_sent = 10, 100
        registry.close(connection, reasons.COMPLETED)
    assert sample("flosse_events_sent_total", stream=stream) == 10
    assert sample("flosse_sent_bytes_total", stream=stream) == 100


# --------------------------------------------------------------------------- series at zero
ZERO_SERIES = [
    ("flosse_connections_active", {}),
    ("flosse_connections_opened_total", {}),
    *[("flosse_connections_closed_total", {"reason": r}) for r in reasons.CLOSE_REASONS],
    *[("flosse_connections_rejected_total", {"reason": r}) for r in reasons.REJECT_REASONS],
    ("flosse_events_sent_total", {}),
    ("flosse_sent_bytes_total", {}),
    ("flosse_connection_duration_seconds_count", {}),
    ("flosse_connection_duration_seconds_bucket", {"le": "0.1"}),
    ("flosse_broadcast_delivered_total", {}),
    ("flosse_broadcast_replayed_total", {}),
    ("flosse_broadcast_resets_total", {}),
    ("flosse_broadcast_lag_seconds_count", {}),
]


def test_every_series_of_a_stream_exists_at_zero_once_its_view_is_decorated(
    client: Client,
) -> None:
    """Prometheus takes a series' first sample as its start: a series that appears at its
    first increment hides that increment from rate() and increase()."""
    from django_flosse import sse_stream

    name = f"zero.{uuid.uuid4().hex[:8]}"
    for metric, labels in ZERO_SERIES:
        assert REGISTRY.get_sample_value(metric, {"stream": name, **labels}) is None

    @sse_stream(name=name)
    def view(request: Any) -> Any:
        yield "never called"

    for metric, labels in ZERO_SERIES:
        assert REGISTRY.get_sample_value(metric, {"stream": name, **labels}) == 0.0, metric
    body = client.get("/flosse/metrics/").content.decode()
    assert f'flosse_connections_closed_total{{reason="error",stream="{name}"}} 0.0' in body


def test_streams_declared_before_the_wiring_get_their_series_when_wired() -> None:
    from django_flosse.observing.registry import Registry

    seen: list[str] = []

    class Declared:
        def stream_declared(self, stream: str) -> None:
            seen.append(stream)

    fresh = Registry()
    fresh.declare("early")
    fresh.declare("early")  # once per stream
    fresh.wire([Declared(), MetricsObserver()])
    fresh.declare("late")
    assert seen == ["early", "late"]
    assert fresh.declared() == ["early", "late"]


def test_an_observer_without_the_optional_notifications_is_fine() -> None:
    from django_flosse.observing.registry import Registry

    class Minimal:  # only the three required methods
        def connection_opened(self, connection: Connection) -> None: ...
        def connection_closed(self, connection: Connection) -> None: ...
        def connection_rejected(self, stream: str, reason: str) -> None: ...

    fresh = Registry()
    fresh.wire([Minimal()])
    fresh.declare("s")
    fresh.lost("s", 3)
