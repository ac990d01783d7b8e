"""What every fan-out peer shares: the topic, the payload and the schedule of publishes.

Every peer broadcasts the same events to the subscribers of one topic: ``event: tick`` with
JSON data ``{"i": <index>, "t": <ns>}``, where ``t`` is ``time.monotonic_ns()`` when the
event was published (CLOCK_MONOTONIC: the same clock in every process of the host, so the
client can subtract it from its own receive time). A peer may add an ``id:`` line or send
other events too (keep-alives, a padding comment): the client counts only these data lines.

The schedule (``/publish?spaced=20&interval=0.05&burst=200``, or ``fan_publisher.py`` in a
process of its own): ``spaced`` events ``interval`` seconds apart, then ``burst`` events
back to back, numbered from 0 on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

TOPIC = "bench"
EVENT = "tick"

#: An idle subscriber's stream ends by itself after this long, whatever the client does.
IDLE_SECONDS = 600.0


def payload(index: int) -> dict[str, int]:
    return {"i": index, "t": time.monotonic_ns()}


@dataclass(frozen=True)
class Schedule:
    spaced: int = 20
    interval: float = 0.05
    burst: int = 200

    @classmethod
    def from_query(cls, query: str | bytes) -> Schedule:
        if isinstance(query, bytes):
            query = query.decode("latin-1")
        params = {k: v[0] for k, v in parse_qs(query).items()}
        return cls(
            int(params.get("spaced", cls.spaced)),
            float(params.get("interval", cls.interval)),
            int(params.get("burst", cls.burst)),
        )

    @property
    def events(self) -> int:
        return self.spaced + self.burst

    async def run(self, publish: Callable[[dict[str, Any]], Awaitable[None]]) -> dict[str, Any]:
        """Publish the whole schedule (in this event loop); how long it took."""
        started = time.monotonic()
        for index in range(self.spaced):
            await publish(payload(index))
            await asyncio.sleep(self.interval)
        burst_started = time.monotonic()
        for index in range(self.spaced, self.events):
            await publish(payload(index))
        ended = time.monotonic()
        return {
            "published": self.events,
            "seconds": ended - started,
            "burst_publish_seconds": ended - burst_started,
        }


def run_from_thread(
    schedule: Schedule, publish: Callable[[dict[str, Any]], None]
) -> dict[str, Any]:
    """The schedule from sync code, in one thread: what a Django view, a task or a command
    does with a sync publishing call. Its burst is back to back: the server's event loop
    does not get a turn between two publishes, as it would with one thread hop per event."""
    started = time.monotonic()
    for index in range(schedule.spaced):
        publish(payload(index))
        time.sleep(schedule.interval)
    burst_started = time.monotonic()
    for index in range(schedule.spaced, schedule.events):
        publish(payload(index))
    ended = time.monotonic()
    return {
        "published": schedule.events,
        "seconds": ended - started,
        "burst_publish_seconds": ended - burst_started,
    }


async def profiled(
    schedule: Schedule,
    publish: Callable[[dict[str, Any]], Awaitable[None]],
    output: str,
    linger: float,
) -> dict[str, Any]:
    """The schedule under cProfile, and ``linger`` seconds after it (the deliveries of the
    burst go on after its last publish); the stats are dumped to ``output``.

    cProfile sees only the thread that enables it: this one runs the event loop, so every
    subscriber's stream step is in it. (py-spy, the benchmark's usual profiler, falls
    seconds behind per sample on a server holding thousands of connections here.)
    """
    import cProfile
    import gc

    collections: dict[int, list[float]] = {0: [], 1: [], 2: []}
    started: list[float] = []

    def timed(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started.append(time.perf_counter())
        elif started:
            collections[info["generation"]].append(time.perf_counter() - started.pop())

    profiler = cProfile.Profile()
    gc.callbacks.append(timed)
    profiler.enable()
    try:
        done = await schedule.run(publish)
        await asyncio.sleep(linger)
    finally:
        profiler.disable()
        gc.callbacks.remove(timed)
        profiler.dump_stats(output)
    done["gc"] = {
        f"gen{gen}": {"collections": len(times), "seconds": round(sum(times), 3)}
        for gen, times in collections.items()
    }
    return done
