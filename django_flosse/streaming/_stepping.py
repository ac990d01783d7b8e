"""Drive one ``__anext__()`` of an async iterator by hand.

Why: ``await source.__anext__()`` always costs a trip through the event loop machinery per
item, and wrapping it in a ``Task`` (to wait for it with a timeout) costs more and risks
cancelling it, which corrupts an async generator. Instead the stream starts the step itself
with ``send(None)``. Either the step finishes at once (the producer had the item ready),
or it hands back the future it waits on; the stream then waits on that future the way a
``Task`` would and resumes the step when it is done. asyncio's eager tasks work the same way.

So a producer with many items ready yields them all without a single suspension (they can
leave in one chunk), and a producer that waits on real I/O is resumed as soon as its future
is done, exactly as if it ran in its own task.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from typing import Any

__all__ = ["Step", "wait_for_future"]


def _release(waiter: asyncio.Future[None], _fut: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_result(None)


async def wait_for_future(fut: asyncio.Future[Any]) -> None:
    """Suspend the current task until ``fut`` is done, without taking its result.

    This is what the task running the producer would have done for it: the future's outcome
    (a value or an exception) is for the producer to read when its step is resumed. If the
    task is cancelled meanwhile, ``fut`` is cancelled too, as asyncio would for the producer.

    It waits on a future of its own: a task that awaited ``fut`` itself would have the
    exception thrown into it (Python 3.12+ does, whatever ``_asyncio_future_blocking`` says).
    Used only while a producer cleans up after a cancellation: never per event.
    """
    if fut.done():
        return
    waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    wake = functools.partial(_release, waiter)
    fut.add_done_callback(wake)
    try:
        await waiter
    except asyncio.CancelledError:
        fut.cancel()
        raise
    finally:
        fut.remove_done_callback(wake)


class Step:
    """The producer's current ``__anext__()``, started and resumed by hand."""

    __slots__ = ("_aw", "_source", "waiting_on")

    def __init__(self, source: AsyncIterator[Any]) -> None:
        self._source = source
        self._aw: Any = None
        #: The future a suspended step waits on (``None``: a bare ``yield`` to the loop).
        self.waiting_on: asyncio.Future[Any] | None = None

    @property
    def suspended(self) -> bool:
        return self._aw is not None

    def blocked(self) -> bool:
        """True while the step waits on a future that is not done yet."""
        fut = self.waiting_on
        return self._aw is not None and fut is not None and not fut.done()

    def poll(self) -> tuple[bool, Any]:
        """Start or resume the step.

        Returns ``(True, item)`` when the step finished with an item, ``(False, None)`` when
        it is suspended again (see :attr:`waiting_on`). The producer's own exceptions,
        ``StopAsyncIteration`` included, propagate.
        """
        aw = self._aw
        if aw is None:
            aw = self._source.__anext__()
            if not hasattr(aw, "send"):  # an awaitable object rather than a coroutine
                aw = aw.__await__()
            self._aw = aw
        return self._resume(aw, None)

    def throw(self, exc: BaseException) -> tuple[bool, Any]:
        """Raise ``exc`` inside the suspended step (as a task's cancellation would)."""
        fut = self.waiting_on
        if fut is not None:
            fut.cancel()
        return self._resume(self._aw, exc)

    def _resume(self, aw: Any, exc: BaseException | None) -> tuple[bool, Any]:
        try:
            yielded = aw.send(None) if exc is None else aw.throw(exc)
        except StopIteration as done:
            self._aw = self.waiting_on = None
            return True, done.value
        except BaseException:
            self._aw = self.waiting_on = None
            raise
        if yielded is None:  # a bare yield: the producer only wants the loop to run once
            self.waiting_on = None
        elif getattr(yielded, "_asyncio_future_blocking", None):
            yielded._asyncio_future_blocking = False
            self.waiting_on = yielded
        else:
            self._aw = self.waiting_on = None
            error = RuntimeError(
                f"the stream's producer awaited {yielded!r}, which is not an asyncio future; "
                "only asyncio-compatible awaitables are supported"
            )
            # Raised at the producer's await, so its cleanup runs and it ends. (Closing the
            # step instead leaves an async generator marked as running: its finally never
            # runs and the stream's aclose() raises "already running".)
            try:
                aw.throw(error)
            finally:
                aw.close()
            raise error
        return False, None

    async def cancel(self, deliver: bool = True) -> tuple[bool, Any] | None:
        """Cancel a suspended step and let the producer finish its cleanup.

        The producer sees ``CancelledError`` at its current ``await``, as under a plain
        task. It may re-raise it (the documented idiom), return, or even yield an item; its
        cleanup may await. Returns the step's outcome if the producer swallowed the
        cancellation, ``None`` otherwise.
        """
        exc: BaseException | None = asyncio.CancelledError() if deliver else None
        if not deliver and self._aw is not None:  # wait for what the producer awaits
            fut = self.waiting_on
            await (asyncio.sleep(0) if fut is None else wait_for_future(fut))
        while self._aw is not None:
            try:
                outcome = self.poll() if exc is None else self.throw(exc)
            except (asyncio.CancelledError, StopAsyncIteration):
                return None
            exc = None
            if outcome[0]:
                return outcome
            fut = self.waiting_on
            if fut is None:
                await asyncio.sleep(0)
            else:
                await wait_for_future(fut)
        return None
