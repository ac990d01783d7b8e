"""The HTTP side of a stream: SSEResponse, gzip negotiation, refusals (streaming/_response.py)."""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from django.http import HttpRequest
from django.test import RequestFactory, override_settings

from django_flosse import reasons, sse_stream
from django_flosse.conf import get_config
from django_flosse.observing.registry import registry
from django_flosse.streaming._response import SSEResponse, refusal, wants_gzip
from tests.support.responses import close_response

GZIP = "django.middleware.gzip.GZipMiddleware"
BODY = b"data: one\n\ndata: two\n\n"


@sse_stream(name="response.sync", heartbeat=None)
def sync_view(request: HttpRequest) -> Iterator[str]:
    yield "one"
    yield "two"


@sse_stream(name="response.async", heartbeat=None)
async def async_view(request: HttpRequest) -> AsyncIterator[str]:
    yield "one"
    yield "two"


async def response_of(is_async: bool, request: HttpRequest) -> SSEResponse:
    response = await async_view(request) if is_async else sync_view(request)
    assert isinstance(response, SSEResponse)
    return response


async def read_async(response: SSEResponse) -> bytes:
    return b"".join([chunk async for chunk in response])


# ---------------------------------------------------------------------------- headers


@pytest.mark.parametrize("is_async", [False, True], ids=["def", "async def"])
async def test_the_headers_of_every_stream(rf: RequestFactory, is_async: bool) -> None:
    response = await response_of(is_async, rf.get("/"))
    assert response.status_code == 200
    assert dict(response.items()) == {
        "Content-Type": "text/event-stream; charset=utf-8",
        "Cache-Control": "no-cache, no-transform",
        "X-Accel-Buffering": "no",
    }  # no Content-Length, no Content-Encoding
    assert response.streaming
    assert response.is_async is is_async  # middleware learns the view's kind of iterator
    assert await read_async(response) == BODY


@override_settings(MIDDLEWARE=[GZIP])
async def test_a_gzip_stream_says_so_and_flushes_each_chunk(rf: RequestFactory) -> None:
    response = await response_of(True, rf.get("/", HTTP_ACCEPT_ENCODING="gzip"))
    assert response["Content-Encoding"] == "gzip"
    assert response["Vary"] == "Accept-Encoding"
    decompress = zlib.decompressobj(wbits=31)
    body = b""
    async for chunk in response:
        text = decompress.decompress(chunk)
        # Each chunk decompresses to whole events at once (the last one: the gzip trailer).
        assert text.endswith(b"\n\n") or (not text and decompress.eof)
        body += text
    assert body == BODY
    assert decompress.eof  # a complete gzip stream


# ------------------------------------------------------------------------ wants_gzip


@pytest.mark.parametrize(
    ("accept", "middleware", "expected"),
    [
        ("gzip", [GZIP], True),
        ("gzip, deflate, br", [GZIP], True),
        ("br;q=1.0, gzip;q=0.8", [GZIP], True),
        ("x-gzip", [GZIP], True),  # the same matching as GZipMiddleware's
        ("br, deflate", [GZIP], False),
        ("gzipped", [GZIP], False),
        ("", [GZIP], False),
        (None, [GZIP], False),
        ("gzip", [], False),  # no GZipMiddleware: the project does not compress
        ("gzip", ["tests.test_checks.MyGZipMiddleware"], False),
    ],
)
def test_wants_gzip(
    rf: RequestFactory, accept: str | None, middleware: list[str], expected: bool
) -> None:
    request = rf.get("/") if accept is None else rf.get("/", HTTP_ACCEPT_ENCODING=accept)
    with override_settings(MIDDLEWARE=middleware):
        assert wants_gzip(request) is expected


@override_settings(MIDDLEWARE=[GZIP])
@pytest.mark.parametrize(
    "request_double",
    [
        SimpleNamespace(),  # no META at all
        SimpleNamespace(META={"HTTP_ACCEPT_ENCODING": b"gzip"}),  # not a str
        SimpleNamespace(META={"HTTP_ACCEPT_ENCODING": None}),
    ],
)
def test_wants_gzip_tolerates_request_doubles(request_double: Any) -> None:
    assert wants_gzip(request_double) is False


# --------------------------------------------------------------------------- refusal


@override_settings(FLOSSE={"LIMIT_RETRY_AFTER": 17})
@pytest.mark.parametrize(
    ("reason", "status", "retry_after"),
    [
        (reasons.FORBIDDEN, 403, None),
        (reasons.STREAM_LIMIT, 503, "17"),
        (reasons.USER_LIMIT, 429, "17"),
    ],
)
def test_refusal(reason: str, status: int, retry_after: str | None) -> None:
    response = refusal(reason, get_config())
    assert response.status_code == status
    assert response.get("Retry-After") == retry_after
    assert not response.streaming and response.content == b""


def test_the_default_retry_after_is_5_seconds() -> None:
    assert refusal(reasons.STREAM_LIMIT, get_config())["Retry-After"] == "5"


# ---------------------------------------------------- middleware that replaces the content


def _upper(chunks: Iterator[bytes]) -> Iterator[bytes]:
    for chunk in chunks:
        yield chunk.upper()


async def _aupper(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    async for chunk in chunks:
        yield chunk.upper()


def test_a_sync_replacement_of_a_sync_stream_is_iterated_as_given(rf: RequestFactory) -> None:
    response = sync_view(rf.get("/"))
    response.streaming_content = _upper(response.streaming_content)
    try:
        assert b"".join(response) == BODY.upper()
    finally:
        close_response(response)


async def test_an_async_replacement_of_an_async_stream_is_iterated_as_given(
    rf: RequestFactory,
) -> None:
    response = await response_of(True, rf.get("/"))
    response.streaming_content = _aupper(response.streaming_content)
    assert await read_async(response) == BODY.upper()


async def test_a_sync_replacement_of_an_async_stream_is_stepped_not_buffered(
    rf: RequestFactory,
) -> None:
    # A sync-only middleware wrapped an async view's content; ASGI iterates it with
    # ``async for``. Django would buffer it whole (and warn: warnings fail this suite).
    response = await response_of(True, rf.get("/"))

    def sync_wrapper() -> Iterator[bytes]:
        yield b": from a sync middleware\n\n"
        yield b"data: three\n\n"

    response.streaming_content = sync_wrapper()
    assert await read_async(response) == b": from a sync middleware\n\ndata: three\n\n"
    close_response(response)


def test_an_unstarted_response_closes_its_connection_once_as_cancelled(
    rf: RequestFactory,
) -> None:
    response = sync_view(rf.get("/"))
    assert len(registry.live("response.sync")) == 1
    close_response(response)  # a middleware dropped it: no server ever iterates it
    close_response(response)
    assert registry.live("response.sync") == []
    assert registry.totals()["response.sync"].closed == Counter({"cancelled": 1})
