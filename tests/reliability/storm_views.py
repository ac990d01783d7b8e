"""Test-only views of the broadcast storm tests, in the server process.

- ``storm_feed``: a subscriber of one topic (as ``tests.views.broadcast_async``) that, for
  a request with ``?probe=NAME``, records how long the view took from its start to its
  first event (the server's first-event time for a new client: the join, the history read
  and the first send, without the client's own delays). With ``?latency=1`` every event's
  data carries the publish time, and the view records publish-to-yield lags.
- ``storm_report``: JSON of those figures, of the SQL the broadcast reader thread ran
  (counted by an execute wrapper that Django's ``connection_created`` signal puts on every
  connection of this process) and of the history pages the backend keeps for resumes;
  ``?reset=1`` starts a new count, ``?gc=1`` adds a count of Python objects.
"""

from __future__ import annotations

import gc
import os
import re
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

from django.db.backends.signals import connection_created
from django.http import HttpRequest, JsonResponse

from django_flosse import sse_stream, subscribe
from django_flosse.broadcasting.backends import get_backend

_lock = threading.Lock()
FIRST_EVENT: dict[str, float] = {}
LAGS: list[float] = []
QUERIES: Counter[str] = Counter()
_TABLE = re.compile(r'(?:FROM|INTO|UPDATE)\s+"?(\w+)"?', re.IGNORECASE)
#: Lags kept at most (a bounded list: the figure is a median).
MAX_LAGS = 200_000


def _count(execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any) -> Any:
    if threading.current_thread().name == "flosse-broadcast-reader":
        match = _TABLE.search(sql)
        verb = sql.lstrip().split(None, 1)[0].upper()
        with _lock:
            QUERIES[f"{verb} {match[1] if match else '?'}"] += 1
    return execute(sql, params, many, context)


def _wrap(sender: Any, connection: Any, **kwargs: Any) -> None:
    if _count not in connection.execute_wrappers:
        connection.execute_wrappers.append(_count)


connection_created.connect(_wrap, dispatch_uid="flosse-storm-query-count")


@sse_stream(name="storm.feed", heartbeat=5.0)
async def storm_feed(request: HttpRequest, topic: str) -> AsyncIterator[Any]:
    started = time.monotonic()
    probe = request.GET.get("probe")
    latency = bool(request.GET.get("latency"))
    async for event in subscribe(request, topic):
        if probe is not None:
            FIRST_EVENT[probe] = time.monotonic() - started
            probe = None
        if latency and len(LAGS) < MAX_LAGS:
            stamp = event.data.rpartition(" ")[2]
            if stamp.replace(".", "", 1).isdigit():
                LAGS.append(time.time() - float(stamp))
        yield event


def storm_report(request: HttpRequest) -> JsonResponse:
    with _lock:
        report = {
            "pid": os.getpid(),
            "first_event": dict(FIRST_EVENT),
            "queries": dict(QUERIES),
            "lags": len(LAGS),
        }
        if request.GET.get("lags"):
            report["lag_values"] = list(LAGS)
        if request.GET.get("reset"):
            FIRST_EVENT.clear()
            QUERIES.clear()
            LAGS.clear()
    kept = getattr(get_backend(), "_kept", None)
    report["kept_pages"] = len(kept) if kept is not None else 0
    if request.GET.get("gc"):
        gc.collect()
        report["gc_objects"] = len(gc.get_objects())
    return JsonResponse(report)
