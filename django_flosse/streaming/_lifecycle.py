"""The life of one connection: opened (or refused), streamed, closed with one reason.

This module owns a connection from the moment the decorator has checked permissions:
:func:`open_stream` registers it (or refuses it at a limit) and answers with its
:class:`~django_flosse.streaming._response.SSEResponse`; :meth:`Stream.frames` runs it; and
:meth:`Stream.close` is the one place it is closed, whether the producer finished, failed,
the client left, the server stopped it, or the response was closed before anything
streamed. A reader follows a request through two files: ``decorators.py``, then this one.

One async implementation serves all four combinations of view and server (``_bridge.py``
adapts the other three), so frames, heartbeats, errors and close reasons are the same
everywhere. Per event the hot path does one encode to bytes and a few integer updates on
the connection: no task, no timer, no lock. Events that are ready together leave together
in one chunk, since each chunk costs Django and the server a full trip through their send
path; a ready event never waits for another, and a flooding producer gives the event loop a
turn after every chunk.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import time
import zlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import structlog
from django.http import HttpRequest, HttpResponseBase

from .. import reasons
from ..conf import get_config, pick
from ..events import KEEPALIVE, retry_frame
from ..formatters import encoder_for
from ..observing.log import STREAM_ERROR, get_logger
from ..observing.registry import Connection, Registry, registry
from . import shutdown
from ._alarms import alarms_of
from ._bridge import ThreadedSource
from ._clients import attach_to_request, connection_for, new_connection_id
from ._db import (
    IDLE_STEP_SECONDS,
    arelease_while_idle,
    async_views_release,
    opened_for_this_request,
)
from ._frames import error_frame, final_frame
from ._pacing import (
    MIN_CHUNK_BYTES,
    SHARE_LOOP_SECONDS,
    SHARE_MIN_CHUNKS,
    arm_first_of,
    cancel_requested,
    disarm_first_of,
    set_done,
    yield_to_loop,
)
from ._response import SSEResponse, refusal, wants_gzip
from ._sendwatch import watch_sends
from ._stepping import Step

__all__ = ["MAX_CHUNK_BYTES", "Stream", "StreamOptions", "open_stream"]

#: A chunk is sent once it reaches this size even if more events are ready.
MAX_CHUNK_BYTES = 16 * 1024


class Stream:
    """One connection's stream: pulls items, encodes them, counts what it sends.

    ``source`` is an async iterator of yielded items, or of already encoded frames when
    ``encode`` is ``None`` (the sync bridge encodes in its own thread); :func:`open_stream`
    attaches it once the view returned it. ``connection`` is registered already (to enforce
    limits before answering); :meth:`close` closes it exactly once, with its reason.
    """

    # One per open connection, for its whole life: no per-instance __dict__.
    __slots__ = (
        "_encode", "_first", "_gzip", "_heartbeat", "_loop", "_max_duration", "_registry",
        "_release_db_when_idle", "_send_timeout", "_source", "_waiter", "connection",
        "on_private_loop", "sending_since", "started",
    )  # fmt: skip
    # Set by frames(), for __call__() (the wake hook): its loop, and what it awaits while
    # idle (None otherwise).
    _loop: asyncio.AbstractEventLoop
    _waiter: asyncio.Future[None] | None

    def __init__(
        self,
        source: AsyncIterator[Any] | None = None,
        *,
        connection: Connection | None = None,
        name: str = "",
        encode: Callable[[Any], bytes] | None = None,
        heartbeat: float | None,
        max_duration: float | None = None,
        send_timeout: float | None = None,
        retry: int | None = None,
        gzip: bool = False,
        release_db_when_idle: bool = False,
        registry: Registry = registry,
    ) -> None:
        self.connection = connection or Connection(id=new_connection_id(), stream=name)
        self.started = False
        self._registry = registry
        self._source = source
        self._encode = encode
        self._heartbeat = heartbeat
        # For async views only: a sync generator's thread handles its own (see _bridge.py).
        self._release_db_when_idle = release_db_when_idle
        self._max_duration = max_duration
        self._send_timeout = send_timeout
        #: Set by ``SSEResponse`` when a WSGI server iterates it on a private loop.
        self.on_private_loop = False
        #: While the server holds a chunk: since when (``time.monotonic()``); see _sendwatch.py.
        self.sending_since: float | None = None
        self._first = retry_frame(retry) if retry is not None else b""
        self._gzip = zlib.compressobj(wbits=31) if gzip else None

    def attach(
        self,
        source: AsyncIterator[Any],
        *,
        encode: Callable[[Any], bytes] | None,
        release_db_when_idle: bool,
    ) -> None:
        """Give the stream the view's items (see the class docstring)."""
        self._source, self._encode = source, encode
        self._release_db_when_idle = release_db_when_idle

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

    def close(self, reason: str) -> bool:
        """Close the connection with ``reason``: the only place it is closed. The first
        call counts (a response closed after its stream ended closes nothing)."""
        return self._registry.close(self.connection, reason)

    def close_unstarted(self) -> None:
        """The response was closed before the server ever iterated it (a middleware
        replaced it, the client left during the view)."""
        if not self.started:
            self.close(reasons.CANCELLED)

    async def frames(self) -> AsyncGenerator[bytes, None]:
        """The chunks to send, in order. Close it (``aclose``) to cancel the stream."""
        self.started = True
        conn = self.connection
        assert self._source is not None, "attach() the view's items first"
        step = Step(self._source)
        delivered = False
        encode = self._encode
        heartbeat = self._heartbeat
        out: list[bytes] = [self._first] if self._first else []
        size = len(self._first)
        last_sent = time.monotonic()
        reason = reasons.CANCELLED
        # Another thread may ask this stream to stop (terminate, shutdown): it sets
        # conn.stop_reason, then wakes us (__call__). No future of its own for that (it
        # would be kept for the connection's whole life): the wake completes the idle wait.
        loop = asyncio.get_running_loop()
        self._loop, self._waiter = loop, None
        conn.wake = self  # __call__: a bound method (self._wake) would be 64 bytes more
        alarms = alarms_of(loop)  # the timeouts of its waits (heartbeat, idle release)
        # Per connection, never per event: the maximum duration, the send watchdog.
        limit = None
        if self._max_duration is not None:
            # Jittered down so that streams opened together do not all end together.
            limit = loop.call_later(
                self._max_duration * random.uniform(0.9, 1.0), conn.request_stop, reasons.TIMEOUT
            )
        sends = None if self._send_timeout is None else watch_sends(self, self._send_timeout)
        # Once the producer has waited IDLE_STEP_SECONDS for its next item (a poll loop's
        # sleep), release the database connections its async ORM calls opened: a timer per
        # wait only while one of them is open, a thread hop when it fires (see _db.py).
        # On a private loop (WSGI) the producer's ORM calls go to asgiref's one shared
        # thread, which refuses a second call while one of the producer's is in flight
        # ("would deadlock"): there the release waits until the producer is at a yield,
        # after an item that came after a long wait.
        release_while_waiting = self._release_db_when_idle and not self.on_private_loop
        release_at_yield = self._release_db_when_idle and self.on_private_loop
        release_pending = release_while_waiting
        release_due = False
        waiting_since: float | None = None  # since the current step first had to wait
        shutdown.ensure_installed()
        cap = MAX_CHUNK_BYTES
        busy_at = -SHARE_LOOP_SECONDS  # when a turn of the loop last showed other work
        quiet_chunks = SHARE_MIN_CHUNKS  # chunks sent since then
        # Anything the view logs while it streams carries the connection id and stream.
        # Restored at the end by binding what was bound before (Ellipsis: nothing), not by
        # the tokens bind_contextvars returns: they would be kept for the connection's
        # whole life (two tokens and their dict, 312 bytes).
        was_id, was_stream = _log_context_before()
        structlog.contextvars.bind_contextvars(connection_id=conn.id, stream=conn.stream)
        try:
            finished = False
            while True:
                if step.blocked():
                    fut = step.waiting_on
                    assert fut is not None
                    try:
                        now = time.monotonic()
                        if waiting_since is None:
                            waiting_since = now
                        wake_at = None if heartbeat is None else last_sent + heartbeat
                        # A timer only when there is a connection to release: thousands of
                        # idle subscribers would otherwise each wake once more per event.
                        release_at = (
                            waiting_since + IDLE_STEP_SECONDS
                            if release_pending and opened_for_this_request()
                            else None
                        )
                        if release_at is not None and (wake_at is None or release_at < wake_at):
                            wake_at = release_at
                        timeout = None if wake_at is None else wake_at - now
                        if (timeout is None or timeout > 0) and conn.stop_reason is None:
                            # first_of(), awaited here: an idle stream then keeps no
                            # coroutine frame of its own for the wait (272 bytes).
                            waiter, alarm = arm_first_of(fut, timeout, alarms)
                            self._waiter = waiter
                            try:
                                await waiter
                            finally:
                                self._waiter = None
                                disarm_first_of(fut, waiter, alarm, alarms)
                        if not fut.done() and conn.stop_reason is None:
                            if release_at is not None and time.monotonic() >= release_at:
                                release_pending = False
                                await arelease_while_idle()
                                continue
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
                        if cancel_requested():
                            delivered = True  # the producer has seen this cancellation
                            raise asyncio.CancelledError() from None
                        if ready:
                            out.append(encode(item) if encode is not None else item)
                            size += len(out[-1])
                            conn.events_sent += 1
                if conn.stop_reason is not None:
                    break
                # Pull every item that is ready now, up to one chunk.
                began = time.monotonic()
                try:
                    while not finished and size < cap and not step.blocked():
                        ready, item = step.poll()
                        if not ready:
                            break
                        if waiting_since is not None:  # this item came after a wait
                            release_due = (
                                release_at_yield
                                and time.monotonic() - waiting_since >= IDLE_STEP_SECONDS
                            )
                            waiting_since = None
                        release_pending = release_while_waiting  # it may have queried again
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
                        await arelease_while_idle()
                    if heartbeat is not None:
                        last_sent = time.monotonic()
                if finished or conn.stop_reason is not None:
                    break
                if not step.blocked():
                    # More is ready (the chunk was full) or the producer asked for a loop
                    # turn: let other connections run before the next chunk.
                    took = time.monotonic() - began
                    seen = await yield_to_loop(busy_at, took)
                    # By the clock alone, a pause of the whole process while it made the
                    # chunk (the host busy with other work) looks like a quiet loop: such a
                    # chunk proves nothing, and sharing lasts a few chunks more.
                    paused = took >= SHARE_LOOP_SECONDS
                    quiet_chunks = 0 if seen != busy_at or paused else quiet_chunks + 1
                    busy_at = seen
                    cap = (
                        MIN_CHUNK_BYTES
                        if quiet_chunks < SHARE_MIN_CHUNKS
                        or time.monotonic() - busy_at < SHARE_LOOP_SECONDS
                        else MAX_CHUNK_BYTES
                    )
            if conn.stop_reason is not None:  # asked to stop: terminated, shutdown, timeout
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
            # (Or this loop failed while the producer was at an await: cancel that await,
            # else the producer would be left running and could not be closed.)
            await self._cancel_producer(step)
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
                try:
                    self.close(reason)
                finally:  # even if an observer's error escaped the close
                    structlog.contextvars.bind_contextvars(connection_id=was_id, stream=was_stream)

    def __call__(self) -> None:
        """``connection.wake`` while :meth:`frames` runs: from any thread, wake it to notice
        the connection's ``stop_reason``."""
        self._loop.call_soon_threadsafe(self._end_wait)

    def _end_wait(self) -> None:
        if self._waiter is not None:
            set_done(self._waiter)

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
        return error_frame(exc, error_id)


def _log_context_before() -> tuple[Any, Any]:
    """The ``connection_id`` and ``stream`` bound before a stream binds its own (Ellipsis:
    none), to bind back at its end. A function of its own: every local of
    :meth:`Stream.frames` is a slot of its frame, kept for the connection's whole life."""
    bound = structlog.contextvars.get_contextvars()
    return bound.get("connection_id", ...), bound.get("stream", ...)


# --------------------------------------------------------------------------- opening
@dataclass(frozen=True)
class StreamOptions:
    """A decorated view's options (``FROM_SETTINGS`` where the setting decides)."""

    name: str
    retry: int | None
    heartbeat: Any
    max_connections: Any
    max_connections_per_user: Any
    max_duration: Any
    send_timeout: Any


def open_stream(
    request: HttpRequest, user: Any, make_items: Callable[[], Any], options: StreamOptions
) -> HttpResponseBase:
    """Register the connection (or refuse it at a limit) and answer with its stream.

    ``user`` is loaded already (or ``None``); ``make_items`` calls the view, which returns
    its generator. The connection is registered before the view runs, so limits hold
    exactly; a view that fails to return a generator closes it with ``error``.
    """
    config = get_config()
    connection = connection_for(request, options.name, user, config)
    rejected = registry.open(
        connection,
        max_connections=pick(options.max_connections, config.max_connections),
        max_connections_per_user=pick(
            options.max_connections_per_user, config.max_connections_per_user
        ),
    )
    if rejected:
        return refusal(rejected, config)
    attach_to_request(request, connection)
    gzip = wants_gzip(request)
    stream = Stream(
        connection=connection,
        heartbeat=pick(options.heartbeat, config.heartbeat),
        max_duration=pick(options.max_duration, config.max_duration),
        send_timeout=pick(options.send_timeout, config.send_timeout),
        retry=options.retry,
        gzip=gzip,
    )
    try:
        items = make_items()
        is_async = hasattr(items, "__aiter__")
        encode = encoder_for(config.json_encoder)
        if is_async:
            stream.attach(items, encode=encode, release_db_when_idle=async_views_release())
        elif hasattr(items, "__iter__"):
            # Encoded in the generator's own thread, which runs on the view's connections.
            source = ThreadedSource(
                iter(items), encode, config.sync_read_ahead, lend_databases=True
            )
            stream.attach(source, encode=None, release_db_when_idle=False)
        else:
            raise TypeError(
                f"the @sse_stream view {options.name} returned {type(items).__name__}; it must "
                "be a generator (use yield) or return an iterable"
            )
    except BaseException:
        stream.close(reasons.ERROR)
        raise
    return SSEResponse(stream, is_async=is_async, gzip=gzip)
