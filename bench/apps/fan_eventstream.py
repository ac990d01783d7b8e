"""django-eventstream 5.x as its README sets it up: its ``events`` view, ``send_event``.

The view is mounted with ``{"channels": [TOPIC]}``; ``bench_settings`` adds
``django_eventstream`` to ``INSTALLED_APPS`` and, for the reliable variant, its
``DjangoModelStorage`` (``EVENTSTREAM_STORAGE_CLASS``), and ``EVENTSTREAM_REDIS`` when the
events cross processes (F2). ``send_event`` is sync (with storage it writes a row): the in-process
``/publish`` runs the whole schedule in one worker thread (``run_from_thread``), as a sync
view or task would call it; F2's publisher process calls it through ``sync_to_async``.
``/active`` answers how many listeners its listener manager holds for the topic.
"""

from __future__ import annotations

from typing import Any

import django_eventstream
from asgiref.sync import sync_to_async
from django.http import HttpRequest, JsonResponse
from django.urls import include, path
from django_eventstream import send_event
from django_eventstream.views import get_listener_manager
from fan_common import EVENT, TOPIC, Schedule, run_from_thread


def publish_sync(data: dict[str, Any]) -> None:
    send_event(TOPIC, EVENT, data)


publish_one = sync_to_async(publish_sync)


async def publish(request: HttpRequest) -> JsonResponse:
    schedule = Schedule.from_query(request.META.get("QUERY_STRING", ""))
    return JsonResponse(await sync_to_async(run_from_thread)(schedule, publish_sync))


def active(request: HttpRequest) -> JsonResponse:
    listeners = get_listener_manager().listeners_by_channel.get(TOPIC, ())
    return JsonResponse({"active": len(listeners)})


urlpatterns = [
    path("fan", include(django_eventstream.urls), {"channels": [TOPIC]}),
    path("publish", publish),
    path("active", active),
]
