"""@sse_stream through Django's test clients and direct calls (no server).

The views are in ``tests/views.py`` (section "the decorator"), routed by ``tests/urls.py``.
"""

from __future__ import annotations

import asyncio
import json
import zlib
from typing import Any
from unittest.mock import MagicMock

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.http import HttpRequest
from django.test import AsyncClient, Client, RequestFactory, override_settings
from structlog.testing import capture_logs

from django_flosse import SSEEvent, sse_stream
from django_flosse.permissions import IsAuthenticated
from django_flosse.streaming._frames import ERROR_MESSAGE
from django_flosse.testing import Event, acollect_events, collect_events
from tests.views import (
    FAILURE,
    STARTED,
    CountView,
    async_private,
    bare_sync,
    called_async,
    count_users,
    sync_private,
    with_retry,
)


@pytest.fixture(autouse=True)
def _reset_started() -> None:
    STARTED.clear()


class QueryingMiddleware:
    """A sync-only middleware that queries (Django runs it on the request's thread)."""

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> Any:
        User.objects.exists()
        return self.get_response(request)


def error_payload(event: Event) -> dict[str, str]:
    assert event.event == "error"
    payload: dict[str, str] = event.json()
    return payload


# --------------------------------------------------------------------- the decorator


def test_both_forms_stream() -> None:
    assert collect_events(Client().get("/bare/"), max_events=5) == [Event("message", "bare")]
    assert collect_events(Client().get("/called/"), max_events=5) == [Event("message", "called")]


def test_wraps_the_view() -> None:
    assert bare_sync.__name__ == "bare_sync"
    assert called_async.__wrapped__.__name__ == "called_async"  # type: ignore[attr-defined]
    assert asyncio.iscoroutinefunction(called_async)
    assert not asyncio.iscoroutinefunction(bare_sync)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"retry": -1}, "retry"),
        ({"retry": True}, "retry"),
        ({"retry": "100"}, "retry"),
        ({"heartbeat": 0}, "heartbeat"),
        ({"heartbeat": -1.0}, "heartbeat"),
        ({"heartbeat": True}, "heartbeat"),
        ({"heartbeat": "15"}, "heartbeat"),
        ({"permission_classes": IsAuthenticated}, "permission_classes"),
        ({"permission_classes": "IsAuthenticated"}, "permission_classes"),
        ({"permission_classes": [object]}, "not a permission class"),
        ({"max_connections": 0}, "max_connections"),
        ({"max_connections_per_user": 1.5}, "max_connections_per_user"),
    ],
)
def test_bad_arguments_raise_type_error(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(TypeError, match=message):
        sse_stream(**kwargs)


def test_a_coroutine_function_is_refused() -> None:
    async def not_a_generator(request: HttpRequest) -> None:
        pass

    with pytest.raises(TypeError, match="needs a generator"):
        sse_stream(not_a_generator)


def test_a_view_that_returns_no_iterable_is_a_type_error() -> None:
    @sse_stream
    def returns_none(request: HttpRequest) -> Any:
        return None

    with pytest.raises(TypeError, match="returned NoneType"):
        returns_none(RequestFactory().get("/"))


def test_default_name_is_module_and_qualname() -> None:
    request = RequestFactory().get("/")
    responses = [bare_sync(request), with_retry(request), CountView.as_view()(request)]
    names = [response.stream.name for response in responses]  # type: ignore[attr-defined]
    assert names == ["tests.views.bare_sync", "custom.name", "tests.views.CountView.get"]
    for response in responses:
        response.close()


def test_retry_frame_comes_first() -> None:
    response = Client().get("/retry/")
    chunks = iter(response.streaming_content)  # type: ignore[attr-defined]
    assert next(chunks).startswith(b"retry: 2500\n\n")
    response.close()


@pytest.mark.parametrize("url", ["/bare/", "/called/"])
def test_headers(url: str) -> None:
    response = Client().get(url)
    assert response.status_code == 200
    assert response["Content-Type"] == "text/event-stream; charset=utf-8"
    assert response["Cache-Control"] == "no-cache, no-transform"
    assert response["X-Accel-Buffering"] == "no"
    assert not response.has_header("Content-Length")
    assert response.streaming
    response.close()


@override_settings(MIDDLEWARE=["django.middleware.gzip.GZipMiddleware"])
def test_gzip_stays_incremental() -> None:
    response = Client().get("/resume/", HTTP_ACCEPT_ENCODING="gzip")
    assert response["Content-Encoding"] == "gzip"
    decompress = zlib.decompressobj(wbits=31)
    body = b""
    for chunk in response.streaming_content:  # type: ignore[attr-defined]
        # Each chunk decompresses to whole events at once: nothing is held back.
        text = decompress.decompress(chunk)
        assert text.endswith(b"\n\n") or (not text and not decompress.unused_data)
        body += text
    body += decompress.flush()
    assert body == b"".join(
        f'id: {i}\nevent: tick\ndata: {{"i": {i}}}\n\n'.encode() for i in range(3)
    )
    assert decompress.eof  # a complete gzip stream
    response.close()


def test_last_event_id_resumes() -> None:
    events = collect_events(Client().get("/resume/", HTTP_LAST_EVENT_ID="5"), max_events=5)
    assert [(e.id, e.json()) for e in events] == [("6", {"i": 6}), ("7", {"i": 7}), ("8", {"i": 8})]


# ------------------------------------------------------------------------ permissions


@pytest.mark.django_db
@pytest.mark.parametrize("url", ["/sync/private/", "/async/private/", "/async-class/"])
def test_anonymous_gets_403_before_anything_streams(url: str) -> None:
    response = Client().get(url)
    assert response.status_code == 403
    assert not response.streaming
    assert STARTED == []


@pytest.mark.django_db
@pytest.mark.parametrize("url", ["/sync/private/", "/async/private/"])
async def test_anonymous_gets_403_with_the_async_client(url: str) -> None:
    response = await AsyncClient().get(url)
    assert response.status_code == 403
    assert STARTED == []


@pytest.mark.django_db
@pytest.mark.parametrize("url", ["/sync/private/", "/async/private/"])
def test_a_logged_in_user_is_allowed(url: str) -> None:
    client = Client()
    client.force_login(User.objects.create_user("alice"))
    assert collect_events(client.get(url), max_events=2) == [Event("message", "hello alice")]


@pytest.mark.django_db(transaction=True)
async def test_async_permission_class() -> None:
    client = AsyncClient()
    assert (await client.get("/async/staff/")).status_code == 403
    await client.aforce_login(await User.objects.acreate(username="bob", is_staff=True))
    events = await acollect_events(await client.get("/async/staff/"), max_events=2)
    assert events == [Event("message", "staff")]


@pytest.mark.django_db(transaction=True)
async def test_a_sync_permission_that_queries_the_db_works_from_an_async_view() -> None:
    client = AsyncClient()
    assert (await client.get("/async/db-permission/")).status_code == 403  # no such user yet
    await client.aforce_login(await User.objects.acreate(username="alice"))
    events = await acollect_events(await client.get("/async/db-permission/"), max_events=2)
    assert events == [Event("message", "allowed")]


@pytest.mark.django_db(transaction=True)
async def test_an_anonymous_async_stream_starts_without_a_thread_hop(hops: list[str]) -> None:
    events = await acollect_events(await AsyncClient().get("/async/db-state/"), max_events=1)
    assert events[0].json() == {
        "connection_open": False,
        "user_class": "AnonymousUser",
        "authenticated": False,
    }
    assert hops == []  # auser() answered without a query: nothing to load, nothing to release


@pytest.mark.django_db(transaction=True)
async def test_a_logged_in_async_stream_loads_its_user_and_releases_in_one_hop(
    hops: list[str],
) -> None:
    client = AsyncClient()
    await client.aforce_login(await User.objects.acreate(username="erin"))
    events = await acollect_events(await client.get("/async/db-state/"), max_events=1)
    assert events[0].json() == {
        "connection_open": False,  # the session and user queries' connection was let go
        "user_class": "User",
        "authenticated": True,
    }
    assert hops == ["_prepare_in_thread"]


@pytest.mark.django_db(transaction=True)
async def test_a_connection_opened_by_middleware_is_released_before_streaming(
    hops: list[str],
) -> None:
    middleware = ["tests.test_decorators.QueryingMiddleware", *settings.MIDDLEWARE]
    with override_settings(MIDDLEWARE=middleware):
        events = await acollect_events(await AsyncClient().get("/async/db-state/"), max_events=1)
    assert events[0].json()["connection_open"] is False
    assert hops == ["release_connections"]


@pytest.mark.django_db
def test_an_async_permission_class_on_a_sync_view() -> None:
    client = Client()
    assert client.get("/sync/async-permission/").status_code == 403
    assert STARTED == []
    client.force_login(User.objects.create_user("carol", is_staff=True))
    events = collect_events(client.get("/sync/async-permission/"), max_events=2)
    assert events == [Event("message", "allowed")]


@pytest.mark.django_db
def test_class_based_view_method() -> None:
    events = collect_events(Client().get("/class/"), max_events=2)
    assert [e.json() for e in events] == [{"view": "CountView", "method": "GET"}]


@pytest.mark.django_db
async def test_class_based_async_view_method() -> None:
    assert (await AsyncClient().get("/async-class/")).status_code == 403


@pytest.mark.django_db
def test_a_sync_view_sees_the_rows_of_the_test() -> None:
    """A ``def`` view's queries run on the request's database connection.

    Fails today: the generator always runs in ThreadedSource's own thread (also under WSGI
    and the sync test client, where DESIGN.md promises native iteration), so it has its own
    connection and cannot see rows of the request's (here: the test's) open transaction.
    """
    User.objects.create_user("dora")
    events = collect_events(count_users(RequestFactory().get("/")), max_events=1)
    assert [event.data for event in events] == ["1"]


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("url", ["/sync/fails/", "/async/fails/"])
def test_error_frame_has_an_id_and_no_exception_text(url: str) -> None:
    with capture_logs() as logs:
        events = collect_events(Client().get(url), max_events=5)
    assert events[0] == Event("message", "before")
    payload = error_payload(events[1])
    assert payload == {"message": ERROR_MESSAGE, "error_id": payload["error_id"]}
    assert len(payload["error_id"]) >= 6
    assert "secret" not in events[1].data
    assert len(events) == 2
    [error] = [entry for entry in logs if entry["event"] == "sse.stream.error"]
    assert error["log_level"] == "error"
    assert error["error_id"] == payload["error_id"]
    assert error["stream"] == f"tests.views.{url.split('/')[1]}_fails"
    assert isinstance(error["exc_info"], RuntimeError)
    assert str(error["exc_info"]) == FAILURE
    assert error["exc_info"].__traceback__ is not None


@override_settings(DEBUG=True)
@pytest.mark.parametrize("url", ["/sync/fails/", "/async/fails/"])
def test_error_frame_has_the_exception_text_with_debug(url: str) -> None:
    events = collect_events(Client().get(url), max_events=5)
    payload = error_payload(events[1])
    assert payload["detail"] == f"RuntimeError: {FAILURE}"


@pytest.mark.parametrize(
    ("url", "name"), [("/sync/bad-yield/", "bytes"), ("/async/bad-yield/", "'colour'")]
)
def test_an_invalid_yield_ends_the_stream_with_an_error_frame(url: str, name: str) -> None:
    with capture_logs() as logs:
        events = collect_events(Client().get(url), max_events=5)
    assert [e.event for e in events] == ["message", "error"]
    assert events[0].data == "before"
    [error] = [entry for entry in logs if entry["event"] == "sse.stream.error"]
    assert name in str(error["exc_info"])


# --------------------------------------------------------------- 0.2.0 compatibility


def test_every_name_of_0_2_0_is_importable_from_the_same_module() -> None:
    import django_flosse
    from django_flosse import (  # noqa: F401
        SSEClientDisconnected,
        SSEPermissionDenied,
        SSEYieldError,
        __version__,
        to_sse,
    )
    from django_flosse.events import SSEEvent as EventsSSEEvent
    from django_flosse.exceptions import (
        SSEClientDisconnected as Disconnected,
    )
    from django_flosse.exceptions import (
        SSEPermissionDenied as Denied,
    )
    from django_flosse.exceptions import (
        SSEYieldError as YieldError,
    )
    from django_flosse.formatters import to_sse as formatters_to_sse
    from django_flosse.permissions import (  # noqa: F401
        AllowAny,
        IsAdminUser,
        IsAuthenticated,
    )

    assert django_flosse.sse_stream is sse_stream
    assert django_flosse.SSEEvent is EventsSSEEvent is SSEEvent
    assert django_flosse.to_sse is formatters_to_sse
    assert (Disconnected, Denied, YieldError) == (
        SSEClientDisconnected,
        SSEPermissionDenied,
        SSEYieldError,
    )
    assert issubclass(SSEYieldError, ValueError)
    assert isinstance(__version__, str) and __version__


def test_sse_event_positional_fields_and_str_results() -> None:
    from django_flosse import to_sse

    event = SSEEvent("d", "e", "7", 100)
    assert (event.data, event.event, event.id, event.retry) == ("d", "e", "7", 100)
    assert event.encode() == "retry: 100\nid: 7\nevent: e\ndata: d\n\n"
    assert to_sse(event) == event.encode()
    assert isinstance(to_sse("x"), str)


@pytest.mark.django_db
def test_views_called_directly_with_a_request_factory_request() -> None:
    request = RequestFactory().get("/")
    assert collect_events(bare_sync(request), max_events=2) == [Event("message", "bare")]
    assert collect_events(CountView.as_view()(request), max_events=2)[0].json()["view"] == (
        "CountView"
    )


async def test_async_views_called_directly_with_a_request_factory_request() -> None:
    response = await called_async(RequestFactory().get("/"))
    assert await acollect_events(response, max_events=2) == [Event("message", "called")]


def test_views_called_directly_with_a_mock_request() -> None:
    request = MagicMock()
    request.user.is_authenticated = True
    assert collect_events(bare_sync(request), max_events=2) == [Event("message", "bare")]
    response = sync_private(request)
    assert response.status_code == 200
    events = collect_events(response, max_events=2)
    assert len(events) == 1 and events[0].data.startswith("hello ")


async def test_async_views_called_directly_with_a_mock_request() -> None:
    request = MagicMock()
    request.user.is_authenticated = False
    assert (await async_private(request)).status_code == 403
    request.user.is_authenticated = True
    response = await async_private(request)
    assert response.status_code == 200
    events = await acollect_events(response, max_events=2)
    assert len(events) == 1


def test_json_data_round_trips() -> None:
    events = collect_events(Client().get("/async/three/"), max_events=3)
    assert [json.loads(e.data) for e in events] == [{"i": 0}, {"i": 1}, {"i": 2}]
