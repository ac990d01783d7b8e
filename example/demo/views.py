"""The demo's views: a page and the two streams it shows.

`clock` is an `async def` generator and `progress` a plain `def` generator: django-flosse
streams both event by event on ASGI (uvicorn, as `make demo` runs it) and on WSGI alike.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone

from django_flosse import sse_stream


def home(request: HttpRequest) -> HttpResponse:
    return render(request, "demo/home.html")


@sse_stream
async def clock(request: HttpRequest) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """One `tick` a second, for ever: the stream ends when the browser goes away."""
    n = 0
    while True:
        yield ("tick", {"now": timezone.now().isoformat(), "n": n})
        n += 1
        await asyncio.sleep(1)


@sse_stream(retry=2000)
def progress(request: HttpRequest) -> Iterator[tuple[str, dict[str, Any]]]:
    """A finite job: 0 to 100 percent, then `done`. Blocking sleeps are fine in a `def` view."""
    for percent in range(0, 101, 10):
        yield ("progress", {"percent": percent})
        time.sleep(0.3)
    yield ("done", {"ok": True})
