"""Test-only views of the broadcast storm tests, in the server process.

- ``storm_feed``: a subscriber of one topic (as ``tests.views.broadcast_async``) that, for
  a request with ``?probe=NAME``, records how long the view took from its start to its
  first event (the server's first-event time for a new client: the join, the history read
  and the first send, without the client's own delays). With ``?latency=1`` every event's
  data carries the publish time, and the view records publish-to-yield lags.
  Probes also record the time of each step inside the subscription (``STEPS``): the join
  asked and answered, each history read asked and answered (by the backend's thread, or at
  once from the kept pages), then the first event; a gap between an answer and the next
  ask is the hop back to the view's event loop.
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
STEPS: dict[str, list[tuple[str, float]]] = {}
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


class _Stepping:
    """A subscription's backend that records when its join and reads are asked and
    answered (milliseconds since the view started)."""

    def __init__(self, backend: Any, started: float, steps: list[tuple[str, float]]) -> None:
        self._backend, self._started, self._steps = backend, started, steps

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    def _mark(self, what: str) -> None:
        self._steps.append((what, (time.monotonic() - self._started) * 1000))

    def _timed(self, what: str, future: Any) -> Any:
        self._mark(f"{what}?")
        future.add_done_callback(lambda _future: self._mark(f"{what}!"))
        return future

    def join(self, subscriber: Any) -> Any:
        return self._timed("join", self._backend.join(subscriber))

    def read(self, topic: str, after: Any, upto: Any) -> Any:
        return self._timed("read", self._backend.read(topic, after, upto))


@sse_stream(name="storm.feed", heartbeat=5.0)
async def storm_feed(request: HttpRequest, topic: str) -> AsyncIterator[Any]:
    started = time.monotonic()
    probe = request.GET.get("probe")
    latency = bool(request.GET.get("latency"))
    subscription = subscribe(request, topic)
    if probe is not None:
        steps = STEPS[probe] = []
        subscription._backend = _Stepping(subscription._backend, started, steps)  # type: ignore[assignment]
    async for event in subscription:
        if probe is not None:
            FIRST_EVENT[probe] = time.monotonic() - started
            steps.append(("first", FIRST_EVENT[probe] * 1000))
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
            "steps": dict(STEPS),
            "queries": dict(QUERIES),
            "lags": len(LAGS),
        }
        if request.GET.get("lags"):
            report["lag_values"] = list(LAGS)
        if request.GET.get("reset"):
            FIRST_EVENT.clear()
            STEPS.clear()
            QUERIES.clear()
            LAGS.clear()
    kept = getattr(get_backend(), "_kept", None)
    report["kept_pages"] = len(kept) if kept is not None else 0
    if request.GET.get("gc"):
        gc.collect()
        report["gc_objects"] = len(gc.get_objects())
    return JsonResponse(report)
