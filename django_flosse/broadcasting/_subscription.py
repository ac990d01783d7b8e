"""``subscribe(request, *topics)``: the broadcast events of some topics, live and resumed.

A :class:`Subscription` is an async iterator (``async for`` in an ``async def`` view) and a
sync one (``for`` in a ``def`` view): both run the same steps, :meth:`Subscription._step`,
and differ only in how they wait.

The steps, for a new subscription or one that fell behind:

1. **Join** the backend's fan-out. From then on every new event of its topics is queued
   for it; ``join`` says the position of each topic at that instant (the cut).
2. **Replay** what the client missed: from the position its ``Last-Event-ID`` (or the
   ``lastEventId`` query parameter) names up to the cut, read from the history. The first
   page of every topic is read before anything is sent, so an id the history cannot place
   (malformed, made up, another subscription's, too old) gives one ``flosse-reset`` event
   and then only what comes after the cut. A client without an id starts at the cut.
3. **Live**: the queued events, each once (anything at or before the last position sent
   is skipped).

A subscriber whose queue reaches ``BROADCAST_BUFFER`` events is dropped by the fan-out; it
sends what it has queued, then joins again and replays the gap from the history (or resets
when the history no longer covers it): a slow client costs its own catch-up, never the
publisher's time or the other subscribers'.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections import deque
from collections.abc import AsyncIterator, Generator, Iterator
from typing import Any

from django.http import HttpRequest

from ..conf import get_config
from ..events import EncodedEvent
from ..observing.log import BROADCAST_RESET, get_logger
from ..observing.registry import MAX_PENDING_LAGS, Connection
from ..streaming._clients import connection_of, last_event_id
from ._ids import MAX_ID_LENGTH, IdFormat
from ._messages import MAX_TOPICS, Message, check_topic, reset_event
from .backends import get_backend
from .backends.base import Backend, Subscriber

__all__ = ["Subscription", "subscribe"]

#: Seconds a sync subscriber waits before it looks again whether its stream has ended.
SYNC_WAIT_SECONDS = 1.0

_WAIT = object()  # _step: nothing to send until the fan-out delivers
_END = object()  # _step: the subscription is closed
_NOTHING = object()


def subscribe(request: HttpRequest, *topics: str) -> Subscription:
    """The broadcast events of ``topics`` for the stream of ``request``.

    The view decides the topics (a client never picks them itself). Use it with
    ``async for`` in an ``async def`` view and with ``for`` in a ``def`` view, and yield each
    event: its id is what the client sends back to resume exactly where it was.
    """
    return Subscription(request, topics)


class Subscription:
    """See the module docstring."""

    def __init__(self, request: HttpRequest, topics: tuple[str, ...]) -> None:
        if not topics:
            raise ValueError("subscribe() needs at least one topic")
        for topic in topics:
            check_topic(topic)
        names = tuple(sorted(set(topics)))
        if len(names) > MAX_TOPICS:
            raise ValueError(f"one subscription may name at most {MAX_TOPICS} topics")
        self.topics = names
        self._backend: Backend = get_backend()
        tag = self._backend.known_tag()
        self._ids: IdFormat | None = None if tag is None else self._id_format(tag)
        self._limit = get_config().broadcast_buffer
        self._last_id = last_event_id(request)[: MAX_ID_LENGTH + 1]
        self._connection: Connection | None = connection_of(request)
        if self._connection is not None:
            self._connection.topics = names
            self._connection.on_close.append(self.close)
        self._subscriber: Subscriber | None = None
        self._positions: dict[str, Any] | None = None  # the last position sent, per topic
        self._ready: deque[EncodedEvent] = deque()  # replayed events and resets to send
        self._catching_up: Generator[Any, Any, None] | None = None
        self._joined = False
        self._closed = False
        self._single = len(names) == 1

    # -- the two ways to iterate -----------------------------------------------------
    def __aiter__(self) -> AsyncIterator[EncodedEvent]:
        return self._async_events()

    async def _async_events(self) -> AsyncIterator[EncodedEvent]:
        self._start(asyncio.get_running_loop())
        subscriber = self._subscriber
        assert subscriber is not None and subscriber.loop is not None
        queue, create_future = subscriber.queue, subscriber.loop.create_future
        try:
            reply: Any = _NOTHING
            while True:
                action = self._step(reply)
                reply = _NOTHING
                if action is _WAIT:
                    # The future the fan-out completes, awaited here rather than in a
                    # coroutine of its own: an idle subscriber holds one object less, and
                    # every event creates one coroutine less per subscriber.
                    waiter = subscriber.waiter = create_future()
                    if not subscriber.has_news():  # another thread may have closed it
                        await waiter
                elif action is _END:
                    return
                elif isinstance(action, concurrent.futures.Future):
                    # Answered already (the memory backend's are): no trip through the loop.
                    done = action.done()
                    reply = action.result() if done else await asyncio.wrap_future(action)
                else:
                    yield action
                    # The rest of what the fan-out queued, taken as _step takes it, without
                    # its other checks per event: one fan-out batch is hundreds of events.
                    while (
                        queue
                        and not (self._ready or subscriber.closed)
                        and (self._catching_up is None)
                    ):
                        event = self._live(queue.popleft())
                        if event is not None:
                            yield event
        finally:
            self.close()

    def __iter__(self) -> Iterator[EncodedEvent]:
        self._start(None)
        try:
            reply: Any = _NOTHING
            while True:
                action = self._step(reply)
                reply = _NOTHING
                if action is _WAIT:
                    assert self._subscriber is not None
                    self._subscriber.wait_sync(SYNC_WAIT_SECONDS)
                elif action is _END:
                    return
                elif isinstance(action, concurrent.futures.Future):
                    reply = action.result()
                else:
                    yield action
        finally:
            self.close()

    def close(self) -> None:
        """Stop: leave the fan-out (called when the stream's connection closes)."""
        if self._closed:
            return
        self._closed = True
        subscriber = self._subscriber
        if subscriber is not None:
            subscriber.close()
            self._backend.leave(subscriber)

    def _start(self, loop: asyncio.AbstractEventLoop | None) -> None:
        if self._subscriber is not None:
            raise RuntimeError("a subscription can be iterated once; call subscribe() again")
        self._subscriber = Subscriber(self.topics, self._limit, loop)
        if self._closed:
            self._subscriber.closed = True

    # -- the steps ---------------------------------------------------------------------
    def _step(self, reply: Any) -> Any:
        """Advance without blocking: an event to send, a future to wait for (its result
        is the next call's ``reply``), ``_WAIT`` for the fan-out, or ``_END``."""
        subscriber = self._subscriber
        assert subscriber is not None
        while True:
            if reply is not _NOTHING:
                action, reply = self._catch_up_step(reply), _NOTHING
                if action is not None:
                    return action
                continue
            if self._ready:
                return self._ready.popleft()
            if self._catching_up is not None:
                action = self._catch_up_step(None)
                if action is not None:
                    return action
                continue
            if subscriber.closed:
                return _END
            queue = subscriber.queue
            if queue:
                event = self._live(queue.popleft())
                if event is not None:
                    return event
                continue
            if not self._joined or subscriber.overflowed:
                self._joined = True
                self._catching_up = self._join_and_replay()
                continue
            return _WAIT

    def _catch_up_step(self, reply: Any) -> Any:
        assert self._catching_up is not None
        if self._subscriber is not None and self._subscriber.closed:
            # Closed while it waited for the backend (the engine lost its data, say):
            # nothing it would queue now may reach the client, a reset of a past life least.
            self._catching_up.close()
            self._catching_up = None
            return _END
        try:
            return self._catching_up.send(reply)
        except StopIteration:
            self._catching_up = None
            return None

    def _join_and_replay(self) -> Generator[Any, Any, None]:
        """Join the fan-out, then queue what must be replayed (see the module docstring).
        Yields futures (answered with their results) and ``None`` to let ready events go."""
        backend, subscriber = self._backend, self._subscriber
        assert subscriber is not None
        ids = self._ids
        if self._positions is not None:  # joined again after falling behind
            start: dict[str, Any] | None = self._positions
        elif ids is not None and self._last_id:  # where does the client stand?
            start = ids.parse(self._last_id)
        else:  # no id (at the cut), or no tag to read it with before the join
            start = None
        # Said to the join: it can then take its cut at once when that is not behind it.
        subscriber.resumes_at = dict(start) if start is not None else None
        cut: dict[str, Any] = yield backend.join(subscriber)
        if ids is None:  # the join learned the tag (it waited for the engine)
            ids = self._ids = self._id_format(backend.tag)
            start = ids.parse(self._last_id) if self._last_id else None
        elif backend.tag != ids.tag:
            # The engine lost its data (Redis restarted empty) after this subscription read
            # the client's id: the id's positions belong to the past life, and every id
            # from now on must name the new one (an id of the past life would get the
            # client a second reset when it comes back).
            self._ids = self._id_format(backend.tag)
            if start is not None:
                self._reset(cut, "the backend lost its history")
                return
        if start is None:
            if self._last_id:  # an id the history cannot place
                self._reset(cut, "unknown id")
            else:
                self._positions = dict(cut)
            return
        ahead = [topic for topic in self.topics if start[topic] > cut[topic]]
        if ahead:
            # Another process may have sent events this one's reader has not delivered yet
            # (it is a moment behind): the id is real if the history holds its position.
            # The events up to it then arrive live and are skipped as sent already.
            checks = {topic: backend.read(topic, cut[topic], start[topic]) for topic in ahead}
            for topic, future in checks.items():
                page = yield future
                if not any(message.position == start[topic] for message in page.messages):
                    self._reset(cut, "id ahead of the history")
                    return
        self._positions = dict(start)
        behind = [topic for topic in self.topics if start[topic] < cut[topic]]
        reads = {topic: backend.read(topic, start[topic], cut[topic]) for topic in behind}
        pages = {}
        for topic, future in reads.items():
            pages[topic] = yield future
        if not all(page.complete for page in pages.values()):
            self._reset(cut, "history no longer covers the id")
            return
        for topic in behind:
            page = pages[topic]
            while True:
                for message in page.messages:
                    if message.position > cut[topic]:
                        break
                    if message.position > self._positions[topic]:
                        self._ready.append(self._replayed(message))
                if self._positions[topic] >= cut[topic] or not page.messages:
                    break
                yield None  # send what is ready before reading the next page
                page = yield backend.read(topic, self._positions[topic], cut[topic])
                if not page.complete:
                    self._reset(cut, "history trimmed during the replay")
                    return

    # -- making events -----------------------------------------------------------------
    def _id_format(self, tag: str) -> IdFormat:
        backend = self._backend
        return IdFormat(tag, self.topics, backend.format_position, backend.parse_position)

    def _event(self, message: Message) -> EncodedEvent:
        positions, ids = self._positions, self._ids
        assert positions is not None and ids is not None  # joined
        positions[message.topic] = message.position
        if self._single:
            shared = message.shared
            if shared is None or not shared.id.startswith(ids.prefix):  # type: ignore[union-attr]
                shared = message.shared = message.event_with_id(ids.format(positions))
            return shared
        return message.event_with_id(ids.format(positions))

    def _live(self, message: Message) -> EncodedEvent | None:
        positions = self._positions
        assert positions is not None
        if message.position <= positions[message.topic]:
            return None  # sent already (a replay reached it)
        event = self._event(message)
        connection = self._connection
        if connection is not None:
            connection.broadcast_delivered += 1
            lags = connection.broadcast_lags
            if len(lags) < MAX_PENDING_LAGS:
                lags.append(time.time() - message.published_at)
        return event

    def _replayed(self, message: Message) -> EncodedEvent:
        event = self._event(message)
        connection = self._connection
        if connection is not None:
            connection.broadcast_delivered += 1
            connection.broadcast_replayed += 1
        return event

    def _reset(self, cut: dict[str, Any], why: str) -> None:
        self._positions = dict(cut)
        assert self._ids is not None  # joined
        self._ready.append(reset_event(self.topics, self._ids.format(cut)))
        connection = self._connection
        if connection is not None:
            connection.broadcast_resets += 1
        get_logger().info(
            BROADCAST_RESET,
            stream=connection.stream if connection is not None else None,
            connection_id=connection.id if connection is not None else None,
            topics=list(self.topics),
            why=why,
        )
