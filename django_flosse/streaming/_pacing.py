"""How a stream waits and shares its event loop: the helpers of the lifecycle's hot loop.

Kept apart so that ``_lifecycle.py`` reads as the life of one connection. Nothing here
allocates per event: waiting is one future and one alarm entry per wait, sharing is a few
``asyncio.sleep(0)`` turns per chunk at most.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ._alarms import Alarm, LoopAlarms, alarms_of

__all__ = ["MIN_CHUNK_BYTES", "SHARE_FACTOR", "SHARE_LOOP_SECONDS", "SHARE_MIN_CHUNKS",
           "Waiter", "arm_first_of", "cancel_requested", "disarm_first_of", "first_of", "set_done",
           "yield_to_loop"]  # fmt: skip

#: The chunk cap while the event loop has other work (see ``_yield_to_loop``).
MIN_CHUNK_BYTES = 1024
#: A turn of the loop that takes longer than this means other connections had work.
BUSY_TURN_SECONDS = 0.0001
#: How long a flooding stream shares the loop after a turn that showed other work.
SHARE_LOOP_SECONDS = 0.02
#: At most this many extra turns per chunk while sharing (see ``_yield_to_loop``).
SHARE_TURNS = 8
#: A flooding stream shares the loop for at least this many chunks after a turn that showed
#: other work or a chunk that took ``SHARE_LOOP_SECONDS`` to make: a process paused by the
#: host while it made a chunk has not seen the loop quiet for that long.
SHARE_MIN_CHUNKS = 4
#: While sharing, others get this many times as long as the stream's chunk took: the stream
#: takes at most a third of the loop. (At 1, half: a new request's first event took about
#: 2.1x its idle time during a flood; at 2, about 1.7x.)
SHARE_FACTOR = 2


def set_done(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class Waiter(asyncio.Future[None]):
    """What a wait awaits, and the callback that ends it (``fut.add_done_callback(waiter)``;
    a call once it is done does nothing). Being its own callback spares a
    ``functools.partial`` per wait: 200 bytes fewer kept by each idle stream."""

    __slots__ = ()

    def __call__(self, _done: object = None) -> None:
        if not self.done():
            self.set_result(None)


async def first_of(
    fut: asyncio.Future[Any],
    stop: asyncio.Future[None],
    timeout: float | None,
    alarms: LoopAlarms | None = None,
) -> None:
    """Wait until ``fut`` or ``stop`` is done, or ``timeout`` seconds passed.

    ``asyncio.wait(..., return_when=FIRST_COMPLETED)`` does the same, and like it this never
    cancels either future (``fut`` is what the producer awaits). But an idle stream spends
    its life here, so it holds as little as it can: one future, one callback, and its
    timeout as an entry of the loop's shared alarms (``alarms``: the running loop's, which
    a caller that waits often looks up once). The stream awaits in its own frame instead,
    without this coroutine's (:func:`arm_first_of`, then :func:`disarm_first_of`), and has
    no ``stop`` future: the hook that asks it to stop completes its wait.
    """
    if alarms is None:
        alarms = alarms_of(asyncio.get_running_loop())
    waiter, alarm = arm_first_of(fut, timeout, alarms)
    stop.add_done_callback(waiter, context=alarms.context)
    try:
        await waiter
    finally:
        stop.remove_done_callback(waiter)
        disarm_first_of(fut, waiter, alarm, alarms)


def arm_first_of(
    fut: asyncio.Future[Any],
    timeout: float | None,
    alarms: LoopAlarms | None = None,
) -> tuple[Waiter, Alarm | None]:
    """A future to await, done once ``fut`` is or ``timeout`` seconds passed (complete it
    to end the wait early: :func:`first_of` does on ``stop``), with what
    :func:`disarm_first_of` needs once it is done or the await was cancelled."""
    loop = asyncio.get_running_loop()
    if alarms is None:
        alarms = alarms_of(loop)
    waiter = Waiter(loop=loop)
    fut.add_done_callback(waiter, context=alarms.context)
    alarm = None if timeout is None else alarms.add(loop, timeout, waiter)
    return waiter, alarm


def disarm_first_of(
    fut: asyncio.Future[Any],
    waiter: Waiter,
    alarm: Alarm | None,
    alarms: LoopAlarms | None = None,
) -> None:
    """Undo :func:`arm_first_of`: ``fut`` keeps no callback, no alarm is left."""
    fut.remove_done_callback(waiter)
    if alarm is not None:
        (alarms or alarms_of(asyncio.get_running_loop())).cancel(alarm)


async def yield_to_loop(busy_at: float, took: float) -> float:
    """Give the event loop a turn after a chunk that ``took`` seconds to make and send;
    return when a turn last showed other work.

    A producer that always has events ready would otherwise keep the loop for itself:
    servers' ``send`` does not suspend while the socket takes the data. One turn per chunk
    lets others run. A turn that took long shows that others had work: a new request, say,
    which needs dozens of turns (its middleware, each hop to its thread) to send its first
    event. For ``SHARE_LOOP_SECONDS`` after such a turn the stream shares the loop: it
    yields turns until others have had ``SHARE_FACTOR`` times as long as its chunk took (at
    most ``SHARE_TURNS``), so it takes at most about a third of the loop's time, and the
    caller keeps chunks small. Alone on the loop it yields one turn and chunks are full size,
    which is where throughput is. Among many streams that all flood, one turn already
    gives the others far more time than a chunk takes: no extra turns there.
    """
    start = now = time.monotonic()
    for turn in range(SHARE_TURNS + 1):
        if turn and (now - busy_at >= SHARE_LOOP_SECONDS or now - start >= SHARE_FACTOR * took):
            break
        before = now
        await asyncio.sleep(0)
        now = time.monotonic()
        if now - before > BUSY_TURN_SECONDS:
            busy_at = now
    return busy_at


def cancel_requested() -> bool:
    """Is the current task being cancelled (rather than a producer's own timeout firing)?"""
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    # Python 3.10 has no Task.cancelling() and no asyncio.timeout(): any cancel is real.
    return cancelling is None or cancelling() > 0
