"""Stream views exercised by the tests, through real servers and the test client."""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from django.http import HttpRequest
from django.views import View

from django_flosse import SSEEvent, sse_stream
from django_flosse.permissions import IsAuthenticated


def _mark(request: HttpRequest, what: str) -> None:
    """Record cleanup in a file named by the query string (tests in another process read it)."""
    marker = request.GET.get("marker")
    if marker:
        Path(marker).write_text(what)


@sse_stream(heartbeat=None)
def sync_count(request: HttpRequest) -> Iterator[Any]:
    for i in range(int(request.GET.get("n", "3"))):
        yield ("tick", {"i": i})


@sse_stream(heartbeat=None)
async def async_count(request: HttpRequest) -> AsyncIterator[Any]:
    for i in range(int(request.GET.get("n", "3"))):
        yield ("tick", {"i": i})


@sse_stream(heartbeat=1)
def sync_endless(request: HttpRequest) -> Iterator[Any]:
    try:
        for i in itertools.count():
            yield ("tick", {"i": i})
            time.sleep(float(request.GET.get("every", "0.1")))
    finally:
        _mark(request, "closed")


@sse_stream(heartbeat=1)
async def async_endless(request: HttpRequest) -> AsyncIterator[Any]:
    try:
        for i in itertools.count():
            yield ("tick", {"i": i})
            await asyncio.sleep(float(request.GET.get("every", "0.1")))
    finally:
        _mark(request, "closed")


@sse_stream(heartbeat=1)
async def async_swallows_cancel(request: HttpRequest) -> AsyncIterator[Any]:
    """Catches CancelledError and returns, as 0.2.0's docs told users was fine."""
    try:
        for i in itertools.count():
            yield ("tick", {"i": i})
            await asyncio.sleep(0.1)
    except asyncio.CancelledError:
        _mark(request, "swallowed")
        return


@sse_stream(heartbeat=0.2)
async def async_idle(request: HttpRequest) -> AsyncIterator[Any]:
    yield "first"
    await asyncio.sleep(3600)
    yield "never"


@sse_stream(heartbeat=0.2)
def sync_idle(request: HttpRequest) -> Iterator[Any]:
    yield "first"
    time.sleep(float(request.GET.get("sleep", "1")))
    yield "late"


@sse_stream(retry=2500)
def with_retry(request: HttpRequest) -> Iterator[Any]:
    yield "hello"


@sse_stream
def sync_fails(request: HttpRequest) -> Iterator[Any]:
    yield "before"
    raise RuntimeError("secret internal detail /srv/app/secret.py")


@sse_stream
async def async_fails(request: HttpRequest) -> AsyncIterator[Any]:
    yield "before"
    raise RuntimeError("secret internal detail /srv/app/secret.py")


@sse_stream
async def async_bad_yield(request: HttpRequest) -> AsyncIterator[Any]:
    yield "before"
    yield b"raw bytes"
    yield "after"


@sse_stream(permission_classes=[IsAuthenticated])
async def async_private(request: HttpRequest) -> AsyncIterator[Any]:
    yield "secret"


@sse_stream(permission_classes=[IsAuthenticated])
def sync_private(request: HttpRequest) -> Iterator[Any]:
    yield "secret"


@sse_stream
def resume(request: HttpRequest) -> Iterator[Any]:
    """Resumes after the Last-Event-ID the browser sends when it reconnects."""
    last = request.headers.get("Last-Event-ID", "")
    start = int(last) + 1 if last.isdigit() else 0
    for i in range(start, start + 3):
        yield SSEEvent(data={"i": i}, event="tick", id=i)


class CountView(View):
    @sse_stream(name="tests.class_based")
    def get(self, request: HttpRequest) -> Iterator[Any]:
        yield ("tick", {"view": type(self).__name__})


def pid_view(request: HttpRequest) -> Any:
    from django.http import JsonResponse

    return JsonResponse({"pid": os.getpid()})


@sse_stream
async def async_resume(request: HttpRequest) -> AsyncIterator[Any]:
    """The async twin of ``resume``: resumes after the Last-Event-ID header."""
    last = request.headers.get("Last-Event-ID", "")
    start = int(last) + 1 if last.isdigit() else 0
    for i in range(start, start + 3):
        yield SSEEvent(data={"i": i}, event="tick", id=i)
