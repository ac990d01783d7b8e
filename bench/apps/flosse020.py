"""django-flosse 0.2.0 from PyPI (run.py puts bench/.flosse020 first on PYTHONPATH)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

from common import IDLE_SECONDS, open_streams, parse_query
from django.http import HttpRequest, JsonResponse
from django.urls import path

import django_flosse
from django_flosse import sse_stream

if django_flosse.__version__ != "0.2.0":
    raise RuntimeError(
        f"the 0.2.0 peer imported django_flosse {django_flosse.__version__} from "
        f"{django_flosse.__file__}: bench/.flosse020 must come first on PYTHONPATH"
    )


@sse_stream
async def stream(request: HttpRequest) -> AsyncIterator[Any]:
    indices, idle = parse_query(request.META.get("QUERY_STRING", ""))
    open_streams.add(1)
    try:
        for i in indices:
            yield ("tick", {"i": i})
        if idle:
            await asyncio.sleep(IDLE_SECONDS)
    finally:
        open_streams.add(-1)


@sse_stream
def sync_stream(request: HttpRequest) -> Iterator[Any]:
    indices, _idle = parse_query(request.META.get("QUERY_STRING", ""))
    open_streams.add(1)
    try:
        for i in indices:
            yield ("tick", {"i": i})
    finally:
        open_streams.add(-1)


def active(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"active": open_streams.value})


urlpatterns = [
    path("stream", stream),
    path("sync-stream", sync_stream),
    path("active", active),
]
