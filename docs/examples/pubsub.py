"""Pub/sub inside one process: one asyncio.Queue per connection, fanned out on publish.

``publish()`` must be called from the event loop that serves the streams (an async view,
or another stream). It is per process: with several workers, feed each process from a
shared broker (Redis pub/sub, PostgreSQL LISTEN/NOTIFY) and fan out from there.
"""

import asyncio
import contextlib

from django_flosse import sse_stream


class Broadcaster:
    def __init__(self, max_backlog=100):
        self._subscribers = set()
        self._max_backlog = max_backlog

    def subscribe(self):
        queue = asyncio.Queue(maxsize=self._max_backlog)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue):
        self._subscribers.discard(queue)

    def publish(self, event, data):
        for queue in self._subscribers:
            # A client that cannot keep up loses messages; it never slows the others.
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait((event, data))

    def __len__(self):
        return len(self._subscribers)


chat = Broadcaster()


@sse_stream
async def chat_feed(request):
    queue = chat.subscribe()
    try:
        while True:
            yield await queue.get()  # an (event, data) tuple
    finally:
        # Runs when the client goes away: Django cancels the stream, CancelledError is
        # raised at `await queue.get()`, and the finally block unsubscribes.
        chat.unsubscribe(queue)
