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


# --------------------------------------------------------------- observability (issue 3)
# Views of tests/test_registry.py, test_metrics.py, test_log.py and
# test_observability_servers.py. Each has its own stream name, so metric samples of one
# test file never mix with another's.

import structlog  # noqa: E402

from django_flosse.permissions import BaseSSEPermission  # noqa: E402


class DenyAll(BaseSSEPermission):
    """A permission class that always says no (counted as ``forbidden``)."""

    def has_permission(self, request: HttpRequest) -> bool:
        return False


@sse_stream(name="obs.limited_async", max_connections=50, heartbeat=None)
async def obs_limited_async(request: HttpRequest) -> AsyncIterator[Any]:
    """Endless, at most 50 at once per process."""
    for i in itertools.count():
        yield ("tick", {"i": i})
        await asyncio.sleep(0.05)


@sse_stream(name="obs.limited_sync", max_connections=50, heartbeat=None)
def obs_limited_sync(request: HttpRequest) -> Iterator[Any]:
    """Endless, at most 50 at once per process."""
    for i in itertools.count():
        yield ("tick", {"i": i})
        time.sleep(0.05)


@sse_stream(name="obs.per_user", max_connections_per_user=1, heartbeat=None)
def obs_per_user(request: HttpRequest) -> Iterator[Any]:
    """Endless, at most one at once per authenticated user."""
    for i in itertools.count():
        yield ("tick", {"i": i})
        time.sleep(0.05)


@sse_stream(name="obs.forbidden", permission_classes=[DenyAll])
def obs_forbidden(request: HttpRequest) -> Iterator[Any]:
    yield "never"


@sse_stream(name="obs.count", heartbeat=None)
def obs_count(request: HttpRequest) -> Iterator[Any]:
    """``?n=`` events, then the stream completes."""
    for i in range(int(request.GET.get("n", "3"))):
        yield ("tick", {"i": i})


@sse_stream(name="obs.async_count", heartbeat=None)
async def obs_async_count(request: HttpRequest) -> AsyncIterator[Any]:
    """``?n=`` events, then the stream completes."""
    for i in range(int(request.GET.get("n", "3"))):
        yield ("tick", {"i": i})


@sse_stream(name="obs.endless", heartbeat=None)
def obs_endless(request: HttpRequest) -> Iterator[Any]:
    """One event every 20 ms, for ever."""
    for i in itertools.count():
        yield ("tick", {"i": i})
        time.sleep(0.02)


@sse_stream(name="obs.async_endless", heartbeat=1)
async def obs_async_endless(request: HttpRequest) -> AsyncIterator[Any]:
    """One event every ``?every=`` seconds (0.05), for ever."""
    for i in itertools.count():
        yield ("tick", {"i": i})
        await asyncio.sleep(float(request.GET.get("every", "0.05")))


@sse_stream(name="obs.fails", heartbeat=None)
def obs_fails(request: HttpRequest) -> Iterator[Any]:
    yield "before"
    raise RuntimeError("obs producer failed")


@sse_stream(name="obs.async_fails", heartbeat=None)
async def obs_async_fails(request: HttpRequest) -> AsyncIterator[Any]:
    yield "before"
    raise RuntimeError("obs producer failed")


@sse_stream(name="obs.logs_inside", heartbeat=None)
def obs_logs_inside(request: HttpRequest) -> Iterator[Any]:
    """Logs with structlog while it streams (the log must carry the connection's id)."""
    structlog.get_logger("tests.views").info("view.sync.before_first")
    yield "one"
    structlog.get_logger("tests.views").info("view.sync.between")
    yield "two"


@sse_stream(name="obs.async_logs_inside", heartbeat=None)
async def obs_async_logs_inside(request: HttpRequest) -> AsyncIterator[Any]:
    """Logs with structlog while it streams (the log must carry the connection's id)."""
    structlog.get_logger("tests.views").info("view.async.before_first")
    yield "one"
    await asyncio.sleep(0)
    structlog.get_logger("tests.views").info("view.async.between")
    yield "two"


@sse_stream(name="obs.held", max_connections=1, heartbeat=1)
async def obs_held(request: HttpRequest) -> AsyncIterator[Any]:
    """Endless, one at a time: a held connection makes every other request get 503."""
    for i in itertools.count():
        yield ("tick", {"i": i})
        await asyncio.sleep(0.2)


@sse_stream(name="obs.pid_stream", heartbeat=None)
def obs_pid_stream(request: HttpRequest) -> Iterator[Any]:
    """``?n=`` events (one every ``?every=`` s) naming the process that serves the stream."""
    every = float(request.GET.get("every", "0"))
    for i in range(int(request.GET.get("n", "3"))):
        yield ("pid", {"pid": os.getpid(), "i": i})
        if every:
            time.sleep(every)
