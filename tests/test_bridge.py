"""The sync/async bridges: a sync generator in one thread, an async iterator on a private loop."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import itertools
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from django_flosse.streaming._bridge import ThreadedSource, iterate_on_private_loop


def encode(item: Any) -> bytes:
    return str(item).encode()


def wait_until(condition: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


class Recorder:
    """A sync generator that records the thread of every step and of its cleanup."""

    def __init__(self, count: int | None = None) -> None:
        self.count = count
        self.produced = 0
        self.step_threads: set[int] = set()
        self.cleanup_thread: int | None = None
        self.exit_seen = False

    def __iter__(self) -> Iterator[int]:
        try:
            for i in itertools.count() if self.count is None else range(self.count):
                self.step_threads.add(threading.get_ident())
                self.produced += 1
                yield i
        except GeneratorExit:
            self.exit_seen = True
            raise
        finally:
            self.cleanup_thread = threading.get_ident()


# ----------------------------------------------------------------------- ThreadedSource


async def test_all_steps_run_on_one_thread_that_is_not_the_loops() -> None:
    recorder = Recorder(count=50)
    source = ThreadedSource(iter(recorder), encode, ahead=2)
    frames = [frame async for frame in source]
    assert frames == [str(i).encode() for i in range(50)]
    assert len(recorder.step_threads) == 1
    assert threading.get_ident() not in recorder.step_threads
    assert source.thread is not None
    assert source.finished.wait(5)
    assert recorder.cleanup_thread in recorder.step_threads


@pytest.mark.parametrize("ahead", [1, 3])
async def test_never_more_than_ahead_items_ahead_of_the_consumer(ahead: int) -> None:
    recorder = Recorder()
    source = ThreadedSource(iter(recorder), encode, ahead=ahead)
    consumed = 0
    try:
        for _ in range(5):
            await source.__anext__()
            consumed += 1
            # Give the producer every chance to run ahead, then check it stopped in time.
            target = consumed + ahead
            await asyncio.to_thread(wait_until, lambda t=target: recorder.produced >= t, 5)
            await asyncio.sleep(0.05)
            # ``ahead`` frames buffered, plus at most the one item waiting for room.
            assert target <= recorder.produced <= target + 1
    finally:
        await source.aclose()
        assert source.thread is not None
        assert await asyncio.to_thread(source.finished.wait, 5)


async def test_aclose_closes_the_generator_in_its_own_thread() -> None:
    recorder = Recorder()
    source = ThreadedSource(iter(recorder), encode, ahead=1)
    assert await source.__anext__() == b"0"
    await source.aclose()
    assert source.thread is not None
    assert await asyncio.to_thread(source.finished.wait, 5)
    assert recorder.exit_seen  # GeneratorExit at its yield: its finally and with blocks ran
    assert recorder.cleanup_thread in recorder.step_threads


async def test_exceptions_propagate_after_the_items_before_them() -> None:
    def failing() -> Iterator[str]:
        yield "ok"
        raise LookupError("boom")

    source = ThreadedSource(failing(), encode, ahead=4)
    assert await source.__anext__() == b"ok"
    with pytest.raises(LookupError, match="boom"):
        await source.__anext__()


async def test_encode_errors_propagate() -> None:
    def bad_encode(item: Any) -> bytes:
        raise TypeError(f"cannot encode {item!r}")

    source = ThreadedSource(iter(["x"]), bad_encode, ahead=1)
    with pytest.raises(TypeError, match="cannot encode 'x'"):
        await source.__anext__()


def test_no_thread_error_when_closed_while_waiting_and_the_loop_is_gone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The WSGI path: a disconnect cancels a pending step, closes the source, closes the loop.

    The producer thread is still inside the generator; when it finishes it must not call
    into the closed loop. Fails today: ``_notify_consumer`` calls ``call_soon_threadsafe``
    for the waiter the cancelled step left behind, and the thread dies with "RuntimeError:
    Event loop is closed" (printed on every disconnect of a sync view under WSGI).
    """
    errors: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: errors.append(args.exc_value))
    release = threading.Event()

    def slow() -> Iterator[str]:
        yield "first"
        release.wait(5)
        yield "second"

    source = ThreadedSource(slow(), encode, ahead=1)
    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(source.__anext__()) == b"first"
        with pytest.raises(asyncio.TimeoutError):
            loop.run_until_complete(asyncio.wait_for(source.__anext__(), 0.05))
        loop.run_until_complete(source.aclose())
    finally:
        loop.close()
    release.set()
    assert source.thread is not None
    assert source.finished.wait(5)
    assert errors == []


# --------------------------------------------------------------- iterate_on_private_loop


class AsyncRecorder:
    def __init__(self) -> None:
        self.loops: set[int] = set()
        self.cleanup_loop: asyncio.AbstractEventLoop | None = None
        self.cleaned = False

    async def frames(self, count: int | None = None) -> AsyncIterator[bytes]:
        try:
            for i in itertools.count() if count is None else range(count):
                self.loops.add(id(asyncio.get_running_loop()))
                await asyncio.sleep(0)
                yield str(i).encode()
        finally:
            self.cleanup_loop = asyncio.get_running_loop()
            await asyncio.sleep(0)  # cleanup may await
            self.cleaned = True


def test_private_loop_iterates_to_the_end_and_cleans_up() -> None:
    recorder = AsyncRecorder()
    assert list(iterate_on_private_loop(recorder.frames(3))) == [b"0", b"1", b"2"]
    assert recorder.cleaned
    assert recorder.cleanup_loop is not None and not recorder.cleanup_loop.is_running()


def test_private_loop_closes_the_async_iterator_on_early_stop() -> None:
    recorder = AsyncRecorder()
    chunks = iterate_on_private_loop(recorder.frames())
    assert next(chunks) == b"0"
    assert next(chunks) == b"1"
    assert not recorder.cleaned
    chunks.close()  # what response.close() does when a WSGI client goes away
    assert recorder.cleaned
    assert recorder.cleanup_loop is not None
    assert recorder.loops == {id(recorder.cleanup_loop)}  # cleanup ran on the loop it ran on


def test_private_loop_propagates_exceptions() -> None:
    async def failing() -> AsyncIterator[bytes]:
        yield b"ok"
        raise LookupError("boom")

    chunks = iterate_on_private_loop(failing())
    assert next(chunks) == b"ok"
    with pytest.raises(LookupError, match="boom"):
        next(chunks)


def test_private_loop_is_reused_by_its_thread_and_closed_when_the_thread_ends() -> None:
    loops: list[asyncio.AbstractEventLoop] = []
    leftover: list[asyncio.Task[None]] = []

    async def frames() -> AsyncIterator[bytes]:
        loops.append(asyncio.get_running_loop())
        # A task the stream leaves behind must not run during the next connection.
        leftover.append(asyncio.get_running_loop().create_task(asyncio.sleep(3600)))
        yield b"x"

    def serve_two_connections() -> None:
        assert list(iterate_on_private_loop(frames())) == [b"x"]
        assert leftover[0].cancelled()
        assert list(iterate_on_private_loop(frames())) == [b"x"]

    thread = threading.Thread(target=serve_two_connections)
    thread.start()
    thread.join(10)
    assert loops[0] is loops[1]  # one loop per server thread, kept between connections
    gc.collect()
    assert loops[0].is_closed()  # and closed with its thread


def test_private_loop_keeps_one_context_across_steps() -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")

    async def frames() -> AsyncIterator[bytes]:
        var.set("set in the first step")
        yield b"1"
        yield var.get().encode()

    assert list(iterate_on_private_loop(frames())) == [b"1", b"set in the first step"]
    assert var.get() == "unset"  # the caller's context is untouched


def test_worker_threads_are_reused_then_exit_when_idle() -> None:
    from django_flosse.streaming import _workers as workers

    seen: list[threading.Thread] = []
    done = threading.Event()

    def work() -> None:
        seen.append(threading.current_thread())
        done.set()

    for _ in range(3):
        done.clear()
        workers.run_in_worker(work)
        assert done.wait(5)
        wait_until(lambda: bool(workers._idle), 5)
    assert len(set(seen)) == 1  # one thread served all three, one after the other
    assert seen[0].daemon
    seen[0].join(workers.IDLE_EXIT_SECONDS + 5)
    assert not seen[0].is_alive()  # and it went away once idle
