"""The waits' timeouts of one event loop on one timer (streaming/_alarms.py).

What a stream relies on: an alarm completes its waiter once its time has come and never
before, in the order of their times whatever the order they were added in; a cancelled one
never fires; the heap does not grow with waits that ended early (a broadcast wakes every
idle stream per event); and nothing stays scheduled once no alarm is left.
"""

from __future__ import annotations

import asyncio

from django_flosse.streaming._alarms import COMPACT_AFTER, LoopAlarms, alarms_of

#: Bound on any wait in these tests (a loaded machine); nothing here should come near it.
DEADLINE = 30.0


async def test_alarms_fire_in_the_order_of_their_times_not_before() -> None:
    loop = asyncio.get_running_loop()
    alarms = LoopAlarms()
    fired: list[str] = []
    waiters = {}
    for name, delay in (("late", 0.06), ("early", 0.02), ("middle", 0.04)):
        waiter: asyncio.Future[None] = loop.create_future()
        waiter.add_done_callback(lambda _f, name=name: fired.append(name))
        waiters[name] = (waiter, loop.time() + delay)
        alarms.add(loop, delay, waiter)
    await asyncio.wait_for(asyncio.gather(*(w for w, _ in waiters.values())), DEADLINE)
    assert fired == ["early", "middle", "late"]
    assert len(alarms) == 0 and alarms._timer is None


async def test_an_alarm_never_completes_its_waiter_before_its_time() -> None:
    loop = asyncio.get_running_loop()
    alarms = LoopAlarms()
    waiter: asyncio.Future[None] = loop.create_future()
    due = loop.time() + 0.03
    alarms.add(loop, 0.03, waiter)
    await asyncio.wait_for(waiter, DEADLINE)
    # The loop may run a timer one clock tick early; never more.
    assert loop.time() >= due - 0.002


async def test_a_cancelled_alarm_never_fires_and_the_last_one_takes_the_timer_along() -> None:
    loop = asyncio.get_running_loop()
    alarms = LoopAlarms()
    cancelled: asyncio.Future[None] = loop.create_future()
    kept: asyncio.Future[None] = loop.create_future()
    alarm = alarms.add(loop, 0.01, cancelled)
    alarms.add(loop, 0.02, kept)
    alarms.cancel(alarm)
    alarms.cancel(alarm)  # twice is harmless
    await asyncio.wait_for(kept, DEADLINE)
    assert not cancelled.done()
    assert len(alarms) == 0 and alarms._timer is None

    alarm = alarms.add(loop, DEADLINE, cancelled)
    assert alarms._timer is not None
    alarms.cancel(alarm)
    assert alarms._timer is None  # no alarm left: nothing scheduled


async def test_waits_that_end_early_do_not_grow_the_heap() -> None:
    loop = asyncio.get_running_loop()
    alarms = LoopAlarms()
    idle: asyncio.Future[None] = loop.create_future()
    alarms.add(loop, DEADLINE, idle)  # one stream that stays idle
    for _ in range(100 * COMPACT_AFTER):  # another that is woken before every timeout
        waiter: asyncio.Future[None] = loop.create_future()
        alarms.cancel(alarms.add(loop, DEADLINE, waiter))
    assert len(alarms) == 1
    assert len(alarms._heap) <= 2 * COMPACT_AFTER + 2


async def test_each_loop_has_its_own_alarms() -> None:
    loop = asyncio.get_running_loop()
    assert alarms_of(loop) is alarms_of(loop)
    other = asyncio.new_event_loop()
    try:
        assert alarms_of(other) is not alarms_of(loop)
    finally:
        other.close()
