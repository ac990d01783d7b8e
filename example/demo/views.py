"""The demo's pages and streams.

Each stream shows one thing a newcomer asks about:

=============  ========================  ==================================================
URL            view                      shows
=============  ========================  ==================================================
``feed``       ``async def``, endless    non-blocking polling: ``await asyncio.sleep`` and
                                         the async ORM, never a blocking call on the loop
``progress``   ``def``, finite           a job that completes; blocking sleeps are fine in
                                         a ``def`` view (it runs in a thread of its own)
``resume``     ``def``, ids + ``retry``  ``Last-Event-ID``: the server ends each connection
                                         after a few events, the browser reconnects by
                                         itself and the stream continues where it left off
``fail``       ``async def``             an exception becomes one ``error`` event with an
                                         error id (the same id is in the JSON log)
``htmx``       ``async def``             HTML fragments for the htmx ``sse`` extension
``news``       ``async def``, broadcast  ``subscribe()`` to the ``news`` topic: events
                                         published by ``broadcast()`` in any process,
                                         resumed exactly once after a reconnect
``alerts``     ``def``, broadcast        the same for the ``alerts`` topic, in a ``def``
                                         view (``yield from subscribe(...)``)
=============  ========================  ==================================================

django-flosse streams every one of them event by event under uvicorn (``make demo``) and
under gunicorn's gthread worker (``make demo-wsgi``).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest
from django.shortcuts import redirect, render
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.views.decorators.http import require_POST

from demo.models import Message
from django_flosse import SSEEvent, broadcast, sse_stream, subscribe
from django_flosse.observing.registry import registry

#: Seconds between two polls of the message table by the feed.
FEED_POLL = 1.0
#: Steps of the progress job and seconds per step.
PROGRESS_STEPS = 10
PROGRESS_STEP_TIME = 0.3
#: Events the resume stream sends per connection before it ends it on purpose, the
#: milliseconds the browser waits before reconnecting, and where the count stops.
RESUME_PER_CONNECTION = 5
RESUME_RETRY_MS = 1000
RESUME_LAST = 30

STREAM_PREFIX = "demo."

#: The broadcast page's topics (a fixed list: the views decide the topics, never the client).
TOPICS = ("news", "alerts")
#: Events the broadcast page's form may publish at once.
MAX_BURST = 20


# --------------------------------------------------------------------------- pages
def home(request: HttpRequest) -> HttpResponse:
    messages = Message.objects.order_by("-pk")[:5]
    return render(request, "demo/home.html", {"recent": reversed(list(messages))})


def htmx_page(request: HttpRequest) -> HttpResponse:
    return render(request, "demo/htmx.html")


def broadcast_page(request: HttpRequest) -> HttpResponse:
    return render(request, "demo/broadcast.html", {"topics": TOPICS, "pid": os.getpid()})


@require_POST
def post_message(request: HttpRequest) -> HttpResponse:
    """Add a message; every open feed (in every tab and process) picks it up at its next poll."""
    text = request.POST.get("text", "").strip()[:200]
    if text:
        Message.objects.create(text=text)
    if request.headers.get("X-Requested-With") == "fetch" or "HX-Request" in request.headers:
        return HttpResponse(status=204)  # the page stays; the feeds show the message
    return redirect("home")


# --------------------------------------------------------------------------- streams
# --8<-- [start:feed]
@sse_stream(name="demo.feed")
async def feed(request: HttpRequest) -> AsyncIterator[Any]:
    """An endless feed: a ``tick`` every second, plus each new ``message`` as it is posted.

    Polling without blocking: the ORM query is awaited (Django runs it in a thread) and the
    wait is ``asyncio.sleep``, so thousands of feeds share one event loop. When the browser
    goes away, ``CancelledError`` is raised at the current ``await``; let it propagate.
    """
    last = await Message.objects.order_by("-pk").values_list("pk", flat=True).afirst() or 0
    n = 0
    while True:
        async for message in Message.objects.filter(pk__gt=last).order_by("pk")[:20]:
            last = message.pk
            yield SSEEvent(
                data={"text": message.text, "at": message.created_at},
                event="message",
                id=message.pk,
            )
        yield ("tick", {"n": n, "now": timezone.now()})
        n += 1
        await asyncio.sleep(FEED_POLL)


# --8<-- [end:feed]


# --8<-- [start:progress]
@sse_stream(name="demo.progress", retry=2000)
def progress(request: HttpRequest) -> Iterator[tuple[str, dict[str, Any]]]:
    """A finite job: 0 to 100 percent, then ``done``; the page closes its EventSource then,
    or the browser would reconnect (after ``retry``) and run the job again."""
    started = time.monotonic()
    for step in range(PROGRESS_STEPS + 1):
        yield ("progress", {"percent": step * 100 // PROGRESS_STEPS})
        if step < PROGRESS_STEPS:
            time.sleep(PROGRESS_STEP_TIME)  # the "work": blocking is fine in a def view
    yield ("done", {"seconds": round(time.monotonic() - started, 2)})


# --8<-- [end:progress]


def _last_event_id(request: HttpRequest) -> int:
    try:
        return max(0, int(request.headers.get("Last-Event-ID", "")))
    except ValueError:  # a missing or made-up header: start from the beginning
        return 0


# --8<-- [start:resume]
@sse_stream(name="demo.resume", retry=RESUME_RETRY_MS)
def resume(request: HttpRequest) -> Iterator[tuple[str, Any, int | None]]:
    """Numbered events with ids; each connection ends after a few of them.

    The browser reconnects by itself after ``retry`` and sends the last id it saw in the
    ``Last-Event-ID`` header: the count continues from there, nothing is lost or repeated.
    A real stream would look the missed events up (e.g. rows with ``pk > last_id``).
    """
    after = _last_event_id(request)
    received = request.headers.get("Last-Event-ID")
    end = min(after + RESUME_PER_CONNECTION, RESUME_LAST)
    for n in range(after + 1, end + 1):
        yield ("count", {"n": n, "last_event_id": received}, n)
        time.sleep(0.4)
    if end >= RESUME_LAST:
        yield ("done", {"last": RESUME_LAST}, None)
    # Returning ends this connection: the browser reconnects after `retry` milliseconds.


# --8<-- [end:resume]


# --8<-- [start:fail]
@sse_stream(name="demo.fail")
async def fail(request: HttpRequest) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """Sends two events, then fails on purpose.

    The client gets one ``error`` event with an ``error_id`` (and, with ``DEBUG`` on, the
    exception's type and message); the traceback is logged as ``sse.stream.error`` with
    the same id.
    """
    for step in (1, 2):
        yield ("status", {"step": step})
        await asyncio.sleep(0.5)
    raise RuntimeError("the demo's failing stream failed, as it always does")


# --8<-- [end:fail]


def _stats_fragment() -> str:
    totals = sorted(registry.totals().values(), key=lambda t: t.stream)
    rows = format_html_join(
        "",
        "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
        (
            (t.stream, t.active, t.opened, t.events_sent)
            for t in totals
            if t.stream.startswith(STREAM_PREFIX)
        ),
    )
    return format_html(
        "<table><thead><tr><th>stream</th><th>open</th><th>opened</th><th>events</th></tr>"
        "</thead><tbody>{}</tbody></table>",
        rows,
    )


# --8<-- [start:htmx]
@sse_stream(name="demo.htmx")
async def htmx_stream(request: HttpRequest) -> AsyncIterator[tuple[str, str]]:
    """HTML fragments for htmx: ``sse-swap="clock"`` replaces, ``message`` is appended.

    Everything user-supplied goes through ``format_html``: a fragment is HTML, so escape.
    """
    last = await Message.objects.order_by("-pk").values_list("pk", flat=True).afirst() or 0
    while True:
        async for message in Message.objects.filter(pk__gt=last).order_by("pk")[:20]:
            last = message.pk
            stamp = timezone.localtime(message.created_at).strftime("%H:%M:%S")
            yield ("message", format_html("<li><time>{}</time> {}</li>", stamp, message.text))
        now = timezone.localtime()
        yield ("clock", format_html("<time>{}</time>", now.strftime("%H:%M:%S")))
        yield ("stats", _stats_fragment())
        await asyncio.sleep(FEED_POLL)


# --8<-- [end:htmx]


# --------------------------------------------------------------------------- broadcast
# --8<-- [start:broadcast]
@require_POST
def publish(request: HttpRequest) -> HttpResponse:
    """Publish the form's text to a topic, ``count`` times: every subscribed pane, in every
    tab and every server process, gets each event once."""
    topic = request.POST.get("topic", "")
    text = request.POST.get("text", "").strip()[:200]
    try:
        count = min(max(int(request.POST.get("count", "1")), 1), MAX_BURST)
    except ValueError:
        count = 1
    if topic not in TOPICS or not text:
        return HttpResponseBadRequest("a topic of the list and some text, please")
    for n in range(1, count + 1):
        label = text if count == 1 else f"{text} ({n}/{count})"
        broadcast(topic, {"text": label, "pid": os.getpid()}, event="note")
    return HttpResponse(status=204)


def _hello() -> tuple[str, dict[str, Any]]:
    # Not a broadcast: which process serves this connection (make demo-cluster has three).
    return ("hello", {"pid": os.getpid()})


@sse_stream(name="demo.news", retry=1000)
async def news(request: HttpRequest) -> AsyncIterator[Any]:
    """The ``news`` topic, in an ``async def`` view."""
    yield _hello()
    async for event in subscribe(request, "news"):
        yield event  # its id is what the page sends back to resume


@sse_stream(name="demo.alerts", retry=1000)
def alerts(request: HttpRequest) -> Iterator[Any]:
    """The ``alerts`` topic, in a ``def`` view: the same, with ``yield from``."""
    yield _hello()
    yield from subscribe(request, "alerts")


# --8<-- [end:broadcast]
