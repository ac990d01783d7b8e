"""Plain Django: an async ``StreamingHttpResponse`` over a hand-written queue broadcaster.

``/publish`` runs the schedule (``fan_common.Schedule``) in the server's event loop;
``/active`` answers how many subscribers are registered.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.urls import path
from fan_common import EVENT, Schedule
from queue_broadcaster import broadcaster

HEADERS = {"Cache-Control": "no-cache, no-transform", "X-Accel-Buffering": "no"}


async def fan(request: HttpRequest) -> HttpResponse:
    async def events() -> AsyncIterator[str]:
        async for data in broadcaster.listen():
            yield f"event: {EVENT}\ndata: {json.dumps(data)}\n\n"

    return StreamingHttpResponse(
        events(), content_type="text/event-stream; charset=utf-8", headers=HEADERS
    )


async def publish(request: HttpRequest) -> JsonResponse:
    schedule = Schedule.from_query(request.META.get("QUERY_STRING", ""))
    return JsonResponse(await schedule.run(broadcaster.publish))


def active(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"active": len(broadcaster.queues)})


urlpatterns = [path("fan", fan), path("publish", publish), path("active", active)]
