"""django_flosse.testing: collect events from any stream view, bounded, always closed."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from django.http import HttpRequest, HttpResponse
from django.test import AsyncClient, Client, RequestFactory, override_settings
from django.urls import path
from hypothesis import given
from hypothesis import strategies as st

from django_flosse import SSEEvent, sse_stream
from django_flosse.events import encode_event
from django_flosse.testing import Event, acollect_events, collect_events, parse_events

pytestmark = [pytest.mark.urls(__name__), pytest.mark.django_db]

CLEANED: dict[str, threading.Event] = {}


@pytest.fixture(autouse=True)
def _cleanup_flags() -> Iterator[None]:
    CLEANED.clear()
    CLEANED.update(sync=threading.Event(), async_=threading.Event())
    yield
    # A sync view's thread ends just after its generator's finally: wait for it here so
    # that anything it raises is reported against the test that started it.
    for thread in stream_threads():
        thread.join(5)


@sse_stream(heartbeat=0.2)
def sync_endless(request: HttpRequest) -> Iterator[Any]:
    try:
        for i in itertools.count():
            yield SSEEvent({"i": i}, event="tick", id=i)
            time.sleep(0.005)
    finally:
        CLEANED["sync"].set()


@sse_stream(heartbeat=0.2)
async def async_endless(request: HttpRequest) -> AsyncIterator[Any]:
    try:
        for i in itertools.count():
            yield SSEEvent({"i": i}, event="tick", id=i)
            await asyncio.sleep(0.005)
    finally:
        CLEANED["async_"].set()


@sse_stream(heartbeat=0.05)
def sync_idle(request: HttpRequest) -> Iterator[Any]:
    yield "only"
    time.sleep(0.3)  # returns at each heartbeat meanwhile, so it can be closed
    yield "late"


@sse_stream(heartbeat=0.05)
async def async_idle(request: HttpRequest) -> AsyncIterator[Any]:
    try:
        yield "only"
        await asyncio.sleep(3600)
    finally:
        CLEANED["async_"].set()


@sse_stream(retry=1500)
def sync_two(request: HttpRequest) -> Iterator[Any]:
    yield "one"
    yield ("named", "two")


@sse_stream
async def async_two(request: HttpRequest) -> AsyncIterator[Any]:
    yield "one"
    yield ("named", "two")


def plain(request: HttpRequest) -> HttpResponse:
    return HttpResponse("not a stream", status=403)


urlpatterns = [
    path("sync/endless/", sync_endless),
    path("async/endless/", async_endless),
    path("sync/idle/", sync_idle),
    path("async/idle/", async_idle),
    path("sync/two/", sync_two),
    path("async/two/", async_two),
    path("plain/", plain),
]

ENDLESS = [("/sync/endless/", "sync"), ("/async/endless/", "async_")]
TICKS = [Event("tick", f'{{"i": {i}}}', str(i)) for i in range(3)]


def other_threads() -> set[threading.Thread]:
    """Threads that a stream could leave behind (not the session-wide metrics thread)."""
    return {t for t in threading.enumerate() if not t.name.startswith("flosse-metrics")}


def stream_threads() -> list[threading.Thread]:
    """Threads of sync streams and of the helpers (the test loop's own executor aside)."""
    names = ("flosse-sync-stream", "flosse-testing")
    return [t for t in threading.enumerate() if t.name.startswith(names)]


# ------------------------------------------------------------------ collect from views


@pytest.mark.parametrize(("url", "kind"), ENDLESS)
def test_sync_client_max_events_stops_an_endless_view(url: str, kind: str) -> None:
    before = other_threads()
    events = collect_events(Client().get(url), max_events=3)
    assert events == TICKS
    assert CLEANED[kind].wait(5), "the view's finally did not run"
    # A sync view's thread ends right after its finally; nothing else is left behind.
    for thread in other_threads() - before:
        thread.join(5)
        assert not thread.is_alive(), thread


@pytest.mark.parametrize(("url", "kind"), ENDLESS)
async def test_async_client_max_events_stops_an_endless_view(url: str, kind: str) -> None:
    events = await acollect_events(await AsyncClient().get(url), max_events=3)
    assert events == TICKS
    assert await asyncio.to_thread(CLEANED[kind].wait, 5), "the view's finally did not run"
    for thread in stream_threads():
        await asyncio.to_thread(thread.join, 5)
        assert not thread.is_alive(), thread


def test_async_view_finally_has_run_when_collect_events_returns() -> None:
    collect_events(Client().get("/async/endless/"), max_events=1)
    assert CLEANED["async_"].is_set()


async def test_async_view_finally_has_run_when_acollect_events_returns() -> None:
    await acollect_events(await AsyncClient().get("/async/endless/"), max_events=1)
    assert CLEANED["async_"].is_set()


@pytest.mark.parametrize("url", ["/sync/two/", "/async/two/"])
def test_a_stream_that_ends_first_returns_what_arrived(url: str) -> None:
    events = collect_events(Client().get(url), max_events=10)
    assert [(e.event, e.data) for e in events] == [("message", "one"), ("named", "two")]


@pytest.mark.parametrize("url", ["/sync/two/", "/async/two/"])
async def test_a_stream_that_ends_first_returns_what_arrived_async(url: str) -> None:
    events = await acollect_events(await AsyncClient().get(url), max_events=10)
    assert [(e.event, e.data) for e in events] == [("message", "one"), ("named", "two")]


def test_retry_is_reported_on_the_events() -> None:
    events = collect_events(Client().get("/sync/two/"), max_events=2)
    assert [e.retry for e in events] == [1500, 1500]


@pytest.mark.parametrize("url", ["/sync/idle/", "/async/idle/"])
def test_timeout_raises_saying_how_many_events_arrived(url: str) -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"only 1 of 3 events arrived within 0.2 s"):
        collect_events(Client().get(url), max_events=3, timeout=0.2)
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("url", ["/sync/idle/", "/async/idle/"])
async def test_timeout_raises_saying_how_many_events_arrived_async(url: str) -> None:
    with pytest.raises(TimeoutError, match=r"only 1 of 3 events arrived.*'only'"):
        await acollect_events(await AsyncClient().get(url), max_events=3, timeout=0.2)


def test_timeout_closes_the_stream() -> None:
    with pytest.raises(TimeoutError):
        collect_events(Client().get("/async/idle/"), max_events=2, timeout=0.2)
    assert CLEANED["async_"].is_set()


def test_views_called_directly() -> None:
    request = RequestFactory().get("/")
    assert len(collect_events(sync_endless(request), max_events=2)) == 2
    assert CLEANED["sync"].wait(5)


async def test_async_views_called_directly() -> None:
    request = RequestFactory().get("/")
    response = await async_endless(request)
    assert len(await acollect_events(response, max_events=2)) == 2
    assert CLEANED["async_"].is_set()


@override_settings(
    MIDDLEWARE=["django.middleware.gzip.GZipMiddleware"],
)
def test_gzip_compressed_streams_are_decoded() -> None:
    response = Client().get("/async/endless/", HTTP_ACCEPT_ENCODING="gzip")
    assert response["Content-Encoding"] == "gzip"
    assert collect_events(response, max_events=3) == TICKS


# ------------------------------------------------------------------ misuse is explained


def test_a_response_that_is_not_a_stream_is_explained() -> None:
    with pytest.raises(AssertionError, match=r"status 403 and body b'not a stream'"):
        collect_events(Client().get("/plain/"), max_events=1)


@pytest.mark.parametrize("bad", [0, -1, True, 1.5])
def test_max_events_must_be_a_positive_int(bad: Any) -> None:
    response = Client().get("/sync/two/")
    with pytest.raises(ValueError, match="max_events"):
        collect_events(response, max_events=bad)
    response.close()


async def test_the_sync_helper_refuses_to_block_an_event_loop() -> None:
    response = await AsyncClient().get("/async/two/")
    with pytest.raises(RuntimeError, match="acollect_events"):
        collect_events(response, max_events=1)
    await acollect_events(response, max_events=2)  # still usable, and closes it


# ------------------------------------------------------------------------- the parser


@pytest.mark.parametrize(
    ("wire", "events"),
    [
        ("data: a\n\n", [Event("message", "a")]),
        ("data: a\r\n\r\n", [Event("message", "a")]),
        ("data: a\r\rdata: b\r\r", [Event("message", "a"), Event("message", "b")]),
        ("data: a\ndata: b\n\n", [Event("message", "a\nb")]),
        ("data:a\n\n", [Event("message", "a")]),
        ("data:  two spaces\n\n", [Event("message", " two spaces")]),
        ("data\n\n", [Event("message", "")]),
        ("data: \n\n", [Event("message", "")]),
        ("\ufeffdata: bom\n\n", [Event("message", "bom")]),
        (": comment\n\n: keep-alive\n\n", []),
        ("event: only\n\n", []),
        ("data: unfinished", []),
        ("data: unfinished\n", []),
        ("event: e\ndata: x\nunknown: y\n\n", [Event("e", "x")]),
        ("id: 1\ndata: a\n\ndata: b\n\n", [Event("message", "a", "1"), Event("message", "b", "1")]),
        ("id: a\x00b\ndata: x\n\n", [Event("message", "x")]),
        ("id\ndata: x\n\n", [Event("message", "x", "")]),
        ("retry: 100\ndata: x\n\n", [Event("message", "x", None, 100)]),
        (
            "retry: 1e3\ndata: x\n\nretry: -1\ndata: y\n\n",
            [Event("message", "x"), Event("message", "y")],
        ),
        ("retry: 5\n\ndata: x\n\n", [Event("message", "x", None, 5)]),
    ],
)
def test_parse_events(wire: str, events: list[Event]) -> None:
    assert parse_events(wire) == events
    assert parse_events(wire.encode()) == events


def test_event_json() -> None:
    assert Event("m", '{"a": [1, null]}').json() == {"a": [1, None]}


@given(
    items=st.lists(
        st.tuples(
            st.text(),
            st.one_of(st.none(), st.text(st.characters(exclude_characters="\r\n"))),
        ),
        max_size=4,
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=8),
)
def test_chunk_boundaries_never_change_the_events(
    items: list[tuple[str, str | None]], cuts: list[int]
) -> None:
    """Split anywhere (inside a CRLF, inside a UTF-8 sequence): the same events come out."""
    wire = "".join(encode_event(data, event=event) for data, event in items)
    raw = wire.encode("utf-8", "surrogatepass")
    expected = [
        Event(event or "message", data.replace("\r\n", "\n").replace("\r", "\n"))
        for data, event in items
    ]
    if any("\ud800" <= ch <= "\udfff" for ch in wire):
        return  # not UTF-8; streams never carry it (encode_item refuses it)
    from django_flosse.testing import _Parser

    parser = _Parser()
    events: list[Event] = []
    start = 0
    for cut in sorted(set(cuts)):
        events += parser.feed(raw[start:cut])
        start = max(start, cut)
    events += parser.feed(raw[start:], final=True)
    assert events == expected
