"""django-flosse's broadcast: ``subscribe()`` in an ``@sse_stream`` view, ``abroadcast()``.

The backend is ``FLOSSE["BROADCAST_BACKEND"]`` from ``bench_settings`` (``memory`` in one
process; ``database`` or ``redis`` across processes, where ``fan_publisher.py`` publishes).
``/publish`` runs the schedule in the server's event loop; ``/active`` answers how many
subscribers this process's fan-out holds.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from django.http import HttpRequest, JsonResponse
from django.urls import include, path
from fan_common import EVENT, TOPIC, Schedule, profiled

from django_flosse import abroadcast, sse_stream, subscribe
from django_flosse.broadcasting.backends import get_backend


@sse_stream(name="bench.fan")
async def fan(request: HttpRequest) -> AsyncIterator[Any]:
    async for event in subscribe(request, TOPIC):
        yield event


async def publish_one(data: dict[str, Any]) -> None:
    await abroadcast(TOPIC, data, event=EVENT)


async def publish(request: HttpRequest) -> JsonResponse:
    schedule = Schedule.from_query(request.META.get("QUERY_STRING", ""))
    return JsonResponse(await schedule.run(publish_one))


async def profile(request: HttpRequest) -> JsonResponse:
    """``/publish`` under cProfile: ``?out=PATH&linger=S`` and the schedule's parameters."""
    query = request.META.get("QUERY_STRING", "")
    output, linger = request.GET["out"], float(request.GET.get("linger", "5"))
    return JsonResponse(await profiled(Schedule.from_query(query), publish_one, output, linger))


def active(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"active": get_backend().subscribers(TOPIC)})  # type: ignore[attr-defined]


urlpatterns = [
    path("fan", fan),
    path("publish", publish),
    path("profile", profile),
    path("active", active),
    path("flosse/", include("django_flosse.urls")),
]
