"""How the stream's hot loop waits and shares the event loop (streaming/_pacing.py).

``first_of`` must never cancel what it waits on (the producer awaits ``fut``; ``stop`` is the
connection's), and must leave nothing behind on either future. ``yield_to_loop`` is checked
against a fake clock: a table of how long the loop's turns take -> how many turns it yields.
"""

from __future__ import annotations

import asyncio
import math
import sys
import types
from typing import Any

import pytest

from django_flosse.streaming import _pacing
from django_flosse.streaming._alarms import alarms_of
from django_flosse.streaming._pacing import (
    SHARE_FACTOR,
    SHARE_LOOP_SECONDS,
    SHARE_TURNS,
    cancel_requested,
    first_of,
    set_done,
    yield_to_loop,
)

#: Bound on any wait in these tests (a loaded machine); nothing here should come near it.
DEADLINE = 30.0


class CountingFuture(asyncio.Future[Any]):
    """A future that knows which of the done callbacks added to it are still registered
    (a done future has run and dropped its callbacks)."""

    def __init__(self) -> None:
        super().__init__()
        self._added: list[Any] = []

    def add_done_callback(self, fn: Any, *, context: Any = None) -> None:
        self._added.append(fn)
        super().add_done_callback(fn, context=context)

    def remove_done_callback(self, fn: Any) -> int:
        self._added = [added for added in self._added if added != fn]
        return super().remove_done_callback(fn)

    @property
    def registered(self) -> int:
        return 0 if self.done() else len(self._added)


def live_alarms() -> int:
    """The alarms (``first_of``'s timeouts) still pending on the running loop."""
    return len(alarms_of(asyncio.get_running_loop()))


# ---------------------------------------------------------------------------- first_of


async def test_first_of_returns_when_the_future_is_done_and_cancels_nothing() -> None:
    fut, stop = CountingFuture(), CountingFuture()
    asyncio.get_running_loop().call_soon(fut.set_result, "item")
    await asyncio.wait_for(first_of(fut, stop, timeout=DEADLINE), DEADLINE)
    assert fut.result() == "item"
    assert not stop.done()
    assert (fut.registered, stop.registered) == (0, 0)  # no callback left behind
    assert live_alarms() == 0  # nor a timeout


async def test_first_of_returns_when_asked_to_stop_and_leaves_the_future_pending() -> None:
    fut, stop = CountingFuture(), CountingFuture()
    asyncio.get_running_loop().call_soon(set_done, stop)
    await asyncio.wait_for(first_of(fut, stop, timeout=None), DEADLINE)
    assert stop.done()
    assert not fut.done()  # the producer still awaits it: never cancelled
    assert (fut.registered, stop.registered) == (0, 0)
    fut.set_result("later")  # no stale callback fires into a finished wait


async def test_first_of_returns_after_the_timeout_with_both_still_pending() -> None:
    fut, stop = CountingFuture(), CountingFuture()
    await asyncio.wait_for(first_of(fut, stop, timeout=0.01), DEADLINE)
    assert not fut.done() and not stop.done()
    assert (fut.registered, stop.registered) == (0, 0)
    assert live_alarms() == 0


async def test_first_of_without_a_timeout_waits_for_one_of_them() -> None:
    fut, stop = CountingFuture(), CountingFuture()
    waiting = asyncio.ensure_future(first_of(fut, stop, timeout=None))
    for _ in range(10):
        await asyncio.sleep(0)
    assert not waiting.done()
    fut.set_result(None)
    await asyncio.wait_for(waiting, DEADLINE)


async def test_first_of_returns_at_once_when_one_is_done_already() -> None:
    fut, stop = CountingFuture(), CountingFuture()
    set_done(stop)
    await asyncio.wait_for(first_of(fut, stop, timeout=None), DEADLINE)
    assert not fut.done()


async def test_cancelling_the_wait_cancels_neither_future() -> None:
    fut, stop = CountingFuture(), CountingFuture()
    waiting = asyncio.ensure_future(first_of(fut, stop, timeout=DEADLINE))
    await asyncio.sleep(0)
    assert live_alarms() == 1
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert not fut.cancelled() and not stop.cancelled()
    assert (fut.registered, stop.registered) == (0, 0)
    assert live_alarms() == 0


async def test_everything_that_ends_a_wait_at_once_ends_it_once_and_quietly() -> None:
    """The wait's future is its own callback: the producer's future and the stop both done
    before the wait resumes call it twice, which raises nothing."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    try:
        fut, stop = CountingFuture(), CountingFuture()
        waiting = asyncio.ensure_future(first_of(fut, stop, timeout=DEADLINE))
        await asyncio.sleep(0)  # it waits now
        set_done(fut)
        set_done(stop)
        await asyncio.wait_for(waiting, DEADLINE)
        await asyncio.sleep(0)  # any callback still queued runs
        assert errors == []
        assert live_alarms() == 0
    finally:
        loop.set_exception_handler(None)


def test_set_done_is_idempotent() -> None:
    loop = asyncio.new_event_loop()
    try:
        fut: asyncio.Future[None] = loop.create_future()
        set_done(fut)
        set_done(fut)  # a second wake (a stop and a timer, say) is harmless
        assert fut.done() and fut.result() is None
    finally:
        loop.close()


# ----------------------------------------------------------------------- yield_to_loop


class FakeLoopTurns:
    """``asyncio.sleep(0)`` and ``time.monotonic()`` for ``_pacing``: each turn of the loop
    takes ``turn`` seconds of a fake clock that starts at 100."""

    def __init__(self, turn: float) -> None:
        self.now = 100.0
        self.turn = turn
        self.turns = 0

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        assert delay == 0
        self.turns += 1
        self.now += self.turn


@pytest.fixture
def fake_turns(monkeypatch: pytest.MonkeyPatch) -> Any:
    def make(turn: float) -> FakeLoopTurns:
        fake = FakeLoopTurns(turn)
        monkeypatch.setattr(_pacing, "time", types.SimpleNamespace(monotonic=fake.monotonic))
        monkeypatch.setattr(_pacing, "asyncio", types.SimpleNamespace(sleep=fake.sleep))
        return fake

    return make


OTHERS_BUSY = 0.001  # a turn this long means other connections had work
IDLE = 0.0  # nobody else on the loop


@pytest.mark.parametrize(
    ("busy_age", "took", "turn", "turns", "busy_again"),
    [
        # Alone on the loop, no recent sign of others: one turn per chunk.
        (10.0, 1.0, IDLE, 1, False),
        # Others showed work long ago (the sharing window is over): still one turn.
        (SHARE_LOOP_SECONDS + 0.001, 1.0, IDLE, 1, False),
        # Others showed work just now: share, up to SHARE_TURNS extra turns ...
        (0.001, 1.0, IDLE, SHARE_TURNS + 1, False),
        # ... and each busy turn keeps the window open: still at most SHARE_TURNS extra.
        (10.0, 1.0, OTHERS_BUSY, SHARE_TURNS + 1, True),
        # ... but no longer than others have had SHARE_FACTOR times as long as the chunk
        # took (turns of 1 ms against a chunk of 2.5 ms: 2.5 x SHARE_FACTOR turns, rounded up).
        (10.0, 0.0025, OTHERS_BUSY, math.ceil(2.5 * SHARE_FACTOR), True),
        (0.001, 0.0, IDLE, 1, False),
    ],
)
async def test_yield_to_loop_turns(
    fake_turns: Any, busy_age: float, took: float, turn: float, turns: int, busy_again: bool
) -> None:
    fake = fake_turns(turn)
    busy_at = fake.now - busy_age
    returned = await yield_to_loop(busy_at, took)
    assert fake.turns == turns
    if busy_again:
        assert returned == fake.now  # the last busy turn
    else:
        assert returned == busy_at


async def test_yield_to_loop_lets_other_tasks_run() -> None:
    ran: list[str] = []

    async def other() -> None:
        ran.append("other")

    task = asyncio.ensure_future(other())
    await yield_to_loop(-SHARE_LOOP_SECONDS, 0.0)
    assert ran == ["other"]
    await task


# -------------------------------------------------------------------- cancel_requested


async def test_a_task_that_is_not_cancelled_is_not_cancel_requested() -> None:
    assert cancel_requested() is False


async def test_a_cancelled_task_is_cancel_requested() -> None:
    seen: list[bool] = []

    async def victim() -> None:
        try:
            await asyncio.Future()
        except asyncio.CancelledError:
            seen.append(cancel_requested())
            raise

    task = asyncio.ensure_future(victim())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen == [True]


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.timeout() is new in 3.11")
async def test_a_producers_own_timeout_is_not_a_cancel_request() -> None:
    async with asyncio.timeout(DEADLINE):  # an outer, unexpired timeout changes nothing
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0):  # fires on the next turn: no real waiting
                await asyncio.Future()
        assert cancel_requested() is False


def test_without_task_cancelling_every_cancellation_is_real(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Python 3.10: tasks have no cancelling(); a CancelledError can only be a real cancel.
    monkeypatch.setattr(asyncio, "current_task", lambda: object())
    assert cancel_requested() is True
