"""The send watchdog: ends streams whose client stopped reading (``send_timeout``).

While a client reads, an ASGI server takes each chunk at once. When it stops, the server's
flow control holds the stream inside its ``send`` until the client reads again: nothing of
the stream runs meanwhile, so only a timer can notice. One timer per event loop checks every
watched stream of that loop, rather than one timer per stream: an idle stream (most of them,
most of the time) then holds no timer for this, which is a good part of what an idle
connection costs in memory.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from typing import Protocol

from .. import reasons
from ..observing.registry import Connection

__all__ = ["Sender", "watch_sends"]


class Sender(Protocol):
    """What the watchdog reads of a stream."""

    connection: Connection
    #: ``time.monotonic()`` when the server was handed the chunk it still holds, else None.
    sending_since: float | None


class _LoopWatch:
    """The watched streams of one event loop and the one timer that checks them."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        # The watched streams' tasks, by timeout (a handful of distinct values): a stream is
        # watched for its whole life, and a (task, timeout) tuple each would be 64 bytes.
        self._watched: dict[float, dict[Sender, asyncio.Task[object]]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._period = 0.0

    def __len__(self) -> int:
        """How many streams are watched."""
        return sum(len(senders) for senders in self._watched.values())

    def add(self, sender: Sender, task: asyncio.Task[object], timeout: float) -> None:
        self._watched.setdefault(timeout, {})[sender] = task
        # Check twice per timeout, so a stuck send ends between 1x and 1.5x its timeout.
        if self._timer is None or timeout / 2 < self._period:
            self._arm(timeout / 2)

    def discard(self, sender: Sender) -> None:
        for timeout, senders in self._watched.items():
            if senders.pop(sender, None) is not None:
                if not senders:
                    del self._watched[timeout]
                break
        if not self._watched and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self, period: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._period = period
        self._timer = self._loop.call_later(period, self._check)

    def _check(self) -> None:
        self._timer = None
        now = time.monotonic()
        for timeout, senders in list(self._watched.items()):
            for sender, task in list(senders.items()):
                since = sender.sending_since
                if since is not None and now - since > timeout:
                    # The server has held a chunk too long: the client stopped reading.
                    # Cancelling the send is the only way out of it.
                    self.discard(sender)
                    sender.connection.request_stop(reasons.TIMEOUT)
                    task.cancel()
        if self._watched:
            self._arm(min(self._watched) / 2)


_watches: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopWatch] = (
    weakref.WeakKeyDictionary()
)


def watch_sends(sender: Sender, timeout: float) -> _LoopWatch:
    """Watch ``sender`` (from its own task) until ``discard(sender)`` on the returned watch:
    once it has held a chunk for more than ``timeout`` seconds, its connection is asked to
    stop with reason ``timeout`` and its task is cancelled."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None, "watch_sends() runs in the stream's task"
    watch = _watches.get(loop)
    if watch is None:
        watch = _watches[loop] = _LoopWatch(loop)
    watch.add(sender, task, timeout)
    return watch
