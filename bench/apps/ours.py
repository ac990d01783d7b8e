"""django-flosse as it is in this repository (installed editable into the bench venv).

Every feature is on unless run.py sets ``BENCH_OBSERVABILITY=off``: the registry, the
heartbeat (``FLOSSE["HEARTBEAT"]``, 15 s), metrics and logs. ``/active`` reads the registry;
with observability on, run.py reads ``flosse_connections_active`` from ``/flosse/metrics/``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

from common import IDLE_SECONDS, parse_query
from django.http import HttpRequest, JsonResponse
from django.urls import include, path

import django_flosse
from django_flosse import sse_stream
from django_flosse.observing.registry import registry

if django_flosse.__version__ == "0.2.0":
    raise RuntimeError(f"ours imported django_flosse 0.2.0 from {django_flosse.__file__}")


@sse_stream(name="bench.stream")
async def stream(request: HttpRequest) -> AsyncIterator[Any]:
    indices, idle = parse_query(request.META.get("QUERY_STRING", ""))
    for i in indices:
        yield ("tick", {"i": i})
    if idle:
        await asyncio.sleep(IDLE_SECONDS)


@sse_stream(name="bench.sync_stream")
def sync_stream(request: HttpRequest) -> Iterator[Any]:
    indices, _idle = parse_query(request.META.get("QUERY_STRING", ""))
    for i in indices:
        yield ("tick", {"i": i})


def active(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"active": sum(t.active for t in registry.totals().values())})


urlpatterns = [
    path("stream", stream),
    path("sync-stream", sync_stream),
    path("active", active),
    path("flosse/", include("django_flosse.urls")),
]
