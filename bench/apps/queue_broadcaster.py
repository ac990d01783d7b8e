"""The broadcaster users write by hand today: one ``asyncio.Queue`` per subscriber.

``publish`` puts the event's data into every subscriber's queue; each subscriber's
generator takes it out and formats it itself (as the views in ``fan_django.py`` and
``fan_starlette.py`` do). The queues are unbounded: nothing is dropped, a slow subscriber
only costs memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from fan_common import IDLE_SECONDS


class Broadcaster:
    def __init__(self) -> None:
        self.queues: set[asyncio.Queue[dict[str, Any]]] = set()

    async def publish(self, data: dict[str, Any]) -> None:
        for queue in self.queues:
            queue.put_nowait(data)

    async def listen(self) -> AsyncIterator[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.queues.add(queue)
        try:
            while True:
                yield await asyncio.wait_for(queue.get(), IDLE_SECONDS)
        except asyncio.TimeoutError:
            return
        finally:
            self.queues.discard(queue)


broadcaster = Broadcaster()
