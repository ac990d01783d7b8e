"""What a broadcast backend does, and the fan-out every backend shares.

A backend stores each published event in its topic's history (an existing engine: the
project's database, Redis Streams, or this process's memory) and hands every new event to
the subscribers of this process. It does so from one place at a time: its reader thread
(database, Redis), which changes the fan-out under a lock that a join needing nothing from
the engine takes on its caller's thread, or under one lock (memory). That is what makes
:meth:`Backend.join` exact: a subscriber joins between two deliveries, so it receives
live every event after the positions ``join`` returns and none before them; what it missed
before (a resume) it reads from the history up to those positions. Nothing is lost and
nothing comes twice, without comparing events.

:class:`Fanout` is the delivery: per event it appends one reference to each subscriber's
bounded queue; per batch it wakes each waiting subscriber once (one call into each event
loop that has subscribers, one ``Event.set`` per thread that waits). No task, lock or timer
per delivered event. A subscriber whose queue is full is dropped from the fan-out and
marked ``overflowed``: it drains its queue, joins again, and reads the gap from the history
(or gets a reset when the history no longer has it).
"""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
import contextlib
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from ...conf import Config
from .._messages import Draft, Message

__all__ = ["Backend", "Fanout", "KeptPages", "Page", "Subscriber", "done", "join_at_once"]

#: Events one history read returns at most.
PAGE_SIZE = 500
#: Seconds a history page stays ready for the next subscriber resuming at its position,
#: after it was last handed out.
KEEP_PAGES_SECONDS = 5.0
#: Bytes of event bodies the kept pages of one process hold at most (with each event's
#: data and its shared frame, made once it is sent, about three times as much memory).
KEEP_PAGES_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class Page:
    """One read of a topic's history after a position."""

    #: The events after the position, in order, at most ``PAGE_SIZE``.
    messages: Sequence[Message]
    #: False when the history no longer holds every event right after the position (trimmed,
    #: or lost by the backend): the subscriber cannot resume from it and gets a reset.
    complete: bool


class KeptPages:
    """History pages read lately, kept for the next subscriber that resumes at the same
    position (thread-safe).

    In a reconnect storm (a deploy, a network blip) clients come back over a second or
    more, with ids at a handful of positions, and a busy server takes many seconds to
    serve them all; a read ends in a millisecond, so reads that merely overlap in time
    would share almost nothing, and each client would cost a query. A page is the events
    right after a position, and the history is append-only in position order, so a page
    stays true: it is handed out again while it reaches the caller's bound (or is a full
    page; the caller reads on). An empty page is not kept: it only says "nothing yet".
    A page goes ``KEEP_PAGES_SECONDS`` after it was last handed out, and the oldest go
    first past ``KEEP_PAGES_BYTES`` of bodies; the backend calls :meth:`expire` from its
    reader's rounds, so an idle process soon holds none.
    """

    def __init__(
        self,
        seconds: float = KEEP_PAGES_SECONDS,
        max_bytes: int = KEEP_PAGES_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.seconds = seconds
        self.max_bytes = max_bytes
        self._clock = clock
        self._lock = threading.Lock()
        # In expiry order: a page handed out again moves to the end.
        self._pages: OrderedDict[tuple[str, Any], tuple[float, int, Page]] = OrderedDict()
        self._bytes = 0

    def get(self, topic: str, after: Any, upto: Any) -> Page | None:
        key = (topic, after)
        with self._lock:
            kept = self._pages.get(key)
            if kept is None:
                return None
            _expires, size, page = kept
            if len(page.messages) < PAGE_SIZE and page.messages[-1].position < upto:
                return None  # newer events than it holds: read again
            self._pages[key] = (self._clock() + self.seconds, size, page)
            self._pages.move_to_end(key)
            return page

    def keep(self, topic: str, after: Any, page: Page) -> None:
        if not page.messages:
            return
        size = sum(len(message.body) for message in page.messages)
        with self._lock:
            old = self._pages.pop((topic, after), None)
            if old is not None:
                self._bytes -= old[1]
            self._pages[topic, after] = (self._clock() + self.seconds, size, page)
            self._bytes += size
            while self._bytes > self.max_bytes:
                self._bytes -= self._pages.popitem(last=False)[1][1]
        self.expire()

    def expire(self) -> None:
        now = self._clock()
        with self._lock:
            while self._pages:
                key, (expires, size, _page) = next(iter(self._pages.items()))
                if expires > now:
                    break
                del self._pages[key]
                self._bytes -= size

    def clear(self) -> None:
        """Forget every page (the backend's history was lost: its positions mean nothing)."""
        with self._lock:
            self._pages.clear()
            self._bytes = 0

    def __len__(self) -> int:
        return len(self._pages)


class Subscriber:
    """One subscription's side of the fan-out: its topics and its queue of messages.

    ``loop`` is the event loop of an async subscriber (``None`` for one that waits in a
    thread). The fan-out appends to ``queue`` and wakes the subscriber; only the
    subscriber pops from it.
    """

    def __init__(
        self, topics: tuple[str, ...], limit: int, loop: asyncio.AbstractEventLoop | None
    ) -> None:
        self.topics = topics
        self.limit = limit
        self.queue: deque[Message] = deque()
        self.overflowed = False
        self.closed = False
        self.loop = loop
        #: Per topic, the position the client has already received up to (from its id, or
        #: what it was sent before it fell behind); ``None``: it starts at the cut. A join
        #: may take its cut at once, on the calling thread, when that cut is at or past it
        #: (see ``DatabaseBackend.join``).
        self.resumes_at: dict[str, Any] | None = None
        #: The future an async subscriber waits on (made on ``loop`` by its iterator; the
        #: fan-out completes it; once done it stays until the next wait replaces it).
        self.waiter: asyncio.Future[None] | None = None
        self.ready = threading.Event() if loop is None else None  # a thread waiting

    def has_news(self) -> bool:
        return bool(self.queue) or self.overflowed or self.closed

    def wait_sync(self, timeout: float) -> None:
        """Until the fan-out hands over something, or ``timeout`` seconds."""
        assert self.ready is not None
        self.ready.clear()
        if not self.has_news():
            self.ready.wait(timeout)

    def close(self) -> None:
        """Stop (from any thread): the fan-out drops it at its next delivery."""
        self.closed = True
        Fanout.wake([self])


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:  # a reader thread, a sync view's thread
        return None


def _set_waiters(subscribers: list[Subscriber]) -> None:
    for subscriber in subscribers:
        waiter = subscriber.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class Fanout:
    """Which subscribers of this process want which topic, and the delivery to them.

    Not thread-safe by itself: a backend calls it from one thread at a time (see the
    module docstring).
    """

    def __init__(self) -> None:
        self._routes: dict[str, dict[Subscriber, None]] = {}

    def add(self, subscriber: Subscriber) -> None:
        # A subscriber closes from any thread: first ``closed``, then the backend's
        # ``leave``. Closed before this add, it is not added; after it, ``leave`` removes
        # it. Either way nothing is left behind when its connection closes mid-join.
        if subscriber.closed:
            return
        subscriber.overflowed = False
        for topic in subscriber.topics:
            self._routes.setdefault(topic, {})[subscriber] = None

    def remove(self, subscriber: Subscriber) -> None:
        for topic in subscriber.topics:
            subscribers = self._routes.get(topic)
            if subscribers is not None:
                subscribers.pop(subscriber, None)
                if not subscribers:
                    del self._routes[topic]

    def topics(self) -> list[str]:
        """The topics some subscriber of this process waits on."""
        return list(self._routes)

    def subscribers(self, topic: str) -> int:
        return len(self._routes.get(topic, ()))

    def deliver(self, messages: Iterable[Message]) -> None:
        """Hand ``messages`` (in order within each topic) to their topics' subscribers."""
        touched: dict[Subscriber, None] = {}
        dropped: list[Subscriber] = []
        routes = self._routes
        for message in messages:
            subscribers = routes.get(message.topic)
            if not subscribers:
                continue
            for subscriber in subscribers:
                queue = subscriber.queue
                if subscriber.overflowed:
                    continue
                if subscriber.closed:
                    dropped.append(subscriber)  # its leave() may not have come yet
                    continue
                if len(queue) >= subscriber.limit:
                    # From here it reads the history instead (once it has drained its queue).
                    subscriber.overflowed = True
                    dropped.append(subscriber)
                else:
                    queue.append(message)
                touched[subscriber] = None
        for subscriber in dropped:
            self.remove(subscriber)
        self.wake(touched)

    def sweep(self) -> None:
        """Forget subscribers that closed (those of quiet topics are never delivered to)."""
        closed = {s for subs in self._routes.values() for s in subs if s.closed}
        for subscriber in closed:
            self.remove(subscriber)

    @staticmethod
    def wake(subscribers: Iterable[Subscriber]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[Subscriber]] = {}
        for subscriber in subscribers:
            if subscriber.loop is not None:
                by_loop.setdefault(subscriber.loop, []).append(subscriber)
            elif subscriber.ready is not None:
                subscriber.ready.set()
        running = _running_loop()
        for loop, batch in by_loop.items():
            if loop is running:
                # Published on the subscribers' own loop (abroadcast in a view, the memory
                # backend): complete their futures now rather than a loop turn later.
                _set_waiters(batch)
                continue
            # A closed loop: its subscribers are gone, nobody waits.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_set_waiters, batch)


def done(value: Any) -> concurrent.futures.Future[Any]:
    """A future that already has ``value`` (for backends that answer at once)."""
    future: concurrent.futures.Future[Any] = concurrent.futures.Future()
    future.set_result(value)
    return future


def join_at_once(
    lock: threading.Lock,
    fanout: Fanout,
    members: dict[Subscriber, None],
    positions: dict[str, Any],
    subscriber: Subscriber,
    can_join: Callable[[], bool],
) -> dict[str, Any] | None:
    """Add ``subscriber`` to ``fanout`` (and ``members``) on the calling thread and return
    its cut, if ``can_join()`` says that ``positions`` give it without asking the engine;
    ``None`` otherwise (the backend's thread serves the join then).

    ``lock`` is the one the backend's reader holds while it delivers and moves
    ``positions``: the cut is exact. It is only tried: while the reader holds it, the join
    goes to the reader instead of stalling the caller's event loop.
    """
    if not lock.acquire(blocking=False):
        return None
    try:
        if not can_join():
            return None
        fanout.add(subscriber)
        members[subscriber] = None
        return {topic: positions[topic] for topic in subscriber.topics}
    finally:
        lock.release()


class Backend(abc.ABC):
    """A broadcast backend. One instance per process, made from the settings.

    Positions are the backend's own values, ordered within a topic; ``zero`` is the
    position before a topic's first event. Methods that may wait on the engine return a
    :class:`concurrent.futures.Future`, so that async and sync subscribers can both wait.
    """

    #: The name in ``FLOSSE["BROADCAST_BACKEND"]``.
    name: ClassVar[str]
    zero: ClassVar[Any]
    #: True when every process of the deployment sees every event (not ``memory``).
    shared: ClassVar[bool] = True

    def __init__(self, config: Config) -> None:
        self.config = config

    @property
    @abc.abstractmethod
    def tag(self) -> str:
        """The first part of every id: the backend, and the life of its history."""

    def known_tag(self) -> str | None:
        """:attr:`tag` if it is known without asking the engine, else ``None`` (the join,
        which may wait for the engine, learns it)."""
        return self.tag

    @abc.abstractmethod
    def format_position(self, position: Any) -> str:
        """``position`` as id text (letters, digits and ``-`` only)."""

    @abc.abstractmethod
    def parse_position(self, text: str) -> Any:
        """The position ``text`` names, or ``None`` if it cannot be one."""

    @abc.abstractmethod
    def publish(self, drafts: Sequence[Draft], *, independent: bool = False) -> None:
        """Store ``drafts`` in order and make them reach every subscriber; raise if that
        cannot be done (nothing of a failed call is published). ``independent``: the
        caller is inside a transaction that must not include this publish."""

    async def apublish(self, drafts: Sequence[Draft]) -> None:
        """:meth:`publish` from async code (by default in a worker thread)."""
        from asgiref.sync import sync_to_async

        await sync_to_async(self.publish, thread_sensitive=False)(drafts, independent=True)

    @abc.abstractmethod
    def join(self, subscriber: Subscriber) -> concurrent.futures.Future[dict[str, Any]]:
        """Start delivering to ``subscriber`` every event after the positions returned
        (one per topic: the last event delivered before it joined, or ``zero``)."""

    @abc.abstractmethod
    def leave(self, subscriber: Subscriber) -> None:
        """Stop delivering to ``subscriber`` (it may also just be closed: see Fanout.sweep)."""

    @abc.abstractmethod
    def read(self, topic: str, after: Any, upto: Any) -> concurrent.futures.Future[Page]:
        """The history of ``topic`` after ``after`` (at most ``PAGE_SIZE`` events; those
        past ``upto`` may be left out). Reads of the same topic and position that overlap
        in time should share one query."""

    def topic_activity(
        self, topics: Sequence[str], since: float
    ) -> dict[str, tuple[int, float | None]] | None:
        """Optional, for the admin dashboard: per topic of ``topics`` that this backend
        has, the events published at or after ``since`` (epoch seconds; counted in the
        history, so at most what it keeps) and when the last one was (``None`` if none is
        kept). ``None`` (the default): the backend cannot tell cheaply. It must stay cheap:
        it is called every few seconds while a dashboard is open."""
        return None

    def close(self) -> None:  # noqa: B027 (optional)
        """Stop the backend's threads and connections (tests, settings changes)."""
