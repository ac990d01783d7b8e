"""In-process subscribers for the broadcast tests: requests, a subscriber thread, frames,
resumes racing a publisher.

A sync ``def`` view iterates its subscription in a thread of its own (the stream's bridge
runs it there); :class:`Reader` does the same in a test, keeping what arrives for the test
to take with a deadline. Every event a subscription yields is an
``EncodedEvent`` whose bytes go to the client as they are: :func:`parsed` reads those bytes
back the way a browser does, so a test checks what the client would see.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from django.db import connections
from django.http import HttpRequest
from django.test import RequestFactory

from django_flosse import broadcast
from django_flosse.broadcasting import RESET_EVENT, Subscription, subscribe
from django_flosse.broadcasting.backends import get_backend
from django_flosse.events import EncodedEvent
from django_flosse.observing.registry import Connection, registry
from django_flosse.streaming._clients import attach_to_request
from django_flosse.testing import Event, parse_events

#: How long a test waits for something that should happen at once (a loaded machine).
WAIT = 10.0

#: The memory backend, no connection history (these tests open connections without a
#: database).
MEMORY = {"BROADCAST_BACKEND": "memory", "PERSISTENCE": False}


def use_memory(settings: Any, **extra: Any) -> Any:
    """Set ``FLOSSE`` (pytest-django's ``settings``) to MEMORY plus ``extra``; the backend."""
    settings.FLOSSE = {**MEMORY, **extra}
    return get_backend()


def request(last_id: str | None = None, *, query_id: str | None = None) -> HttpRequest:
    """A GET with a ``Last-Event-ID`` header and/or a ``lastEventId`` query parameter."""
    params = {"lastEventId": query_id} if query_id is not None else {}
    headers = {"HTTP_LAST_EVENT_ID": last_id} if last_id is not None else {}
    return RequestFactory().get("/feed/", params, **headers)


def opened_connection(req: HttpRequest, stream: str = "tests.bc") -> Connection:
    """A connection opened in the registry for ``req``, as ``@sse_stream`` opens one."""
    connection = Connection(id=uuid.uuid4().hex, stream=stream)
    assert registry.open(connection) is None
    attach_to_request(req, connection)
    return connection


def parsed(event: EncodedEvent) -> Event:
    """The one event a browser reads from ``event``'s bytes (which must agree with its
    fields: they are what a view that re-yields it would send)."""
    (one,) = parse_events(event.frame)
    assert (one.event, one.data, one.id) == (event.event or "message", event.data, event.id)
    return one


def datas(events: list[EncodedEvent]) -> list[str]:
    """The data of each event, ``"<reset>"`` for a ``flosse-reset``."""
    return ["<reset>" if e.event == RESET_EVENT else parsed(e).data for e in events]


def wait_for(check: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def joined(backend: Any, *topics: str, count: int = 1) -> None:
    """Wait until ``count`` subscribers of each topic are in the backend's fan-out."""
    for topic in topics:
        wait_for(lambda t=topic: backend.subscribers(t) == count, f"{count} on {topic!r}")


class Reader:
    """Iterates a subscription with ``for`` in a thread of its own, as a sync view's stream
    does (the one subscriber thread of the broadcast tests).

    ``events`` is everything it has yielded so far. A test either takes them in order with
    a deadline (:meth:`take`, :meth:`take_until`) or waits for a count in all
    (:meth:`wait_for`); ``until=N`` ends the iteration after N events (:meth:`result`).
    ``start=False`` leaves starting the thread to the test (:meth:`start`).
    """

    def __init__(
        self, subscription: Subscription, *, until: int | None = None, start: bool = True
    ) -> None:
        self.subscription = subscription
        self.until = until
        self.events: list[EncodedEvent] = []
        self.error: BaseException | None = None
        self._taken = 0
        self._arrived = threading.Condition()
        self.thread = threading.Thread(target=self._run, daemon=True)
        if start:
            self.thread.start()

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        try:
            for event in self.subscription:
                with self._arrived:
                    self.events.append(event)
                    self._arrived.notify_all()
                if self.until is not None and len(self.events) >= self.until:
                    break
        except BaseException as exc:  # the test reads it
            self.error = exc
        finally:
            if self.until is not None:
                self.subscription.close()
            with self._arrived:
                self._arrived.notify_all()  # the end: nobody waits for more

    def wait_for(self, count: int, timeout: float = WAIT) -> list[EncodedEvent]:
        """The first ``count`` events in all (AssertionError if they do not come in time)."""
        with self._arrived:
            self._arrived.wait_for(
                lambda: len(self.events) >= count or not self.thread.is_alive(), timeout
            )
            got = list(self.events)
        if len(got) < count:
            raise AssertionError(
                f"got {datas(got)} of {count} events (error: {self.error!r})"
            ) from self.error
        return got[:count]

    def take(self, count: int, timeout: float = WAIT) -> list[EncodedEvent]:
        """The next ``count`` events (AssertionError if they do not come in time)."""
        start = self._taken
        try:
            got = self.wait_for(start + count, timeout)[start:]
        except AssertionError:
            raise AssertionError(
                f"got {datas(self.events[start:])} of {count} events (error: {self.error!r})"
            ) from None
        self._taken += count
        return got

    def take_until(self, data: str, limit: int = 10_000) -> list[EncodedEvent]:
        """Events up to and including the first whose data is ``data``."""
        got: list[EncodedEvent] = []
        for _ in range(limit):
            got += self.take(1)
            if got[-1].event != RESET_EVENT and got[-1].data == data:
                return got
        raise AssertionError(f"no {data!r} in {limit} events")

    def pending(self) -> int:
        """Events arrived and not taken yet."""
        return len(self.events) - self._taken

    def data(self) -> list[str]:
        return [event.data for event in self.events]

    def result(self) -> list[EncodedEvent]:
        """Every event, once the iteration ended (``until`` reached)."""
        self.thread.join(WAIT)
        assert not self.thread.is_alive(), f"got {len(self.events)} of {self.until} events"
        assert self.error is None, self.error
        return self.events

    def stop(self) -> None:
        """Close the subscription (as its connection's close does) and wait for the thread."""
        self.subscription.close()
        self.thread.join(WAIT)
        assert not self.thread.is_alive(), "the subscriber did not stop"
        assert self.error is None, self.error


def settled_reader(backend: Any, req: HttpRequest, topic: str) -> Reader:
    """A :class:`Reader` of ``subscribe(req, topic)``, once it has joined and read what it
    replays: an event published now is live for it, whatever its id claimed."""
    reader = Reader(subscribe(req, topic))
    subscription = reader.subscription
    deadline = time.monotonic() + WAIT
    while backend.subscribers(topic) < 1 or subscription._catching_up is not None:
        assert reader.error is None and time.monotonic() < deadline, reader.error
        time.sleep(0.002)
    return reader


def fields_of(event: EncodedEvent) -> dict[str, str]:
    """The one event a browser reads from ``event``'s frame, which may have no field but
    one ``id`` (first), at most one ``event``, and ``data`` lines."""
    text = event.frame.decode()
    assert text.endswith("\n\n") and "\n\n" not in text[:-2] and "\r" not in text, text
    names = [line.partition(":")[0] for line in text[:-2].split("\n")]
    assert names[0] == "id" and names.count("id") == 1, names
    assert set(names) <= {"id", "event", "data"} and names.count("event") <= 1, names
    one = parsed(event)
    return {"id": one.id, "event": one.event, "data": one.data}


def resume_while_publishing(topic: str, ids: list[str], total: int) -> None:
    """While a thread broadcasts ``e<len(ids)>`` to ``e<total - 1>`` to ``topic``, two
    subscribers resume from each of ``ids`` (the ids of ``e0``, ``e1``...): each must get
    every event after its id, once, in order (joins racing the reader's deliveries)."""

    def publish() -> None:
        try:
            for i in range(len(ids), total):
                broadcast(topic, f"e{i}")
        finally:
            connections.close_all()  # this thread's own

    publisher = threading.Thread(target=publish)
    publisher.start()
    seen = [k % len(ids) for k in range(2 * len(ids))]  # each client saw up to e<seen>
    resumed = [Reader(subscribe(request(ids[n]), topic)) for n in seen]
    publisher.join(WAIT)
    for n, collector in zip(seen, resumed, strict=True):
        collector.wait_for(total - n - 1)
        collector.stop()
    for n, collector in zip(seen, resumed, strict=True):
        assert datas(collector.events) == [f"e{i}" for i in range(n + 1, total)], n
