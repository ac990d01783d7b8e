"""Helpers for projects that test their own ``@sse_stream`` views.

Why they exist: Django's test client returns a streaming response without reading it, and
reading ``streaming_content`` to its end never returns for an endless stream. Stopping early
is not enough either: a stream that is never closed leaves the view's generator suspended,
so its ``finally`` never runs and its thread or event loop outlives the test. These helpers
read a bounded number of events with a deadline, parse them as a browser would, and always
close the stream, the way a server does when the client goes away::

    from django_flosse.testing import acollect_events, collect_events

    def test_ticks(client):
        events = collect_events(client.get("/ticks/"), max_events=3)
        assert [event.json() for event in events] == [{"i": 0}, {"i": 1}, {"i": 2}]

    async def test_ticks_async(async_client):
        response = await async_client.get("/ticks/")
        events = await acollect_events(response, max_events=3, timeout=2)
        assert events[0].event == "tick"

Both helpers accept either kind of response: ``streaming_content`` is an async iterator for
``async def`` views and a sync one for ``def`` views. The sync helper drives an async
iterator on a private event loop; both helpers step a sync iterator on one worker thread of
their own, so a blocking step can never freeze the caller past its deadline, and the
iterator is closed on the thread that ran it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
import zlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

from django.core.signals import request_finished
from django.db import close_old_connections
from django.http.response import HttpResponseBase

from ._parse import Event, _Parser, parse_events

__all__ = ["Event", "acollect_events", "collect_events", "parse_events"]

#: How long closing waits for a sync step that was still running when the deadline passed.
#: An ``@sse_stream`` view returns at least one keep-alive per heartbeat, so a step ends by then.
CLOSE_TIMEOUT = 30.0

# How many times closing an async stream restarts it to cancel it at an ``await``.
_CANCEL_ATTEMPTS = 100


class _Collector:
    """Turns the response's chunks into at most ``max_events`` events."""

    def __init__(self, response: HttpResponseBase, max_events: int, timeout: float) -> None:
        _check_response(response)
        if isinstance(max_events, bool) or not isinstance(max_events, int) or max_events < 1:
            raise ValueError(f"max_events must be an int >= 1; got {max_events!r}")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ValueError(f"timeout must be a positive number of seconds; got {timeout!r}")
        self.max_events = max_events
        self.timeout = float(timeout)
        self.deadline = time.monotonic() + timeout
        self.events: list[Event] = []
        self._parser = _Parser()
        gzipped = response.get("Content-Encoding", "").strip().lower() == "gzip"
        self._gunzip = zlib.decompressobj(wbits=31) if gzipped else None

    @property
    def done(self) -> bool:
        return len(self.events) >= self.max_events

    def remaining(self) -> float:
        """Seconds left before the deadline; raises ``TimeoutError`` once it has passed."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise self.timed_out()
        return left

    def feed(self, chunk: bytes | str) -> None:
        if isinstance(chunk, (bytes, bytearray, memoryview)):
            chunk = bytes(chunk)
            if self._gunzip is not None:
                chunk = self._gunzip.decompress(chunk)
        self.events.extend(self._parser.feed(chunk))
        del self.events[self.max_events :]

    def end(self) -> None:
        tail = self._gunzip.flush() if self._gunzip is not None else b""
        self.events.extend(self._parser.feed(tail, final=True))
        del self.events[self.max_events :]

    def timed_out(self) -> TimeoutError:
        received = ", ".join(f"{event.event}: {event.data[:60]!r}" for event in self.events[:5])
        more = ", ..." if len(self.events) > 5 else ""
        return TimeoutError(
            f"only {len(self.events)} of {self.max_events} events arrived within "
            f"{self.timeout:g} s (received: [{received}{more}])"
        )


def _check_response(response: Any) -> None:
    if not isinstance(response, HttpResponseBase):
        raise TypeError(f"expected a Django response; got {type(response).__name__}")
    if not getattr(response, "streaming", False):
        body = getattr(response, "content", b"")[:200]
        raise AssertionError(
            f"expected a streaming event-stream response; got {type(response).__name__} with "
            f"status {response.status_code} and body {body!r}"
        )
    content_type = response.get("Content-Type", "")
    if not content_type.startswith("text/event-stream"):
        raise AssertionError(
            f"expected Content-Type text/event-stream; got {content_type!r} "
            f"(status {response.status_code})"
        )


def _close_response(response: HttpResponseBase) -> None:
    """``response.close()``, as a server calls it when the response is done.

    Like Django's test client, keep ``close_old_connections`` out of the ``request_finished``
    signal meanwhile: inside a test's transaction it would close the test's own connection.
    """
    if response.closed:
        return
    request_finished.disconnect(close_old_connections)
    try:
        response.close()
    finally:
        request_finished.connect(close_old_connections)


# --------------------------------------------------------------------- sync iterators


class _ThreadStepper:
    """Runs every step of a sync iterator, and its closing, on one thread of its own.

    One thread because a generator's database connection and event loop belong to the thread
    that runs it; a thread at all so that a blocking step cannot hold the caller past its
    deadline.
    """

    def __init__(self, iterator: Iterator[Any], response: HttpResponseBase) -> None:
        self._iterator = iterator
        self._response = response
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="flosse-testing"
        )
        self.exhausted = False

    def step(self) -> concurrent.futures.Future[Any]:
        return self._executor.submit(next, self._iterator, _END)

    def close(self) -> concurrent.futures.Future[None]:
        return self._executor.submit(self._close)

    def _close(self) -> None:
        try:
            close = getattr(self._iterator, "close", None)
            if close is not None:
                close()
        finally:
            # Also runs the closers of iterators a wrapper (such as map()) hides from us.
            _close_response(self._response)

    def shutdown(self, *, wait: bool) -> None:
        self._executor.shutdown(wait=wait)


_END: Any = object()


def _stuck(response: HttpResponseBase) -> RuntimeError:
    return RuntimeError(
        f"the stream of {response!r} could not be closed: a step of its iterator was still "
        f"running {CLOSE_TIMEOUT:g} s after the deadline (a view blocked with heartbeat=None?)"
    )


def _collect_sync_in_thread(
    iterator: Iterator[Any], response: HttpResponseBase, collector: _Collector
) -> None:
    stepper = _ThreadStepper(iterator, response)
    try:
        while not collector.done:
            left = collector.remaining()
            chunk = stepper.step().result(timeout=left)
            if chunk is _END:
                collector.end()
                return
            collector.feed(chunk)
    except concurrent.futures.TimeoutError:
        raise collector.timed_out() from None
    finally:
        try:
            stepper.close().result(timeout=CLOSE_TIMEOUT)
        except concurrent.futures.TimeoutError:
            stepper.shutdown(wait=False)
            raise _stuck(response) from None
        stepper.shutdown(wait=True)


async def _acollect_sync_in_thread(
    iterator: Iterator[Any], response: HttpResponseBase, collector: _Collector
) -> None:
    stepper = _ThreadStepper(iterator, response)
    try:
        while not collector.done:
            left = collector.remaining()
            chunk = await asyncio.wait_for(asyncio.wrap_future(stepper.step()), left)
            if chunk is _END:
                collector.end()
                return
            collector.feed(chunk)
    except asyncio.TimeoutError:  # an alias of TimeoutError from Python 3.11
        raise collector.timed_out() from None
    finally:
        try:
            await asyncio.wait_for(asyncio.wrap_future(stepper.close()), CLOSE_TIMEOUT)
        except asyncio.TimeoutError:
            stepper.shutdown(wait=False)
            raise _stuck(response) from None
        stepper.shutdown(wait=True)  # the worker is idle now: this join is immediate


# -------------------------------------------------------------------- async iterators


def _being_cancelled() -> bool:
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)  # Python 3.11+
    return bool(cancelling()) if cancelling is not None else False


async def _in_own_thread(func: Any, *args: Any) -> None:
    """Run a blocking call off the event loop, on a thread that is gone when this returns."""
    executor = concurrent.futures.ThreadPoolExecutor(
        max_workers=1, thread_name_prefix="flosse-testing"
    )
    try:
        await asyncio.wrap_future(executor.submit(func, *args))
    finally:
        executor.shutdown(wait=True)


async def _cancel_like_a_disconnect(iterator: AsyncIterator[Any]) -> None:
    """Close an async stream the way an ASGI server does: cancel it at its current ``await``.

    ``aclose()`` alone is not enough: wrappers such as Django's ``async for`` ones do not pass
    it on, so the view's generator would stay suspended until garbage collection. A
    cancellation raised at the innermost ``await`` unwinds every layer, running each
    ``finally``. A step may finish with a chunk before it is cancelled; then try again.
    """
    for _ in range(_CANCEL_ATTEMPTS):
        step = asyncio.ensure_future(anext(iterator))
        await asyncio.sleep(0)  # let the step run up to its first real await
        step.cancel()
        try:
            await step
        except (asyncio.CancelledError, StopAsyncIteration):
            if _being_cancelled():
                raise  # our caller is being cancelled too
            return
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        await aclose()


async def _drain_async(iterator: AsyncIterator[Any], collector: _Collector) -> None:
    finished = False
    try:
        while not collector.done:
            left = collector.remaining()
            try:
                chunk = await asyncio.wait_for(anext(iterator), left)
            except StopAsyncIteration:
                finished = True
                collector.end()
                return
            except asyncio.TimeoutError:  # the step was cancelled, like a disconnect
                finished = True
                raise collector.timed_out() from None
            collector.feed(chunk)
    except BaseException:
        finished = True  # the iterator raised (or was cancelled): it is finished already
        raise
    finally:
        if not finished:
            await _cancel_like_a_disconnect(iterator)


def _collect_async_on_private_loop(
    iterator: AsyncIterator[Any], response: HttpResponseBase, collector: _Collector
) -> None:
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(_drain_async(iterator, collector))
    finally:
        try:
            # Anything the iterator left suspended is closed here, on the loop it ran on.
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()
            _close_response(response)


# ------------------------------------------------------------------------ the helpers


def collect_events(
    response: HttpResponseBase, *, max_events: int, timeout: float = 5.0
) -> list[Event]:
    """Read up to ``max_events`` events from a stream response, then close it.

    Returns fewer events if the stream ends first. Raises ``TimeoutError`` (saying how many
    events arrived) if ``timeout`` seconds pass first. Either way the stream is closed as a
    server closes it when the client goes away. An ``async def`` view's ``finally`` has run
    when this returns; a ``def`` view's generator runs in a thread of its own and is closed
    there after its current step, so its ``finally`` may run a moment later. Call this from
    sync code; in ``async def`` tests use :func:`acollect_events`.
    """
    collector = _Collector(response, max_events, timeout)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError(
            "collect_events() blocks, and an event loop is running in this thread: "
            "use `await acollect_events(...)` in async code"
        )
    content: Any = response.streaming_content  # type: ignore[attr-defined]
    if hasattr(content, "__aiter__"):
        _collect_async_on_private_loop(content, response, collector)
    else:
        _collect_sync_in_thread(iter(content), response, collector)
    return collector.events


async def acollect_events(
    response: HttpResponseBase, *, max_events: int, timeout: float = 5.0
) -> list[Event]:
    """The ``async`` twin of :func:`collect_events`, for ``async def`` tests."""
    collector = _Collector(response, max_events, timeout)
    content: Any = response.streaming_content  # type: ignore[attr-defined]
    if hasattr(content, "__aiter__"):
        try:
            await _drain_async(content, collector)
        finally:
            # close() may fire request_finished receivers that are not async-safe.
            await _in_own_thread(_close_response, response)
    else:
        await _acollect_sync_in_thread(iter(content), response, collector)
    return collector.events
