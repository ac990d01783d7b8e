"""The deadlines of every waiting stream of one event loop, on one timer.

Why: an idle stream waits for its next item with a deadline (its heartbeat, or releasing
its database connections). A timer per wait (``loop.call_later``) is kept for as long as the
stream is idle, which is most of its life: with uvloop a timer handle costs about 460 bytes,
a copy of the context included. Here a deadline is one small list in a heap that the loop's
streams share, under one timer armed for the earliest deadline. A wait that ends early (its
item came) only marks its entry; the heap drops marked entries when they come first, or
all at once when they outnumber the live ones, so a broadcast that wakes thousands of idle
streams per event does not grow it.

Everything here runs on the loop's own thread: no lock.
"""

from __future__ import annotations

import asyncio
import contextvars
import heapq
import weakref
from typing import Any

__all__ = ["Alarm", "LoopAlarms", "alarms_of"]

#: A deadline this close is due: the loop may run a timer a clock tick early.
EARLY_SECONDS = 0.001
#: Marked entries are dropped all at once when there are more than this many, and more
#: than live ones.
COMPACT_AFTER = 64

#: ``[when (loop.time()), sequence, waiter or None once cancelled or fired]``.
Alarm = list[Any]


class LoopAlarms:
    """The alarms of one event loop (see the module docstring)."""

    __slots__ = ("_at", "_heap", "_marked", "_seq", "_timer", "context")

    def __init__(self) -> None:
        self._heap: list[Alarm] = []
        self._seq = 0
        self._marked = 0  # entries in the heap whose waiter is gone
        self._timer: asyncio.TimerHandle | None = None
        self._at = 0.0  # when the timer fires
        #: The context callbacks that only complete a future run in: one for the loop
        #: instead of a copy of the current context per callback (copied at each
        #: ``add_done_callback`` and ``call_later`` otherwise).
        self.context = contextvars.Context()

    def __len__(self) -> int:
        """Live alarms."""
        return len(self._heap) - self._marked

    def add(
        self, loop: asyncio.AbstractEventLoop, delay: float, waiter: asyncio.Future[None]
    ) -> Alarm:
        """Complete ``waiter`` (if it is still pending) in ``delay`` seconds."""
        self._seq += 1
        alarm: Alarm = [loop.time() + delay, self._seq, waiter]
        heapq.heappush(self._heap, alarm)
        if self._timer is None or alarm[0] < self._at:
            self._arm(loop, alarm[0])
        return alarm

    def cancel(self, alarm: Alarm) -> None:
        if alarm[2] is None:  # it fired already
            return
        alarm[2] = None
        self._marked += 1
        if self._marked > COMPACT_AFTER and self._marked * 2 > len(self._heap):
            self._heap = [a for a in self._heap if a[2] is not None]
            heapq.heapify(self._heap)
            self._marked = 0
        if len(self) == 0:  # nothing left to wake: no timer either
            self._heap.clear()
            self._marked = 0
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._at = when
        self._timer = loop.call_at(when, self._fire, loop, context=self.context)

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        heap = self._heap
        due = loop.time() + EARLY_SECONDS
        while heap and (heap[0][2] is None or heap[0][0] <= due):
            alarm = heapq.heappop(heap)
            waiter = alarm[2]
            if waiter is None:
                self._marked -= 1
                continue
            alarm[2] = None
            if not waiter.done():
                waiter.set_result(None)
        if heap:
            self._arm(loop, heap[0][0])


_by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopAlarms] = (
    weakref.WeakKeyDictionary()
)


def alarms_of(loop: asyncio.AbstractEventLoop) -> LoopAlarms:
    """The alarms of ``loop`` (made on first use; they go with the loop)."""
    alarms = _by_loop.get(loop)
    if alarms is None:
        alarms = _by_loop[loop] = LoopAlarms()
    return alarms
