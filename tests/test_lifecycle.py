"""The stream lifecycle, in process: batching, heartbeats, cancellation, close reasons."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from django_flosse import reasons
from django_flosse.events import KEEPALIVE, encode_event
from django_flosse.observing.registry import Connection, Registry
from django_flosse.streaming import _lifecycle, _pacing
from django_flosse.streaming._alarms import alarms_of
from django_flosse.streaming._frames import ERROR_MESSAGE, final_frame
from django_flosse.streaming._lifecycle import MAX_CHUNK_BYTES, Stream
from django_flosse.streaming._pacing import MIN_CHUNK_BYTES, SHARE_LOOP_SECONDS, SHARE_MIN_CHUNKS


@pytest.fixture(autouse=True)
def _no_observers(settings: Any) -> None:
    """These tests are about the stream itself: no metrics or logs observers."""
    settings.FLOSSE = {"OBSERVERS": []}


def encode(item: Any) -> bytes:
    return encode_event(str(item)).encode()


def make_stream(source: AsyncIterator[Any], **kwargs: Any) -> Stream:
    registry = Registry()
    connection = Connection(id=uuid.uuid4().hex, stream="tests.lifecycle")
    assert registry.open(connection) is None
    kwargs.setdefault("heartbeat", None)
    return Stream(source, connection=connection, encode=encode, registry=registry, **kwargs)


async def collect(stream: Stream) -> list[bytes]:
    return [chunk async for chunk in stream.frames()]


async def test_ready_events_leave_together_in_one_chunk() -> None:
    async def ready() -> AsyncIterator[str]:
        for i in range(5):
            yield f"e{i}"

    stream = make_stream(ready())
    chunks = await collect(stream)
    assert chunks == [b"".join(encode(f"e{i}") for i in range(5))]
    assert stream.events_sent == 5
    assert stream.close_reason == reasons.COMPLETED


async def test_a_ready_event_does_not_wait_for_the_next() -> None:
    second = asyncio.Event()
    seen: list[bytes] = []

    async def slow() -> AsyncIterator[str]:
        yield "first"
        await second.wait()
        yield "second"

    stream = make_stream(slow())
    async for chunk in stream.frames():
        seen.append(chunk)
        second.set()  # only released once "first" has left on its own
    assert seen == [encode("first"), encode("second")]


async def test_a_chunk_never_exceeds_the_limit_by_more_than_one_event() -> None:
    event_size = len(encode("x" * 1000))

    async def flood() -> AsyncIterator[str]:
        for _ in range(300):
            yield "x" * 1000

    stream = make_stream(flood())
    chunks = await collect(stream)
    assert len(chunks) > 1
    assert all(len(chunk) < MAX_CHUNK_BYTES + event_size for chunk in chunks)
    assert b"".join(chunks) == encode("x" * 1000) * 300


class _VirtualClock:
    """``time`` for the stream's pacing, with a ``monotonic()`` that moves only when told.

    Sharing the loop is decided by the clock: how long a turn of the loop took, how long
    since one showed other work. On a real clock a test of it fails whenever the host
    pauses the process (the suite under load did, one run in ten); on this one the test
    says exactly how long each turn and each chunk took."""

    def __init__(self) -> None:
        self.now = time.monotonic()

    def monotonic(self) -> float:
        return self.now

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


async def test_a_flooding_stream_shares_the_loop_while_others_have_work(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A flood takes full chunks alone, small ones while another task needs the loop (also
    in the quiet turns between that task's steps), never more than one chunk per turn of
    that task (a new request's dozens of turns), and full ones again once the loop has been
    quiet for ``SHARE_LOOP_SECONDS``."""
    clock = _VirtualClock()
    monkeypatch.setattr(_lifecycle, "time", clock)
    monkeypatch.setattr(_pacing, "time", clock)
    event_size = len(encode(10**6))
    phase = "alone"
    chunks: list[tuple[str, int]] = []

    async def flood() -> AsyncIterator[int]:
        for i in range(10**6):
            yield i

    async def read_flood() -> None:
        frames = make_stream(flood()).frames()
        async for chunk in frames:
            chunks.append((phase, len(chunk)))
            clock.now += 0.0001  # making and sending a chunk: 0.1 ms
            if phase == "done":
                break
        await frames.aclose()

    async def quiet_turns(seconds: float) -> None:
        """Turns in which this task does nothing (it waits on its thread, say) while the
        flood's chunks take the time."""
        until = clock.now + seconds
        while clock.now < until:
            await asyncio.sleep(0)

    reader = asyncio.create_task(read_flood())
    full = MAX_CHUNK_BYTES - event_size
    await quiet_turns(0.001)  # alone
    phase = "request"
    flood_chunks_per_turn = []
    for _ in range(20):  # another task: a little work, then a wait (a hop to its thread)
        before = len(chunks)
        clock.now += 0.0005  # this turn takes 0.5 ms: the flood's turn sees it
        await asyncio.sleep(0)
        flood_chunks_per_turn.append(len(chunks) - before)
        await quiet_turns(0.002)
    phase = "after"
    await quiet_turns(SHARE_LOOP_SECONDS + 0.005)  # the request has its first event
    phase = "done"
    await asyncio.wait_for(reader, 10)

    alone = [size for p, size in chunks if p == "alone"]
    shared = [size for p, size in chunks if p == "request"][1:]  # the first was under way
    after = [size for p, size in chunks if p == "after"]
    assert max(alone) >= full
    assert len(shared) >= 20 * 10 and max(shared) < MIN_CHUNK_BYTES + event_size
    assert max(flood_chunks_per_turn) <= 1
    assert after[0] < MIN_CHUNK_BYTES + event_size and after[-1] >= full


async def test_a_pause_of_the_whole_process_does_not_end_the_sharing() -> None:
    """The host may pause the process for longer than ``SHARE_LOOP_SECONDS`` while the flood
    makes a chunk (a blocking call stands in for it here). By the clock the loop then looks
    quiet for that long, but no turn showed it quiet: the flood must go on sharing, not send
    full chunks in the middle of another task's work (it did: the test above, under load)."""
    event_size = len(encode(10**6))
    pause_now = False
    paused_in: int | None = None  # chunks received when the pause happened
    chunks: list[int] = []

    async def flood() -> AsyncIterator[int]:
        nonlocal pause_now, paused_in
        for i in range(10**6):
            if pause_now:
                pause_now, paused_in = False, len(chunks)
                time.sleep(3 * SHARE_LOOP_SECONDS)  # the whole process stops
            yield i

    async def read_flood() -> None:
        frames = make_stream(flood()).frames()
        async for chunk in frames:
            chunks.append(len(chunk))
            if paused_in is not None and len(chunks) > paused_in + SHARE_MIN_CHUNKS + 1:
                break
        await frames.aclose()

    reader = asyncio.create_task(read_flood())
    deadline = time.monotonic() + 10
    while not (chunks and chunks[-1] >= MAX_CHUNK_BYTES - event_size):
        assert time.monotonic() < deadline, "the flood never sent a full chunk alone"
        await asyncio.sleep(0)
    busy_until = time.perf_counter() + 0.0005
    while time.perf_counter() < busy_until:  # another task's work: the flood now shares
        pass
    pause_now = True
    await asyncio.wait_for(reader, 10)  # the reader's turns are quiet ones from here

    assert paused_in is not None
    # The chunk that was paused in, and the next ones: all small.
    after_pause = chunks[paused_in : paused_in + SHARE_MIN_CHUNKS]
    assert len(after_pause) == SHARE_MIN_CHUNKS
    assert max(after_pause) < MIN_CHUNK_BYTES + event_size, chunks


async def test_heartbeats_when_idle_never_cancel_the_pending_step() -> None:
    """The producer awaits far longer than the heartbeat; its step must survive the waits."""
    release = asyncio.Event()
    log: list[str] = []

    async def idle() -> AsyncIterator[str]:
        try:
            yield "before"
            await release.wait()  # released only after keep-alives were sent
            log.append("resumed")
            yield "after"
        except asyncio.CancelledError:
            log.append("cancelled")
            raise

    stream = make_stream(idle(), heartbeat=0.02)
    chunks = []
    async for chunk in stream.frames():
        chunks.append(chunk)
        if chunks.count(KEEPALIVE) == 3:
            release.set()
    assert chunks[0] == encode("before")
    assert chunks[1:4] == [KEEPALIVE] * 3
    assert encode("after") in chunks[4:]
    assert log == ["resumed"]
    assert stream.close_reason == reasons.COMPLETED


async def test_no_heartbeat_while_events_flow() -> None:
    async def steady() -> AsyncIterator[int]:
        for i in range(20):
            await asyncio.sleep(0)
            yield i

    chunks = await collect(make_stream(steady(), heartbeat=60))
    assert KEEPALIVE not in chunks


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.timeout() is new in 3.11")
@pytest.mark.parametrize("heartbeat", [None, 30.0])
async def test_producer_keeps_streaming_after_its_own_timeout_fires(
    heartbeat: float | None,
) -> None:
    async def with_timeout() -> AsyncIterator[str]:
        yield "start"
        try:
            async with asyncio.timeout(0.05):  # type: ignore[attr-defined,unused-ignore]
                await asyncio.sleep(60)
        except TimeoutError:
            yield "timed out"
        await asyncio.sleep(0)
        yield "after"

    stream = make_stream(with_timeout(), heartbeat=heartbeat)
    chunks = await asyncio.wait_for(collect(stream), 10)
    assert b"".join(chunks) == encode("start") + encode("timed out") + encode("after")
    assert stream.close_reason == reasons.COMPLETED


async def _cancel_after_first_chunk(stream: Stream) -> list[bytes]:
    chunks: list[bytes] = []
    first = asyncio.Event()

    async def consume() -> None:
        async for chunk in stream.frames():
            chunks.append(chunk)
            first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 5)
    await asyncio.sleep(0.01)  # let the producer reach its await
    task.cancel()  # what Django's ASGI handler does on http.disconnect
    with pytest.raises(asyncio.CancelledError):
        await task
    return chunks


async def test_cancellation_is_raised_in_the_producer_and_its_finally_runs() -> None:
    log: list[str] = []

    async def endless() -> AsyncIterator[str]:
        try:
            yield "first"
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            log.append("cancelled")
            raise
        finally:
            await asyncio.sleep(0)  # cleanup may await: a bare yield,
            await asyncio.sleep(0.01)  # and a real timer
            log.append("finally")

    stream = make_stream(endless(), heartbeat=30)
    chunks = await _cancel_after_first_chunk(stream)
    assert chunks == [encode("first")]
    assert log == ["cancelled", "finally"]
    assert stream.close_reason == reasons.CANCELLED


async def test_a_producer_that_swallows_the_cancellation_ends_cancelled() -> None:
    log: list[str] = []

    async def swallows() -> AsyncIterator[str]:
        try:
            yield "first"
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            log.append("swallowed")
            return  # as 0.2.0's docs said was fine

    stream = make_stream(swallows(), heartbeat=None)
    chunks = await _cancel_after_first_chunk(stream)
    assert chunks == [encode("first")]
    assert log == ["swallowed"]
    assert stream.close_reason == reasons.CANCELLED


async def test_aclose_of_the_frames_cancels_the_producer() -> None:
    log: list[str] = []

    async def endless() -> AsyncIterator[int]:
        try:
            for i in range(10**9):
                yield i
                await asyncio.sleep(0.001)
        finally:
            log.append("finally")

    stream = make_stream(endless())
    frames = stream.frames()
    assert await frames.__anext__() == encode(0)
    await frames.aclose()
    assert log == ["finally"]
    assert stream.close_reason == reasons.CANCELLED


async def test_completed() -> None:
    async def three() -> AsyncIterator[int]:
        for i in range(3):
            await asyncio.sleep(0)
            yield i

    stream = make_stream(three())
    assert b"".join(await collect(stream)) == encode(0) + encode(1) + encode(2)
    assert stream.close_reason == reasons.COMPLETED
    assert stream.events_sent == 3


async def test_error_sends_one_error_frame_after_the_events_before_it() -> None:
    async def fails() -> AsyncIterator[str]:
        yield "before"
        raise RuntimeError("secret detail")

    stream = make_stream(fails())
    chunks = await collect(stream)
    body = b"".join(chunks)
    assert body.startswith(encode("before"))
    error = body[len(encode("before")) :].decode()
    assert error.startswith("event: error\ndata: ")
    payload = json.loads(error.removeprefix("event: error\ndata: ").strip())
    assert payload == {"message": ERROR_MESSAGE, "error_id": stream.error_id}
    assert b"secret" not in body
    assert stream.close_reason == reasons.ERROR
    assert stream.events_sent == 1


async def test_a_failure_of_the_stream_while_the_producer_awaits_cancels_that_await(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Regression: the stream's own step failed (an idle release refused by asgiref) while
    the producer was at an await; the producer was left running, and closing it raised
    "aclose(): asynchronous generator is already running" out of the stream."""
    from django_flosse.streaming import _lifecycle

    async def refused() -> None:
        raise RuntimeError("the release failed")

    monkeypatch.setattr(_lifecycle, "arelease_while_idle", refused)
    monkeypatch.setattr(_lifecycle, "opened_for_this_request", lambda: True)  # one to release
    log: list[str] = []

    async def waits() -> AsyncIterator[str]:
        try:
            yield "before"
            await asyncio.sleep(3600)  # long past the idle step: the release is tried
            yield "never"
        except asyncio.CancelledError:
            log.append("cancelled")
            raise
        finally:
            log.append("finally")

    stream = make_stream(waits(), release_db_when_idle=True)
    body = b"".join(await collect(stream))
    assert body.startswith(encode("before") + b"event: error\n")
    assert log == ["cancelled", "finally"]
    assert stream.close_reason == reasons.ERROR


async def test_an_item_that_cannot_be_encoded_ends_the_stream_with_an_error() -> None:
    def picky(item: Any) -> bytes:
        if item == "bad":
            raise ValueError("cannot encode")
        return encode(item)

    async def items() -> AsyncIterator[str]:
        yield "good"
        yield "bad"
        yield "never"

    registry = Registry()
    connection = Connection(id="c1", stream="tests.lifecycle")
    registry.open(connection)
    stream = Stream(items(), connection=connection, encode=picky, heartbeat=None, registry=registry)
    body = b"".join(await collect(stream))
    assert body.startswith(encode("good") + b"event: error\n")
    assert b"never" not in body
    assert stream.close_reason == reasons.ERROR


async def test_bytes_sent_is_the_sum_of_the_chunk_lengths() -> None:
    release = asyncio.Event()

    async def items() -> AsyncIterator[str]:
        yield "a"
        await release.wait()
        yield "b" * 100
        yield "ü"

    stream = make_stream(items(), retry=1500, heartbeat=0.02)
    chunks = []
    async for chunk in stream.frames():
        chunks.append(chunk)
        if chunk == KEEPALIVE:
            release.set()
    assert chunks[0].startswith(b"retry: 1500\n\n")
    assert KEEPALIVE in chunks
    assert stream.bytes_sent == sum(len(chunk) for chunk in chunks)
    assert stream.events_sent == 3


# ------------------------------------------------------------------- asked to stop
# The stream has no future of its own for a stop: the connection's wake hook completes its
# idle wait, and the loop reads ``connection.stop_reason``.


async def _stopped_stream(when: str) -> tuple[Stream, list[bytes], list[str]]:
    """Ask a stream to stop (from another thread) ``when``: ``"idle"`` while it waits for
    its producer, ``"sending"`` while the server holds its first chunk, ``"before"`` it
    starts (as at shutdown)."""
    log: list[str] = []
    waiting = asyncio.Event()

    async def producer() -> AsyncIterator[str]:
        try:
            yield "first"
            waiting.set()
            await asyncio.Event().wait()  # never set: only the stop ends the stream
            yield "never"
        finally:
            log.append("producer closed")

    stream = make_stream(producer(), heartbeat=30.0)
    connection = stream.connection

    def stop_from_another_thread() -> None:
        thread = threading.Thread(target=connection.request_stop, args=(reasons.TERMINATED,))
        thread.start()
        thread.join()

    if when == "before":
        connection.stop_reason = reasons.SHUTDOWN  # as registry.open does while stopping
    chunks: list[bytes] = []
    stopper = None
    async for chunk in stream.frames():
        chunks.append(chunk)
        if when == "sending" and len(chunks) == 1:
            stop_from_another_thread()
        elif when == "idle" and len(chunks) == 1:
            stopper = asyncio.ensure_future(_stop_once_waiting(waiting, connection))
    if stopper is not None:
        await stopper
    return stream, chunks, log


async def _stop_once_waiting(waiting: asyncio.Event, connection: Connection) -> None:
    await waiting.wait()  # the producer waits: so does the stream, or it is about to
    await asyncio.to_thread(connection.request_stop, reasons.TERMINATED)


def _final(chunk: bytes) -> bytes:
    """A final frame without its ``retry:`` line (jittered)."""
    return b"".join(line for line in chunk.splitlines(True) if not line.startswith(b"retry:"))


async def test_a_stop_asked_from_another_thread_ends_an_idle_stream_with_its_reason() -> None:
    stream, chunks, log = await asyncio.wait_for(_stopped_stream("idle"), 10)
    assert chunks[0] == encode("first")
    assert [_final(c) for c in chunks[1:]] == [_final(final_frame(reasons.TERMINATED))]
    assert stream.close_reason == reasons.TERMINATED
    assert log == ["producer closed"]
    assert len(alarms_of(asyncio.get_running_loop())) == 0  # no wait left behind


async def test_a_stop_asked_while_a_chunk_is_sent_ends_the_stream_after_it() -> None:
    stream, chunks, log = await asyncio.wait_for(_stopped_stream("sending"), 10)
    assert chunks[0] == encode("first")
    assert [_final(c) for c in chunks[1:]] == [_final(final_frame(reasons.TERMINATED))]
    assert stream.close_reason == reasons.TERMINATED
    assert log == ["producer closed"]


async def test_a_stop_asked_before_the_stream_starts_ends_it_at_once() -> None:
    stream, chunks, _ = await asyncio.wait_for(_stopped_stream("before"), 10)
    assert [_final(c) for c in chunks] == [_final(final_frame(reasons.SHUTDOWN))]
    assert stream.close_reason == reasons.SHUTDOWN
