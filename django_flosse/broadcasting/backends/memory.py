"""The ``memory`` backend: this process only (tests, single-process apps).

History and delivery live in this process, under one lock taken per publish and per join
(never per delivered event). Another process never sees these events: a project that
streams from several processes must use ``database`` or ``redis``; the log and the admin
dashboard warn when streams of more than one process are open with this backend.
"""

from __future__ import annotations

import concurrent.futures
import secrets
import threading
from collections import deque
from collections.abc import Sequence
from typing import Any

from ...conf import Config
from .._messages import Draft, Message
from .base import PAGE_SIZE, Backend, Fanout, Page, Subscriber, done

__all__ = ["MemoryBackend"]


#: Seconds between two trims of every topic's history (publishes trim their own topics).
SWEEP_SECONDS = 60.0


class _Topic:
    __slots__ = ("head", "history")

    def __init__(self, keep: int) -> None:
        self.head = 0
        self.history: deque[Message] = deque(maxlen=keep)


class MemoryBackend(Backend):
    name = "memory"
    zero = 0
    shared = False

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self._lock = threading.Lock()
        self._topics: dict[str, _Topic] = {}
        self._fanout = Fanout()
        self._swept_at = 0.0
        # Ids of another process (or of this one before a restart) cannot be placed here.
        self._tag = "m" + secrets.token_hex(3)

    @property
    def tag(self) -> str:
        return self._tag

    def format_position(self, position: Any) -> str:
        return str(position)

    def parse_position(self, text: str) -> Any:
        # isdigit() alone takes "²" (int() refuses it) and Arabic-Indic digits (int() reads them).
        return int(text) if text.isascii() and text.isdigit() and len(text) <= 18 else None

    def publish(self, drafts: Sequence[Draft], *, independent: bool = False) -> None:
        keep = self.config.broadcast_history
        with self._lock:
            messages = []
            for draft in drafts:
                topic = self._topics.get(draft.topic)
                if topic is None:
                    topic = self._topics[draft.topic] = _Topic(keep)
                topic.head += 1
                message = Message.of(draft, topic.head)
                topic.history.append(message)
                messages.append(message)
            if messages:
                self._trim(messages[-1].published_at, {draft.topic for draft in drafts})
            self._fanout.deliver(messages)

    async def apublish(self, drafts: Sequence[Draft]) -> None:
        self.publish(drafts)  # no I/O: a lock held for microseconds

    def _trim(self, now: float, published: set[str]) -> None:
        """Drop events older than the history's age: those of the topics just published,
        and once a minute those of every topic, forgetting topics left empty that nobody
        subscribes to (per-user topics would otherwise pile up)."""
        oldest = now - self.config.broadcast_history_seconds
        sweep = now - self._swept_at >= SWEEP_SECONDS
        names = list(self._topics) if sweep else published
        for name in names:
            history = self._topics[name].history
            while history and history[0].published_at < oldest:
                history.popleft()
            if sweep and not history and not self._fanout.subscribers(name):
                del self._topics[name]
        if sweep:
            self._swept_at = now

    def join(self, subscriber: Subscriber) -> concurrent.futures.Future[dict[str, Any]]:
        with self._lock:
            self._fanout.add(subscriber)
            heads = {}
            for name in subscriber.topics:
                topic = self._topics.get(name)
                heads[name] = topic.head if topic is not None else 0
            return done(heads)

    def leave(self, subscriber: Subscriber) -> None:
        with self._lock:
            self._fanout.remove(subscriber)

    def read(self, topic: str, after: Any, upto: Any) -> concurrent.futures.Future[Page]:
        with self._lock:
            known = self._topics.get(topic)
            if known is None:
                return done(Page((), complete=after == 0))
            history = known.history
            first = history[0].position if history else known.head + 1
            # Complete when the event right after ``after`` is still here (or none exists).
            complete = after >= known.head or first <= after + 1
            start = max(0, after + 1 - first)
            messages = [history[i] for i in range(start, min(len(history), start + PAGE_SIZE))]
            return done(Page(messages, complete))

    def topic_activity(
        self, topics: Sequence[str], since: float
    ) -> dict[str, tuple[int, float | None]] | None:
        result: dict[str, tuple[int, float | None]] = {}
        with self._lock:  # at most BROADCAST_HISTORY steps per topic, newest first
            for name in topics:
                topic = self._topics.get(name)
                if topic is None:
                    continue
                history = topic.history
                count = 0
                for message in reversed(history):
                    if message.published_at < since:
                        break
                    count += 1
                result[name] = (count, history[-1].published_at if history else None)
        return result

    def subscribers(self, topic: str) -> int:
        with self._lock:
            return self._fanout.subscribers(topic)
