"""An asyncio event loop in a daemon thread: where a backend's reader and commands run.

A backend whose engine client is asyncio-based (redis-py's ``redis.asyncio``) keeps it on
one loop of its own: the callers' loops may be short-lived (``async_to_sync`` makes one per
call) and sync callers have none. :meth:`LoopThread.submit` runs a coroutine there from any
thread and returns a :class:`concurrent.futures.Future`, which async callers can await
(``asyncio.wrap_future``) and sync callers wait on.

The thread starts on the first ``submit`` (after a fork, in the process that uses it) and
``close`` stops it: the main coroutine is asked to return, every task still running is
cancelled and awaited, then the backend's cleanup closes its clients, so that nothing is
left pending and no connection is left to the garbage collector.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

__all__ = ["LoopThread", "cancel_surely"]

#: Rounds of "cancel what is left" at the end (cleanups may start tasks of their own).
_CANCEL_ROUNDS = 5
#: Loop turns on which ``cancel_surely`` cancels again a task that still runs.
_CANCEL_AGAIN_TURNS = 3


def cancel_surely(task: asyncio.Future[Any], turns: int = _CANCEL_AGAIN_TURNS) -> None:
    """Cancel ``task``, and again on the next ``turns`` loop turns while it still runs.

    Why once is not enough: before Python 3.12, ``asyncio.wait_for`` drops a cancel that
    comes while the awaitable it waits for has just finished (CPython gh-86296), and
    redis-py wraps every command it sends in one. A cancelled read of the Redis reader then
    went on to block for its whole ``XREAD BLOCK``: a new topic's first events and
    ``close()`` waited up to 2 s. The task goes on to its next await within the turn it
    drops the cancel, where the next cancel reaches it.
    """
    if task.done():
        return
    task.cancel()
    if turns > 0:
        task.get_loop().call_soon(cancel_surely, task, turns - 1)


class LoopThread:
    """Run ``main()`` on a loop in a daemon thread named ``name``; ``setup()`` runs first
    on that thread (make loop-bound objects there), ``cleanup()`` last."""

    def __init__(
        self,
        name: str,
        *,
        setup: Callable[[], None],
        main: Callable[[], Coroutine[Any, Any, None]],
        cleanup: Callable[[], Awaitable[None]],
    ) -> None:
        self.name = name
        self._setup, self._main, self._cleanup = setup, main, cleanup
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closed = False

    def submit(
        self, make: Callable[[], Coroutine[Any, Any, Any]]
    ) -> concurrent.futures.Future[Any]:
        """Run the coroutine ``make()`` on the loop; ``RuntimeError`` once closed (the
        coroutine is only made when it will run: no "never awaited" warning)."""
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self.name} is closed")
            loop = self._loop if self._loop is not None else self._start()
            return asyncio.run_coroutine_threadsafe(make(), loop)

    def call_soon(self, callback: Callable[..., object], *args: Any) -> None:
        """``callback(*args)`` on the loop, if it runs (otherwise there is nothing to do)."""
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # closed meanwhile
                loop.call_soon_threadsafe(callback, *args)

    def close(self, stop: Callable[[], None], timeout: float) -> None:
        """Call ``stop()`` on the loop (it must make ``main()`` return), then wait up to
        ``timeout`` seconds for the thread to clean up and end."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(stop)
        thread.join(timeout)

    def _start(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(loop, ready), name=self.name, daemon=True
        )
        self._thread.start()
        ready.wait()
        self._loop = loop
        return loop

    def _run(self, loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        try:
            self._setup()
        finally:
            ready.set()
        try:
            loop.run_until_complete(self._main())
        finally:
            try:
                loop.run_until_complete(self._finish())
            finally:
                loop.close()

    async def _finish(self) -> None:
        await self._cancel_the_rest()
        await self._cleanup()
        await self._cancel_the_rest()
        loop = asyncio.get_running_loop()
        await loop.shutdown_asyncgens()
        await loop.shutdown_default_executor()  # getaddrinfo for a host name runs there

    @staticmethod
    async def _cancel_the_rest() -> None:
        current = asyncio.current_task()
        for _round in range(_CANCEL_ROUNDS):
            await asyncio.sleep(0)  # callbacks already scheduled (submits before close)
            tasks = [task for task in asyncio.all_tasks() if task is not current]
            if not tasks:
                return
            for task in tasks:
                cancel_surely(task)
            await asyncio.gather(*tasks, return_exceptions=True)
