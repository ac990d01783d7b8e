"""The stream lifecycle: from the producer's items to the chunks handed to the server.

One async implementation serves all four combinations of view and server (``bridge.py``
adapts the other three), so frames, heartbeats, errors and close reasons are the same
everywhere. Per event the hot path does one encode to bytes and a few integer updates: no
task, no timer, no lock. Events that are ready together leave together in one chunk, since
each chunk costs Django and the server a full trip through their send path; a ready event
never waits for another, and a flooding producer gives the loop a turn after every chunk.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
import zlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

from django.conf import settings

from . import reasons
from .events import KEEPALIVE, encode_event, retry_frame
from .log import CONNECTION_CLOSED, CONNECTION_OPENED, STREAM_ERROR, get_logger
from .stepping import Step, wait_for_future

__all__ = ["MAX_CHUNK_BYTES", "Stream"]

#: A chunk is sent once it reaches this size even if more events are ready.
MAX_CHUNK_BYTES = 64 * 1024

#: What clients see when a stream fails and ``DEBUG`` is off (plus the error id).
ERROR_MESSAGE = "The event stream failed on the server."


def _cancel_requested() -> bool:
    """Is the current task being cancelled (rather than a producer's own timeout firing)?"""
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    # Python 3.10 has no Task.cancelling() and no asyncio.timeout(): any cancel is real.
    return cancelling is None or cancelling() > 0


class Stream:
    """One connection's stream: pulls items, encodes them, counts what it sends.

    ``source`` is an async iterator of yielded items (or of already encoded frames when
    ``encode`` is ``None``: the sync bridge encodes in its own thread).
    """

    def __init__(
        self,
        source: AsyncIterator[Any],
        *,
        name: str,
        encode: Callable[[Any], bytes] | None,
        heartbeat: float | None,
        retry: int | None = None,
        gzip: bool = False,
    ) -> None:
        self.name = name
        self.id = uuid.uuid4().hex
        self.opened_at: float | None = None
        self.events_sent = 0
        self.bytes_sent = 0
        self.last_event_at: float | None = None
        self.close_reason: str | None = None
        self.error_id: str | None = None
        self._source = source
        self._encode = encode
        self._heartbeat = heartbeat
        self._first = retry_frame(retry) if retry is not None else b""
        self._gzip = zlib.compressobj(wbits=31) if gzip else None

    async def frames(self) -> AsyncGenerator[bytes, None]:
        """The chunks to send, in order. Close it (``aclose``) to cancel the stream."""
        step = Step(self._source)
        encode = self._encode
        heartbeat = self._heartbeat
        out: list[bytes] = [self._first] if self._first else []
        size = len(self._first)
        last_sent = started = time.monotonic()
        reason = reasons.CANCELLED
        self.opened_at = time.time()
        get_logger().info(CONNECTION_OPENED, connection_id=self.id, stream=self.name)
        try:
            finished = False
            while True:
                if step.blocked():
                    fut = step.waiting_on
                    assert fut is not None
                    try:
                        if heartbeat is None:
                            await wait_for_future(fut)
                        else:
                            timeout = last_sent + heartbeat - time.monotonic()
                            if timeout > 0:
                                await asyncio.wait((fut,), timeout=timeout)
                            if not fut.done():
                                yield self._count(KEEPALIVE)
                                last_sent = time.monotonic()
                                continue
                    except asyncio.CancelledError:
                        if _cancel_requested():
                            raise
                        # The producer's own asyncio.timeout() cancelled this task: hand the
                        # cancellation to the producer, whose timeout turns it into TimeoutError.
                        try:
                            ready, item = step.throw(asyncio.CancelledError())
                        except StopAsyncIteration:
                            ready, finished = False, True
                        if _cancel_requested():
                            raise asyncio.CancelledError() from None
                        if ready:
                            out.append(encode(item) if encode is not None else item)
                            size += len(out[-1])
                            self.events_sent += 1
                # Pull every item that is ready now, up to one chunk.
                try:
                    while not finished and size < MAX_CHUNK_BYTES and not step.blocked():
                        ready, item = step.poll()
                        if not ready:
                            break
                        frame = encode(item) if encode is not None else item
                        out.append(frame)
                        size += len(frame)
                        self.events_sent += 1
                except StopAsyncIteration:
                    finished = True
                if out:
                    if self.events_sent:
                        self.last_event_at = time.time()
                    chunk = b"".join(out) if len(out) > 1 else out[0]
                    out.clear()
                    size = 0
                    yield self._count(chunk)
                    if heartbeat is not None:
                        last_sent = time.monotonic()
                if finished:
                    break
                if not step.blocked():
                    # More is ready (the chunk was full) or the producer asked for a loop
                    # turn: let other connections run before the next chunk.
                    await asyncio.sleep(0)
            reason = reasons.COMPLETED
            if self._gzip is not None:
                tail = self._gzip.flush()
                self.bytes_sent += len(tail)
                yield tail
        except (asyncio.CancelledError, GeneratorExit):
            reason = reasons.CANCELLED
            await self._cancel_producer(step)
            raise
        except Exception as exc:  # the producer raised, or yielded something invalid
            reason = reasons.ERROR
            out.append(self._fail(exc))  # after the events that were ready before it
            yield self._count(b"".join(out))
        finally:
            self.close_reason = reason
            try:
                aclose = getattr(self._source, "aclose", None)
                if aclose is not None:
                    await aclose()
            finally:
                get_logger().info(
                    CONNECTION_CLOSED,
                    connection_id=self.id,
                    stream=self.name,
                    reason=reason,
                    duration=round(time.monotonic() - started, 3),
                    events=self.events_sent,
                    bytes=self.bytes_sent,
                )

    def _count(self, chunk: bytes) -> bytes:
        if self._gzip is not None:
            chunk = self._gzip.compress(chunk) + self._gzip.flush(zlib.Z_SYNC_FLUSH)
        self.bytes_sent += len(chunk)
        return chunk

    async def _cancel_producer(self, step: Step) -> None:
        if not step.suspended:
            return
        try:
            await step.cancel()
        except Exception:
            get_logger().warning(
                STREAM_ERROR,
                connection_id=self.id,
                stream=self.name,
                during="cleanup after cancellation",
                exc_info=True,
            )

    def _fail(self, exc: BaseException) -> bytes:
        """Log the failure with its traceback and return the one error frame for the client."""
        self.error_id = error_id = secrets.token_hex(4)
        get_logger().error(
            STREAM_ERROR, connection_id=self.id, stream=self.name, error_id=error_id, exc_info=exc
        )
        payload: dict[str, str] = {"message": ERROR_MESSAGE, "error_id": error_id}
        if settings.DEBUG:
            payload["detail"] = f"{type(exc).__name__}: {exc}"
        return encode_event(json.dumps(payload), event="error").encode()

