"""The send watchdog: one timer per event loop ends the streams stuck in a send."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field

from django_flosse.observing.registry import Connection
from django_flosse.streaming._sendwatch import _watches, watch_sends


@dataclass(eq=False)
class FakeSender:
    connection: Connection = field(
        default_factory=lambda: Connection(id=uuid.uuid4().hex, stream="watch.unit")
    )
    sending_since: float | None = None


async def held_in_send(sender: FakeSender, timeout: float, started: asyncio.Event) -> str:
    """A stream's task: watched, then 'inside the server's send' until cancelled."""
    watch = watch_sends(sender, timeout)
    started.set()
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        return "cancelled"
    finally:
        watch.discard(sender)
    return "not cancelled"


async def test_a_stream_held_in_its_send_past_the_timeout_is_stopped_and_cancelled() -> None:
    stuck, reading = FakeSender(), FakeSender()
    started = asyncio.Event(), asyncio.Event()
    stuck_task = asyncio.create_task(held_in_send(stuck, 0.2, started[0]))
    reading_task = asyncio.create_task(held_in_send(reading, 0.2, started[1]))
    await started[0].wait()
    await started[1].wait()
    stuck.sending_since = time.monotonic()  # handed a chunk the client never reads

    assert await asyncio.wait_for(stuck_task, 2) == "cancelled"
    assert stuck.connection.stop_reason == "timeout"
    assert not reading_task.done()  # not sending: left alone
    assert reading.connection.stop_reason is None
    reading_task.cancel()
    await asyncio.gather(reading_task, return_exceptions=True)


async def test_a_send_that_completes_in_time_is_left_alone() -> None:
    sender = FakeSender()
    started = asyncio.Event()
    task = asyncio.create_task(held_in_send(sender, 0.2, started))
    await started.wait()
    for _ in range(6):  # sends of 0.05 s each, over three checks
        sender.sending_since = time.monotonic()
        await asyncio.sleep(0.05)
        sender.sending_since = None
        await asyncio.sleep(0.05)
    assert not task.done() and sender.connection.stop_reason is None
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_one_timer_per_loop_however_many_streams_and_none_when_idle() -> None:
    senders = [FakeSender() for _ in range(50)]
    events = [asyncio.Event() for _ in senders]
    tasks = [
        asyncio.create_task(held_in_send(s, 10.0 if i else 0.4, e))
        for i, (s, e) in enumerate(zip(senders, events, strict=True))
    ]
    for event in events:
        await event.wait()
    watch = _watches[asyncio.get_running_loop()]
    assert len(watch) == 50
    assert watch._timer is not None
    assert watch._period == 0.2  # the shortest timeout sets the pace

    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert len(watch) == 0 and watch._timer is None


async def test_each_stream_is_held_to_its_own_timeout() -> None:
    patient, impatient = FakeSender(), FakeSender()
    started = asyncio.Event(), asyncio.Event()
    patient_task = asyncio.create_task(held_in_send(patient, 30.0, started[0]))
    impatient_task = asyncio.create_task(held_in_send(impatient, 0.2, started[1]))
    await started[0].wait()
    await started[1].wait()
    patient.sending_since = impatient.sending_since = time.monotonic()  # both stuck

    assert await asyncio.wait_for(impatient_task, 10) == "cancelled"
    assert impatient.connection.stop_reason == "timeout"
    assert not patient_task.done() and patient.connection.stop_reason is None
    assert len(_watches[asyncio.get_running_loop()]) == 1
    patient_task.cancel()
    await asyncio.gather(patient_task, return_exceptions=True)
