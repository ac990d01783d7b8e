"""The floor of any Django view: the cheapest broadcaster a Django streaming view can have.

Not a way anyone should write a broadcaster (it keeps every frame of the run), but what is
left when everything a library does is taken away and the view still goes through Django:
the publisher encodes each event once and appends the frame to one shared list, then
completes one future that every idle subscriber awaits; each subscriber's async generator
yields the frames it has not sent yet, pre-encoded bytes, through Django's async
``StreamingHttpResponse``. What stays is what every Django view pays per subscriber and
event: waking its request's task and going through Django's response iteration to the
server's ``send``. The raw ASGI app (``fan_raw.py``) writes from the publisher's task and
pays neither, so floor / raw is how close to the limit any Django view can get.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from django.http import HttpRequest, HttpResponseBase, JsonResponse, StreamingHttpResponse
from django.urls import path
from fan_common import EVENT, Schedule

HEADERS = {"Cache-Control": "no-cache, no-transform", "X-Accel-Buffering": "no"}


class Floor:
    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.subscribers = 0
        self._waiting: list[asyncio.Future[None]] = []  # one future per idle subscriber

    async def publish(self, data: dict[str, Any]) -> None:
        self.frames.append(b"event: %s\ndata: %s\n\n" % (EVENT.encode(), json.dumps(data).encode()))
        waiting, self._waiting = self._waiting, []
        for future in waiting:
            if not future.done():
                future.set_result(None)

    async def listen(self) -> AsyncIterator[bytes]:
        # No idle timeout (the raw app has one): the benchmark's client closes every stream,
        # and the server is stopped after the run. A future of its own per wait, so that a
        # subscriber's cancellation (its client gone) cancels nobody else's wait.
        loop = asyncio.get_running_loop()
        sent = len(self.frames)  # live events only, as every peer
        self.subscribers += 1
        try:
            while True:
                while sent < len(self.frames):
                    sent += 1
                    yield self.frames[sent - 1]
                future = loop.create_future()
                self._waiting.append(future)
                await future
        finally:
            self.subscribers -= 1


floor = Floor()


async def fan(request: HttpRequest) -> HttpResponseBase:
    return StreamingHttpResponse(
        floor.listen(), content_type="text/event-stream; charset=utf-8", headers=HEADERS
    )


async def publish(request: HttpRequest) -> JsonResponse:
    schedule = Schedule.from_query(request.META.get("QUERY_STRING", ""))
    return JsonResponse(await schedule.run(floor.publish))


def active(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"active": floor.subscribers})


urlpatterns = [path("fan", fan), path("publish", publish), path("active", active)]
