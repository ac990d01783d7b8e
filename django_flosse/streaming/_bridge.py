"""Bridges between the view's kind of generator and the server's kind of iteration.

Django alone buffers the two mismatched cases whole (``StreamingHttpResponse`` runs
``sync_to_async(list)`` or ``async_to_sync`` over the entire iterator), so an endless
stream never sends a byte. These bridges step one item at a time instead:

* :class:`ThreadedSource` runs a sync generator in one dedicated thread (all its steps on
  the same thread, so its database connection stays its own) and hands encoded frames to
  the event loop through a small bounded buffer: the generator runs at most a few items
  ahead of the client.
* :func:`iterate_on_private_loop` drives an async iterator from a sync caller (a WSGI
  server thread) one chunk at a time on an event loop owned by that connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import sys
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from typing import Any

from ._db import IDLE_STEP_SECONDS, LentDatabases
from ._workers import run_in_worker

__all__ = ["ThreadedSource", "iterate_on_private_loop"]


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class ThreadedSource:
    """An async iterator of encoded frames produced by a sync iterator in its own thread."""

    def __init__(
        self,
        iterator: Iterator[Any],
        encode: Callable[[Any], bytes],
        ahead: int,
        *,
        lend_databases: bool = False,
    ) -> None:
        """``lend_databases``: run the iterator on the database connections of the thread
        that creates this source (the view's)."""
        self._databases = LentDatabases() if lend_databases else None
        self._iterator = iterator
        self._encode = encode
        self._ahead = ahead
        self._buffer: deque[bytes] = deque()
        self._cond = threading.Condition(threading.Lock())  # this connection's only
        self._end: BaseException | None = None  # set by the thread when it stops
        self._closed = False  # set by the consumer: stop after the current item
        self._producer_waits = False  # the producer waits for room in the buffer
        self._waiter: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        #: Set once the generator is closed and its thread has let go of it.
        self.finished = threading.Event()

    def __aiter__(self) -> ThreadedSource:
        return self

    async def __anext__(self) -> bytes:
        while True:
            with self._cond:
                if self._buffer:
                    frame = self._buffer.popleft()
                    if self._producer_waits:  # for room: wake it (notify costs, even idle)
                        self._cond.notify()
                    return frame
                if self._end is not None:
                    raise self._end
                if self.thread is None:
                    self._start()
                waiter = self._waiter = asyncio.get_running_loop().create_future()
            await waiter

    def _start(self) -> None:
        self._loop = asyncio.get_running_loop()
        context = contextvars.copy_context()  # structlog's bound values follow the view
        self.thread = run_in_worker(functools.partial(context.run, self._produce))

    def _produce(self) -> None:
        end: BaseException = StopAsyncIteration()
        if self._databases is not None:
            self._databases.borrow()
        try:
            databases = self._databases
            if databases is not None:
                databases.release()  # the view is done with them (see _db.py)
            started = time.monotonic()
            for item in self._iterator:
                if databases is not None and time.monotonic() - started >= IDLE_STEP_SECONDS:
                    databases.release()  # a poll loop: do not hold them while it sleeps
                frame = self._encode(item)
                with self._cond:
                    while len(self._buffer) >= self._ahead and not self._closed:
                        self._producer_waits = True
                        self._cond.wait()
                    self._producer_waits = False
                    if self._closed:
                        break
                    self._buffer.append(frame)
                    self._notify_consumer()
                started = time.monotonic()
        except BaseException as exc:  # handed to the consumer, which logs it as the stream's error
            end = exc
        finally:
            close = getattr(self._iterator, "close", None)
            try:
                if close is not None:
                    close()  # GeneratorExit at the generator's yield, in its own thread
            finally:
                if self._databases is not None:
                    self._databases.give_back()
                with self._cond:
                    self._end = end
                    self._notify_consumer()
                self.finished.set()

    def _notify_consumer(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and self._loop is not None and not self._closed:
            # A closed loop raises RuntimeError: its consumer is gone, nobody is waiting.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(_wake, waiter)

    async def aclose(self) -> None:
        """Ask the thread to stop; it closes the generator after its current step.

        It is not joined: a generator blocked in a long call finishes that call in the
        background rather than holding up the server's cleanup of this connection.
        """
        with self._cond:
            self._closed = True
            self._waiter = None
            self._cond.notify()


class _ThreadLoop:
    """One loop per server thread, kept between its connections: creating and closing a
    loop (selector, self-pipe) for each would cost every short stream. It is closed when
    its thread ends (thread-local values are dropped then)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def __del__(self) -> None:
        if not self.loop.is_running():
            self.loop.close()


_thread_loops = threading.local()


def _loop_of_this_thread() -> asyncio.AbstractEventLoop:
    holder: _ThreadLoop | None = getattr(_thread_loops, "holder", None)
    if holder is None or holder.loop.is_closed():
        holder = _thread_loops.holder = _ThreadLoop()
    return holder.loop


async def _keeping_context(step: Any, context: contextvars.Context) -> Any:  # pragma: no cover
    """Python 3.10: await ``step``, then copy what it changed in its task's context back to
    ``context``, so the next step starts where this one ended (3.11 runs the task in it)."""
    try:
        return await step
    finally:
        for var, value in contextvars.copy_context().items():
            if var not in context or context[var] is not value:
                context.run(var.set, value)


def iterate_on_private_loop(frames: AsyncIterator[bytes]) -> Generator[bytes, None, None]:
    """Iterate an async iterator from sync code, one item per turn of this thread's loop.

    When the caller stops early (a WSGI server closes the response because the client went
    away), the async iterator is closed on the same loop, so its cleanup runs where it ran.
    Tasks the stream left behind are cancelled before the loop serves another connection.
    """
    loop = _loop_of_this_thread()
    # Every step runs in one context, as the iteration would in one task under ASGI, so
    # context variables the stream binds (structlog's) hold from step to step.
    context = contextvars.copy_context()

    def run(step: Any) -> Any:
        if sys.version_info >= (3, 11):
            return loop.run_until_complete(loop.create_task(step, context=context))
        # Python 3.10: a task runs in a copy of the context it is created in.
        task = context.run(loop.create_task, _keeping_context(step, context))  # pragma: no cover
        return loop.run_until_complete(task)  # pragma: no cover

    try:
        while True:
            try:
                chunk = run(frames.__anext__())
            except StopAsyncIteration:
                return
            yield chunk
    finally:
        aclose = getattr(frames, "aclose", None)
        if aclose is not None:
            run(aclose())
        leftovers = asyncio.all_tasks(loop)
        for task in leftovers:
            task.cancel()
        if leftovers:
            loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))
