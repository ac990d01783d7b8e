"""Plain Django: ``StreamingHttpResponse`` over a generator, as a user would write it.

The async view runs on uvicorn (native async iteration); the sync view on gunicorn gthread.
(Each mismatched case would buffer the whole stream: Django runs ``sync_to_async(list)`` or
``async_to_sync`` over the iterator, so it is not a peer.)
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator

from common import IDLE_SECONDS, open_streams, parse_query
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.urls import path

HEADERS = {"Cache-Control": "no-cache, no-transform", "X-Accel-Buffering": "no"}
CONTENT_TYPE = "text/event-stream; charset=utf-8"


async def stream(request: HttpRequest) -> HttpResponse:
    indices, idle = parse_query(request.META.get("QUERY_STRING", ""))

    async def events() -> AsyncIterator[str]:
        open_streams.add(1)
        try:
            for i in indices:
                yield f"event: tick\ndata: {json.dumps({'i': i})}\n\n"
            if idle:
                await asyncio.sleep(IDLE_SECONDS)
        finally:
            open_streams.add(-1)

    return StreamingHttpResponse(events(), content_type=CONTENT_TYPE, headers=HEADERS)


def sync_stream(request: HttpRequest) -> HttpResponse:
    indices, _idle = parse_query(request.META.get("QUERY_STRING", ""))

    def events() -> Iterator[str]:
        open_streams.add(1)
        try:
            for i in indices:
                yield f"event: tick\ndata: {json.dumps({'i': i})}\n\n"
        finally:
            open_streams.add(-1)

    return StreamingHttpResponse(events(), content_type=CONTENT_TYPE, headers=HEADERS)


def active(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"active": open_streams.value})


urlpatterns = [
    path("stream", stream),
    path("sync-stream", sync_stream),
    path("active", active),
]
