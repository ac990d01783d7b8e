"""Step: one ``__anext__()`` of an async iterator, started and resumed by hand.

What the stream relies on: ready items come out without a suspension (so they leave in one
chunk), a step that waits hands back the asyncio future it waits on and resumes as if it
ran in its own task, and cancellation reaches the producer at its ``await`` the way a
task's would, whatever the producer does with it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from django_flosse.streaming._stepping import Step, wait_for_future

DEADLINE = 30.0


async def drive(step: Step) -> Any:
    """Run one step to its item the way the stream does: poll, wait, poll again."""
    while True:
        ready, item = step.poll()
        if ready:
            return item
        if step.waiting_on is None:
            await asyncio.sleep(0)
        else:
            await wait_for_future(step.waiting_on)


# ------------------------------------------------------------------- ready items


def test_ready_items_come_out_without_an_event_loop() -> None:
    async def ready() -> AsyncIterator[int]:
        for i in range(3):
            yield i

    step = Step(ready())
    # No loop is running: had a step suspended even once, this could not work.
    assert [step.poll() for _ in range(3)] == [(True, 0), (True, 1), (True, 2)]
    assert not step.suspended
    with pytest.raises(StopAsyncIteration):
        step.poll()


def test_an_iterator_whose_anext_returns_an_awaitable_object() -> None:
    class Countdown:
        """An async iterator written as a class: ``__anext__`` returns a done Future."""

        def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
            self.loop, self.left = loop, 2

        def __aiter__(self) -> Countdown:
            return self

        def __anext__(self) -> asyncio.Future[int]:
            fut: asyncio.Future[int] = self.loop.create_future()
            if self.left:
                fut.set_result(self.left)
                self.left -= 1
            else:
                fut.set_exception(StopAsyncIteration())
            return fut

    loop = asyncio.new_event_loop()
    try:
        step = Step(Countdown(loop))
        assert [step.poll(), step.poll()] == [(True, 2), (True, 1)]
        with pytest.raises(StopAsyncIteration):
            step.poll()
    finally:
        loop.close()


# ----------------------------------------------------------------- waiting steps


async def test_a_step_waiting_on_a_future_hands_it_back_and_resumes_with_its_result() -> None:
    fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def producer() -> AsyncIterator[str]:
        yield "got " + await fut

    step = Step(producer())
    assert step.poll() == (False, None)
    assert step.suspended and step.waiting_on is fut and step.blocked()
    fut.set_result("value")
    assert not step.blocked()  # done: the stream resumes it now
    assert step.poll() == (True, "got value")
    assert not step.suspended and step.waiting_on is None


async def test_a_bare_yield_to_the_loop_waits_on_no_future() -> None:
    async def producer() -> AsyncIterator[str]:
        await asyncio.sleep(0)
        yield "after one turn"

    step = Step(producer())
    assert step.poll() == (False, None)
    assert step.suspended and step.waiting_on is None
    assert not step.blocked()  # nothing to wait for: resume on the next turn
    assert step.poll() == (True, "after one turn")


async def test_items_come_in_order_as_from_async_for() -> None:
    async def producer() -> AsyncIterator[int]:
        for i in range(5):
            if i % 2:
                await asyncio.sleep(0.001)  # a timer's future
            else:
                await asyncio.sleep(0)
            yield i

    step = Step(producer())
    items = [await asyncio.wait_for(drive(step), DEADLINE) for _ in range(5)]
    assert items == [0, 1, 2, 3, 4]
    with pytest.raises(StopAsyncIteration):
        await drive(step)


async def test_the_producers_exception_propagates_and_ends_the_step() -> None:
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def producer() -> AsyncIterator[str]:
        await fut
        raise KeyError("broken")
        yield "never"

    step = Step(producer())
    assert step.poll() == (False, None)
    fut.set_result(None)
    with pytest.raises(KeyError, match="broken"):
        step.poll()
    assert not step.suspended and step.waiting_on is None


async def test_awaiting_something_that_is_not_an_asyncio_future_is_a_clear_error() -> None:
    closed: list[bool] = []

    class Foreign:
        def __await__(self) -> Any:
            yield "a trio or curio trap"

    async def producer() -> AsyncIterator[str]:
        try:
            await Foreign()
            yield "never"
        finally:
            closed.append(True)

    source = producer()
    step = Step(source)
    with pytest.raises(RuntimeError, match=r"not an asyncio future.*asyncio-compatible"):
        step.poll()
    assert closed == [True]  # the producer's cleanup ran: it was not left suspended
    assert not step.suspended
    await source.aclose()  # what the stream does next: no "already running" error


# ------------------------------------------------------------------- cancellation


async def test_throw_raises_in_the_producer_and_cancels_what_it_waited_on() -> None:
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    seen: list[str] = []

    async def producer() -> AsyncIterator[str]:
        try:
            await fut
        except ValueError as exc:
            seen.append(str(exc))
        yield "recovered"

    step = Step(producer())
    assert step.poll() == (False, None)
    assert step.throw(ValueError("from outside")) == (True, "recovered")
    assert seen == ["from outside"]
    assert fut.cancelled()


async def test_cancel_delivers_cancelled_error_and_awaits_the_producers_cleanup() -> None:
    cleanup = asyncio.get_running_loop().create_future()
    events: list[str] = []

    async def producer() -> AsyncIterator[str]:
        try:
            await asyncio.get_running_loop().create_future()  # never done
            yield "never"
        except asyncio.CancelledError:
            events.append("cancelled")
            raise
        finally:
            await cleanup  # cleanup that awaits (closing a connection, say)
            events.append("cleaned up")

    step = Step(producer())
    assert step.poll() == (False, None)
    asyncio.get_running_loop().call_soon(cleanup.set_result, None)
    assert await asyncio.wait_for(step.cancel(), DEADLINE) is None
    assert events == ["cancelled", "cleaned up"]
    assert not step.suspended


@pytest.mark.parametrize(
    ("swallow", "outcome"),
    [
        ("return", None),  # 0.2.0's docs said catching and returning was fine
        ("yield", (True, "goodbye")),  # a last item: the caller decides what to do with it
    ],
)
async def test_cancel_when_the_producer_swallows_the_cancellation(
    swallow: str, outcome: tuple[bool, str] | None
) -> None:
    async def producer() -> AsyncIterator[str]:
        try:
            await asyncio.get_running_loop().create_future()
        except asyncio.CancelledError:
            await asyncio.sleep(0)
            if swallow == "return":
                return
        yield "goodbye"

    step = Step(producer())
    assert step.poll() == (False, None)
    assert await asyncio.wait_for(step.cancel(), DEADLINE) == outcome


async def test_cancel_without_delivering_lets_the_step_finish() -> None:
    fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    events: list[str] = []

    async def producer() -> AsyncIterator[str]:
        try:
            yield await fut
        except asyncio.CancelledError:
            events.append("cancelled")
            raise

    step = Step(producer())
    assert step.poll() == (False, None)
    asyncio.get_running_loop().call_soon(fut.set_result, "last")
    assert await asyncio.wait_for(step.cancel(deliver=False), DEADLINE) == (True, "last")
    assert events == []  # the producer never saw a CancelledError


async def test_cancel_of_a_step_that_is_not_suspended_does_nothing() -> None:
    async def producer() -> AsyncIterator[int]:
        yield 1

    step = Step(producer())
    assert step.poll() == (True, 1)
    assert await step.cancel() is None
    with pytest.raises(StopAsyncIteration):
        step.poll()  # the producer is untouched: it simply ends


# --------------------------------------------------------------- wait_for_future


async def test_wait_for_future_does_not_take_the_result() -> None:
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_soon(fut.set_exception, ValueError("for the producer"))
    await asyncio.wait_for(wait_for_future(fut), DEADLINE)  # does not raise
    assert isinstance(fut.exception(), ValueError)  # still there for the producer to read


async def test_cancelling_the_waiting_task_cancels_the_future_as_for_the_producer() -> None:
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def waiter() -> None:
        await wait_for_future(fut)

    task = asyncio.ensure_future(waiter())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert fut.cancelled()
