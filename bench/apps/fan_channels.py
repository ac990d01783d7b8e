"""Channels 4.x: an ``AsyncHttpConsumer`` per subscriber in a group, ``group_send``.

Set up as the Channels docs describe, with what is easy to get wrong done right:

* the stock ``AsyncHttpConsumer`` ends the response when ``handle()`` returns (it raises
  ``StopConsumer``: channels#1302, #1747), so this consumer's ``http_request`` sends the
  head and joins the group, then returns without stopping: the consumer keeps running and
  writes each group message as it comes, until the client disconnects;
* the layer's ``capacity`` (``bench_settings.CHANNEL_LAYERS``) is above the burst, else
  ``group_send`` drops messages silently;
* with ``channels_redis`` (F2) the pool's ``max_connections`` is set per host.

Each consumer formats its own frame (what a Channels user writes). ``/publish`` runs the
schedule in this process; ``/active`` answers how many consumers of this process joined.
"""

from __future__ import annotations

import json
from typing import Any

from django.core.asgi import get_asgi_application

django_application = get_asgi_application()  # sets Django up before Channels is imported

from channels.generic.http import AsyncHttpConsumer  # noqa: E402
from channels.layers import get_channel_layer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.http import HttpRequest, JsonResponse  # noqa: E402
from django.urls import path, re_path  # noqa: E402
from fan_common import EVENT, TOPIC, Schedule  # noqa: E402

HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache, no-transform"),
    (b"x-accel-buffering", b"no"),
]

joined = 0  # consumers of this process in the group


class TickConsumer(AsyncHttpConsumer):
    async def http_request(self, message: dict[str, Any]) -> None:
        global joined
        if message.get("more_body"):
            return
        await self.send_headers(headers=HEADERS)
        await self.send_body(b"", more_body=True)
        await self.channel_layer.group_add(TOPIC, self.channel_name)
        self.in_group = True
        joined += 1
        # No StopConsumer: the response stays open (see the module docstring).

    async def tick(self, message: dict[str, Any]) -> None:
        frame = f"event: {EVENT}\ndata: {json.dumps(message['data'])}\n\n"
        await self.send_body(frame.encode(), more_body=True)

    async def disconnect(self) -> None:
        global joined
        if getattr(self, "in_group", False):
            self.in_group = False
            joined -= 1
            await self.channel_layer.group_discard(TOPIC, self.channel_name)


async def publish_one(data: dict[str, Any]) -> None:
    await get_channel_layer().group_send(TOPIC, {"type": EVENT, "data": data})


async def publish(request: HttpRequest) -> JsonResponse:
    schedule = Schedule.from_query(request.META.get("QUERY_STRING", ""))
    return JsonResponse(await schedule.run(publish_one))


def active(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"active": joined})


urlpatterns = [path("publish", publish), path("active", active)]

application = ProtocolTypeRouter(
    {
        "http": URLRouter([path("fan", TickConsumer.as_asgi()), re_path(r"", django_application)]),
    }
)
