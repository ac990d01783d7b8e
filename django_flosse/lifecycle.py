"""The stream lifecycle: from the producer's items to the chunks handed to the server.

One async implementation serves all four combinations of view and server (``bridge.py``
adapts the other three), so frames, heartbeats, errors and close reasons are the same
everywhere. Per event the hot path does one encode to bytes and a few integer updates on
the connection: no task, no timer, no lock. Events that are ready together leave together
in one chunk, since each chunk costs Django and the server a full trip through their send
path; a ready event never waits for another, and a flooding producer gives the event loop a
turn after every chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import random
import secrets
import time
import uuid
import zlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

import structlog
from asgiref.sync import sync_to_async
from django.conf import settings

from . import reasons, shutdown
from .db import IDLE_STEP_SECONDS, release_connections
from .events import KEEPALIVE, encode_event, retry_frame
from .log import STREAM_ERROR, get_logger
from .registry import Connection, Registry, registry
from .sendwatch import watch_sends
from .stepping import Step

__all__ = ["ERROR_MESSAGE", "MAX_CHUNK_BYTES", "Stream"]

#: A chunk is sent once it reaches this size even if more events are ready.
MAX_CHUNK_BYTES = 16 * 1024
#: The chunk cap while the event loop has other work (see ``_yield_to_loop``).
MIN_CHUNK_BYTES = 1024
#: A turn of the loop that takes longer than this means other connections had work.
BUSY_TURN_SECONDS = 0.0001
#: How long a flooding stream shares the loop after a turn that showed other work.
SHARE_LOOP_SECONDS = 0.02
#: At most this many extra turns per chunk while sharing (see ``_yield_to_loop``).
SHARE_TURNS = 8

#: Reconnection delay suggested when the server ends a stream itself (jittered up to 2x).
RECONNECT_AFTER_MS = 1000

#: What clients see when a stream fails and ``DEBUG`` is off (plus the error id).
ERROR_MESSAGE = "The event stream failed on the server."


def _set_done(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _set_done_on(waiter: asyncio.Future[None], _done: asyncio.Future[Any]) -> None:
    _set_done(waiter)


async def _first_of(
    fut: asyncio.Future[Any], stop: asyncio.Future[None], timeout: float | None
) -> None:
    """Wait until ``fut`` or ``stop`` is done, or ``timeout`` seconds passed.

    ``asyncio.wait(..., return_when=FIRST_COMPLETED)`` does the same, and like it this never
    cancels either future (``fut`` is what the producer awaits). But an idle stream spends
    its life here, and this holds a third of the memory: one future, one callback, one timer.
    """
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()
    wake = functools.partial(_set_done_on, waiter)
    fut.add_done_callback(wake)
    stop.add_done_callback(wake)
    timer = None if timeout is None else loop.call_later(timeout, _set_done, waiter)
    try:
        await waiter
    finally:
        fut.remove_done_callback(wake)
        stop.remove_done_callback(wake)
        if timer is not None:
            timer.cancel()


def final_frame(reason: str) -> bytes:
    """The last frame of a stream the server ends itself, naming the reason.

    Clients should close their ``EventSource`` on ``terminated``; on ``shutdown`` and
    ``timeout`` the ``retry`` hint is jittered so that clients do not all reconnect at once.
    """
    retry = None
    if reason in (reasons.SHUTDOWN, reasons.TIMEOUT):
        retry = random.randint(RECONNECT_AFTER_MS, 2 * RECONNECT_AFTER_MS)
    return encode_event(json.dumps({"reason": reason}), event=reason, retry=retry).encode()


async def _yield_to_loop(busy_at: float, took: float) -> float:
    """Give the event loop a turn after a chunk that ``took`` seconds to make and send;
    return when a turn last showed other work.

    A producer that always has events ready would otherwise keep the loop for itself:
    servers' ``send`` does not suspend while the socket takes the data. One turn per chunk
    lets others run. A turn that took long shows that others had work: a new request, say,
    which needs dozens of turns (its middleware, each hop to its thread) to send its first
    event. For ``SHARE_LOOP_SECONDS`` after such a turn the stream shares the loop: it
    yields turns until others have had as much time as its chunk took (at most
    ``SHARE_TURNS``), so it takes at most about half of the loop's time, and the caller
    keeps chunks small. Alone on the loop it yields one turn and chunks are full size,
    which is where throughput is. Among many streams that all flood, one turn already
    gives the others far more time than a chunk takes: no extra turns there.
    """
    start = now = time.monotonic()
    for turn in range(SHARE_TURNS + 1):
        if turn and (now - busy_at >= SHARE_LOOP_SECONDS or now - start >= took):
            break
        before = now
        await asyncio.sleep(0)
        now = time.monotonic()
        if now - before > BUSY_TURN_SECONDS:
            busy_at = now
    return busy_at


def _cancel_requested() -> bool:
    """Is the current task being cancelled (rather than a producer's own timeout firing)?"""
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    # Python 3.10 has no Task.cancelling() and no asyncio.timeout(): any cancel is real.
    return cancelling is None or cancelling() > 0


class Stream:
    """One connection's stream: pulls items, encodes them, counts what it sends.

    ``source`` is an async iterator of yielded items, or of already encoded frames when
    ``encode`` is ``None`` (the sync bridge encodes in its own thread). ``connection`` is
    registered already (the decorator does it, to enforce limits before answering); the
    stream closes it exactly once, with its reason.
    """

    def __init__(
        self,
        source: AsyncIterator[Any],
        *,
        connection: Connection | None = None,
        name: str = "",
        encode: Callable[[Any], bytes] | None,
        heartbeat: float | None,
        max_duration: float | None = None,
        send_timeout: float | None = None,
        retry: int | None = None,
        gzip: bool = False,
        release_db_when_idle: bool = False,
        registry: Registry = registry,
    ) -> None:
        self.connection = connection or Connection(id=uuid.uuid4().hex, stream=name)
        self.started = False
        self._registry = registry
        self._source = source
        self._encode = encode
        self._heartbeat = heartbeat
        # For async views only: a sync generator's thread handles its own (see bridge.py).
        self._release_db_when_idle = release_db_when_idle
        self._max_duration = max_duration
        self._send_timeout = send_timeout
        #: While the server holds a chunk: since when (``time.monotonic()``); see sendwatch.py.
        self.sending_since: float | None = None
        self._first = retry_frame(retry) if retry is not None else b""
        self._gzip = zlib.compressobj(wbits=31) if gzip else None

    # The connection's counters, for readers of the stream.
    @property
    def name(self) -> str:
        return self.connection.stream

    @property
    def events_sent(self) -> int:
        return self.connection.events_sent

    @property
    def bytes_sent(self) -> int:
        return self.connection.bytes_sent

    @property
    def close_reason(self) -> str | None:
        return self.connection.close_reason

    @property
    def error_id(self) -> str | None:
        return self.connection.error_id

    def close_unstarted(self) -> None:
        """The response was closed before the server ever iterated it."""
        if not self.started:
            self._registry.close(self.connection, reasons.CANCELLED)

    async def frames(self) -> AsyncGenerator[bytes, None]:
        """The chunks to send, in order. Close it (``aclose``) to cancel the stream."""
        self.started = True
        conn = self.connection
        step = Step(self._source)
        delivered = False
        encode = self._encode
        heartbeat = self._heartbeat
        out: list[bytes] = [self._first] if self._first else []
        size = len(self._first)
        last_sent = time.monotonic()
        reason = reasons.CANCELLED
        # Another thread may ask this stream to stop (terminate, shutdown): it wakes us.
        loop = asyncio.get_running_loop()
        stop: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            loop.call_soon_threadsafe(_set_done, stop)

        conn.wake = wake
        if conn.stop_reason is not None:
            stop.set_result(None)
        # Per connection, never per event: the maximum duration, the send watchdog.
        limit = None
        if self._max_duration is not None:
            # Jittered down so that streams opened together do not all end together.
            duration = self._max_duration * random.uniform(0.9, 1.0)
            limit = loop.call_later(duration, conn.request_stop, reasons.TIMEOUT)
        sends = None if self._send_timeout is None else watch_sends(self, self._send_timeout)
        # When the producer waited long for an item (a poll loop's sleep), release the
        # database connection its async ORM calls used, once the item is out (db.py).
        release_db = self._release_db_when_idle
        release_due = False
        waiting_since: float | None = None  # since the current step first had to wait
        shutdown.ensure_installed()
        cap = MAX_CHUNK_BYTES
        busy_at = -SHARE_LOOP_SECONDS  # when a turn of the loop last showed other work
        # Anything the view logs while it streams carries the connection id and stream.
        bound = structlog.contextvars.bind_contextvars(connection_id=conn.id, stream=conn.stream)
        try:
            finished = False
            while True:
                if step.blocked():
                    fut = step.waiting_on
                    assert fut is not None
                    try:
                        timeout = None
                        if heartbeat is not None:
                            timeout = last_sent + heartbeat - time.monotonic()
                        if waiting_since is None:
                            waiting_since = time.monotonic()
                        if timeout is None or timeout > 0:
                            await _first_of(fut, stop, timeout)
                        if not fut.done() and not stop.done():
                            yield self._count(KEEPALIVE)
                            last_sent = time.monotonic()
                            continue
                    except asyncio.CancelledError:
                        if not hasattr(asyncio.current_task(), "cancelling"):
                            raise
                        # The producer's own asyncio.timeout() cancelled this task: hand the
                        # cancellation to the producer, whose timeout turns it into TimeoutError.
                        try:
                            ready, item = step.throw(asyncio.CancelledError())
                        except StopAsyncIteration:
                            ready, finished = False, True
                        if _cancel_requested():
                            delivered = True  # the producer has seen this cancellation
                            raise asyncio.CancelledError() from None
                        if ready:
                            out.append(encode(item) if encode is not None else item)
                            size += len(out[-1])
                            conn.events_sent += 1
                if stop.done():
                    break
                # Pull every item that is ready now, up to one chunk.
                began = time.monotonic()
                try:
                    while not finished and size < cap and not step.blocked():
                        ready, item = step.poll()
                        if not ready:
                            break
                        if waiting_since is not None:  # this item came after a wait
                            waited = time.monotonic() - waiting_since
                            release_due = release_db and waited >= IDLE_STEP_SECONDS
                            waiting_since = None
                        frame = encode(item) if encode is not None else item
                        out.append(frame)
                        size += len(frame)
                        conn.events_sent += 1
                except StopAsyncIteration:
                    finished = True
                if out:
                    if conn.events_sent:
                        conn.last_event_at = time.time()
                    chunk = b"".join(out) if len(out) > 1 else out[0]
                    out.clear()
                    size = 0
                    self.sending_since = time.monotonic()
                    yield self._count(chunk)
                    self.sending_since = None
                    if release_due:
                        release_due = False
                        # On the request's thread, where those ORM calls ran.
                        await sync_to_async(release_connections)()
                    if heartbeat is not None:
                        last_sent = time.monotonic()
                if finished or stop.done():
                    break
                if not step.blocked():
                    # More is ready (the chunk was full) or the producer asked for a loop
                    # turn: let other connections run before the next chunk.
                    busy_at = await _yield_to_loop(busy_at, time.monotonic() - began)
                    shared = time.monotonic() - busy_at < SHARE_LOOP_SECONDS
                    cap = MIN_CHUNK_BYTES if shared else MAX_CHUNK_BYTES
            if stop.done():  # asked to stop: terminated, shutdown or timeout
                reason = conn.stop_reason or reasons.TERMINATED
                await self._cancel_producer(step)
                out.append(final_frame(reason))
                yield self._count(b"".join(out))
            else:
                reason = reasons.COMPLETED
            if self._gzip is not None:
                tail = self._gzip.flush()
                conn.bytes_sent += len(tail)
                yield tail
        except (asyncio.CancelledError, GeneratorExit):
            # A client that left, or a send_timeout that cancelled the send (its reason).
            reason = conn.stop_reason or reasons.CANCELLED
            await self._cancel_producer(step, delivered=delivered)
            raise
        except Exception as exc:  # the producer raised, or yielded something invalid
            reason = reasons.ERROR
            out.append(self._fail(exc))  # after the events that were ready before it
            yield self._count(b"".join(out))
        finally:
            try:
                aclose = getattr(self._source, "aclose", None)
                if aclose is not None:
                    await aclose()
            finally:
                conn.wake = None
                if limit is not None:
                    limit.cancel()
                if sends is not None:
                    sends.discard(self)
                self._registry.close(conn, reason)
                # (On Python 3.10's private loop each step had its own context: nothing to reset.)
                with contextlib.suppress(ValueError):
                    structlog.contextvars.reset_contextvars(**bound)

    def _count(self, chunk: bytes) -> bytes:
        if self._gzip is not None:
            chunk = self._gzip.compress(chunk) + self._gzip.flush(zlib.Z_SYNC_FLUSH)
        self.connection.bytes_sent += len(chunk)
        return chunk

    async def _cancel_producer(self, step: Step, delivered: bool = False) -> None:
        if not step.suspended:
            return
        try:
            await step.cancel(deliver=not delivered)
        except Exception:
            get_logger().warning(
                STREAM_ERROR,
                connection_id=self.connection.id,
                stream=self.name,
                during="cleanup after cancellation",
                exc_info=True,
            )

    def _fail(self, exc: BaseException) -> bytes:
        """Log the failure with its traceback and return the one error frame for the client."""
        self.connection.error_id = error_id = secrets.token_hex(4)
        get_logger().error(
            STREAM_ERROR,
            connection_id=self.connection.id,
            stream=self.name,
            error_id=error_id,
            exc_info=exc,
        )
        payload: dict[str, str] = {"message": ERROR_MESSAGE, "error_id": error_id}
        if settings.DEBUG:
            payload["detail"] = f"{type(exc).__name__}: {exc}"
        return encode_event(json.dumps(payload), event="error").encode()
