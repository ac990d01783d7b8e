"""Structured logs: the events of DESIGN.md, bound to the connection, through structlog when
the project configured it and through the stdlib logger ``django_flosse`` when it did not.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from django.contrib.auth.models import User
from django.test import Client, RequestFactory
from structlog.contextvars import merge_contextvars

from django_flosse.testing import parse_events
from tests import views
from tests.support.observe import stdlib_records
from tests.support.responses import close_response, read_all

OPENED = "sse.connection.opened"
CLOSED = "sse.connection.closed"
REJECTED = "sse.connection.rejected"
STREAM_ERROR = "sse.stream.error"


@pytest.fixture
def unconfigured_structlog() -> Iterator[None]:
    """A project that never configured structlog (conftest resets structlog after each test)."""
    structlog.reset_defaults()
    assert not structlog.is_configured()
    yield


def named(entries: list[dict[str, Any]], event: str) -> list[dict[str, Any]]:
    return [entry for entry in entries if entry["event"] == event]


# ------------------------------------------------------------------- with structlog


@pytest.mark.parametrize(
    ("url", "stream"),
    [("/obs/count/?n=3", "obs.count"), ("/obs/async-count/?n=3", "obs.async_count")],
    ids=["sync", "async"],
)
def test_a_completed_stream_logs_opened_and_closed(client: Client, url: str, stream: str) -> None:
    with structlog.testing.capture_logs() as logs:
        body = read_all(client.get(url, headers={"Last-Event-ID": "41"}))

    (opened,) = named(logs, OPENED)
    (closed,) = named(logs, CLOSED)
    assert opened["log_level"] == closed["log_level"] == "info"
    assert opened["connection_id"] == closed["connection_id"]
    assert len(opened["connection_id"]) >= 16
    assert opened["stream"] == closed["stream"] == stream
    assert opened["path"] == url.partition("?")[0]
    assert opened["last_event_id"] == "41"
    assert closed["reason"] == "completed"
    assert closed["events"] == 3
    assert closed["bytes"] == len(body)
    assert isinstance(closed["duration"], float) and 0 <= closed["duration"] < 30
    assert logs.index(opened) < logs.index(closed)


def test_a_client_that_leaves_is_logged_as_cancelled(client: Client) -> None:
    from django_flosse.testing import collect_events

    with structlog.testing.capture_logs() as logs:
        events = collect_events(client.get("/obs/async-endless/"), max_events=2)
    assert len(events) == 2
    (closed,) = named(logs, CLOSED)
    assert closed["reason"] == "cancelled"
    assert closed["events"] >= 2
    assert named(logs, STREAM_ERROR) == []  # a disconnect is not an error


def test_rejections_are_logged_with_stream_and_reason(client: Client, rf: RequestFactory) -> None:
    alice = User(pk=7, username="alice")

    def as_alice() -> Any:
        request = rf.get("/obs/per-user/")
        request.user = alice
        return request

    with structlog.testing.capture_logs() as logs:
        assert client.get("/obs/forbidden/").status_code == 403
        held = views.obs_per_user(as_alice())
        try:
            assert views.obs_per_user(as_alice()).status_code == 429
        finally:
            close_response(held)
        admitted = [views.obs_limited_sync(rf.get("/")) for _ in range(50)]
        try:
            assert views.obs_limited_sync(rf.get("/")).status_code == 503
        finally:
            for response in admitted:
                close_response(response)

    rejected = named(logs, REJECTED)
    assert [(e["stream"], e["reason"]) for e in rejected] == [
        ("obs.forbidden", "forbidden"),
        ("obs.per_user", "user_limit"),
        ("obs.limited_sync", "stream_limit"),
    ]
    assert {e["log_level"] for e in rejected} == {"warning"}
    assert len(named(logs, OPENED)) == 51  # the refused requests never opened a connection


@pytest.mark.parametrize(
    ("url", "stream"),
    [("/obs/fails/", "obs.fails"), ("/obs/async-fails/", "obs.async_fails")],
    ids=["sync", "async"],
)
def test_a_failing_producer_is_logged_with_traceback_and_error_id(
    client: Client, url: str, stream: str
) -> None:
    with structlog.testing.capture_logs() as logs:
        body = read_all(client.get(url))

    error_frame = [e for e in parse_events(body) if e.event == "error"]
    assert len(error_frame) == 1
    client_error_id = error_frame[0].json()["error_id"]
    (opened,) = named(logs, OPENED)
    (error,) = named(logs, STREAM_ERROR)
    assert error["log_level"] == "error"
    assert error["stream"] == stream
    assert error["connection_id"] == opened["connection_id"]
    assert error["error_id"] == client_error_id  # the id the client can quote to support
    exc = error["exc_info"]
    assert isinstance(exc, RuntimeError) and str(exc) == "obs producer failed"
    assert exc.__traceback__ is not None
    (closed,) = named(logs, CLOSED)
    assert closed["reason"] == "error"
    assert closed["error_id"] == client_error_id


@pytest.mark.parametrize(
    ("url", "stream", "flavour"),
    [
        ("/obs/logs-inside/", "obs.logs_inside", "sync"),
        ("/obs/async-logs-inside/", "obs.async_logs_inside", "async"),
    ],
    ids=["sync", "async"],
)
def test_logs_inside_the_view_carry_connection_id_and_stream(
    client: Client, url: str, stream: str, flavour: str
) -> None:
    with structlog.testing.capture_logs(processors=[merge_contextvars]) as logs:
        first = read_all(client.get(url))
        second = read_all(client.get(url))
    assert first.count(b"data:") == second.count(b"data:") == 2

    opened = named(logs, OPENED)
    assert len(opened) == 2
    inside = [e for e in logs if e["event"].startswith(f"view.{flavour}.")]
    assert [e["event"] for e in inside] == [
        f"view.{flavour}.before_first",
        f"view.{flavour}.between",
    ] * 2
    for entry, connection in zip(inside, [opened[0]] * 2 + [opened[1]] * 2, strict=True):
        assert entry["connection_id"] == connection["connection_id"], entry
        assert entry["stream"] == stream
    # Nothing stays bound in the caller once the streams are over.
    assert "connection_id" not in structlog.contextvars.get_contextvars()


async def test_logs_inside_an_async_view_under_asgi_carry_the_connection(
    rf: RequestFactory,
) -> None:
    """The ASGI way: the stream's frames iterated natively in the server's task."""
    with structlog.testing.capture_logs(processors=[merge_contextvars]) as logs:
        response = await views.obs_async_logs_inside(rf.get("/obs/async-logs-inside/"))
        chunks = [chunk async for chunk in response.streaming_content]  # type: ignore[attr-defined]
    assert b"".join(chunks).count(b"data:") == 2
    (opened,) = named(logs, OPENED)
    inside = [e for e in logs if e["event"].startswith("view.async.")]
    assert len(inside) == 2
    assert {e["connection_id"] for e in inside} == {opened["connection_id"]}
    assert "connection_id" not in structlog.contextvars.get_contextvars()


async def test_what_the_caller_had_bound_is_bound_again_after_the_stream(
    rf: RequestFactory,
) -> None:
    """A project that binds ``stream`` itself (a middleware, say) gets its value back."""
    structlog.contextvars.bind_contextvars(stream="the project's")
    try:
        with structlog.testing.capture_logs(processors=[merge_contextvars]) as logs:
            response = await views.obs_async_logs_inside(rf.get("/obs/async-logs-inside/"))
            chunks = [chunk async for chunk in response.streaming_content]  # type: ignore[attr-defined]
        assert b"".join(chunks).count(b"data:") == 2
        inside = [e for e in logs if e["event"].startswith("view.async.")]
        assert {e["stream"] for e in inside} == {"obs.async_logs_inside"}
        assert structlog.contextvars.get_contextvars() == {"stream": "the project's"}
    finally:
        structlog.contextvars.unbind_contextvars("stream")


@pytest.mark.parametrize(
    ("url", "stream"),
    [("/obs/count/?n=100", "obs.count"), ("/obs/async-count/?n=100", "obs.async_count")],
    ids=["sync", "async"],
)
def test_no_log_entry_above_debug_per_event(client: Client, url: str, stream: str) -> None:
    with structlog.testing.capture_logs() as logs:
        body = read_all(client.get(url))
    assert body.count(b"event: tick") == 100
    loud = [e for e in logs if e["log_level"] not in ("debug", "notset")]
    assert [e["event"] for e in loud] == [OPENED, CLOSED]


# ------------------------------------------------ without structlog configuration


@pytest.mark.usefixtures("unconfigured_structlog")
def test_unconfigured_structlog_goes_through_the_stdlib_logger(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="django_flosse")
    body = read_all(client.get("/obs/count/?n=2"))

    records = stdlib_records(caplog)
    assert [r.levelno for r in records] == [logging.INFO, logging.INFO]
    opened, closed = (r.getMessage() for r in records)
    assert opened.startswith(f"event='{OPENED}' ")
    assert "stream='obs.count'" in opened and "path='/obs/count/'" in opened
    assert closed.startswith(f"event='{CLOSED}' ")
    assert "reason='completed'" in closed
    assert "events=2" in closed and f"bytes={len(body)}" in closed
    connection_id = opened.split("connection_id='")[1].split("'")[0]
    assert f"connection_id='{connection_id}'" in closed
    assert not structlog.is_configured()  # we did not configure it behind the project's back


@pytest.mark.usefixtures("unconfigured_structlog")
def test_unconfigured_errors_reach_the_stdlib_logger_with_the_traceback(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="django_flosse")
    body = read_all(client.get("/obs/async-fails/"))

    (error,) = [r for r in stdlib_records(caplog) if STREAM_ERROR in r.getMessage()]
    assert error.levelno == logging.ERROR
    assert error.exc_info is not None
    exc_type, exc, tb = error.exc_info
    assert exc_type is RuntimeError and str(exc) == "obs producer failed" and tb is not None
    (client_error,) = [e for e in parse_events(body) if e.event == "error"]
    assert f"error_id='{json.loads(client_error.data)['error_id']}'" in error.getMessage()
    assert "Traceback (most recent call last)" in caplog.text
    assert "obs producer failed" in caplog.text


@pytest.mark.usefixtures("unconfigured_structlog")
def test_unconfigured_levels_are_decided_by_the_stdlib_logger(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="django_flosse")
    read_all(client.get("/obs/count/?n=2"))
    assert client.get("/obs/forbidden/").status_code == 403

    records = stdlib_records(caplog)
    assert [r.levelno for r in records] == [logging.WARNING]
    assert (
        records[0].getMessage() == f"event='{REJECTED}' stream='obs.forbidden' reason='forbidden'"
    )


@pytest.mark.usefixtures("unconfigured_structlog")
@pytest.mark.parametrize(
    "url", ["/obs/count/?n=100", "/obs/async-count/?n=100"], ids=["sync", "async"]
)
def test_unconfigured_no_record_above_debug_per_event(
    client: Client, caplog: pytest.LogCaptureFixture, url: str
) -> None:
    caplog.set_level(logging.DEBUG)
    body = read_all(client.get(url))
    assert body.count(b"event: tick") == 100
    loud = [r for r in caplog.records if r.levelno > logging.DEBUG]
    assert [(r.name, r.getMessage().split()[0]) for r in loud] == [
        ("django_flosse", f"event='{OPENED}'"),
        ("django_flosse", f"event='{CLOSED}'"),
    ]
    per_event = [r for r in caplog.records if r.name.startswith("django_flosse")]
    assert len(per_event) < 100  # not even DEBUG lines per event


@pytest.mark.usefixtures("unconfigured_structlog")
def test_unconfigured_records_name_the_code_that_logged(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    """A stdlib record's file, line and function are those of our code that logged, not
    of the logging machinery between them (a ``%(funcName)s`` format shows something)."""
    caplog.set_level(logging.INFO, logger="django_flosse")
    read_all(client.get("/obs/count/?n=1"))

    opened, closed = stdlib_records(caplog)
    assert (opened.funcName, closed.funcName) == ("connection_opened", "connection_closed")
    assert opened.pathname.endswith("observing/log.py")


@pytest.mark.usefixtures("unconfigured_structlog")
def test_unconfigured_opened_line_renders_what_the_project_bound(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    """The message is structlog's key=value rendering of the event, then what the project
    bound with ``structlog.contextvars`` (a request id from a middleware, say)."""
    caplog.set_level(logging.INFO, logger="django_flosse")
    structlog.contextvars.bind_contextvars(request_id="r-7")
    try:
        read_all(client.get("/obs/count/?n=1", REMOTE_ADDR="192.0.2.5"))
    finally:
        structlog.contextvars.unbind_contextvars("request_id")

    opened = stdlib_records(caplog)[0].getMessage()
    connection_id = opened.split("connection_id='")[1].split("'")[0]
    assert opened == (
        f"event='{OPENED}' connection_id='{connection_id}' stream='obs.count' "
        "path='/obs/count/' user_id=None client_ip='192.0.2.5' last_event_id=None "
        "request_id='r-7'"
    )


class _NeverRendered:
    def __repr__(self) -> str:
        raise AssertionError("a line below the logger's level was rendered")


@pytest.mark.usefixtures("unconfigured_structlog")
def test_unconfigured_lines_below_the_level_cost_no_rendering(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from django_flosse.observing.log import get_logger

    caplog.set_level(logging.WARNING, logger="django_flosse")
    get_logger().info("sse.test.quiet", value=_NeverRendered())
    get_logger().debug("sse.test.quiet", value=_NeverRendered())
    assert stdlib_records(caplog) == []


@pytest.mark.usefixtures("unconfigured_structlog")
def test_unconfigured_exception_lines_carry_the_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from django_flosse.observing.log import get_logger

    caplog.set_level(logging.INFO, logger="django_flosse")
    try:
        raise KeyError("observer broke")
    except KeyError:
        get_logger().exception("sse.observer.error", observer="x")
    (record,) = stdlib_records(caplog)
    assert record.levelno == logging.ERROR
    assert record.getMessage() == "event='sse.observer.error' observer='x'"
    assert record.exc_info is not None and record.exc_info[0] is KeyError
