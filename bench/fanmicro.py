"""F1's fan-out without the server: CPU per subscriber per spaced event, in one process.

``python bench/fanmicro.py N EVENTS`` (from the worktree, with ``PYTHONPATH`` naming it):
N streams (``Stream.frames()`` over ``subscribe()`` in an async view-like generator, the
memory backend) in one uvloop; ``abroadcast()`` publishes EVENTS events, each once every
stream has sent the previous one (then 5 ms of quiet). Per event: the process's CPU time
(``time.process_time``) and the wall time until every stream has its chunk, and the garbage
collections meanwhile. No sockets, no Django handler, no client: what the library adds per
subscriber, measured by CPU time so that other work on the machine moves it little (the
full F1 run's latencies drift 2x on a shared machine).
"""

from __future__ import annotations

import asyncio
import gc
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import django
from django.conf import settings

settings.configure(
    SECRET_KEY="fanmicro" * 8,
    INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "django_flosse"],
    DATABASES={},
    FLOSSE={"BROADCAST_BACKEND": "memory", "PERSISTENCE": False, "OBSERVERS": []},
)
django.setup()

import uvloop  # noqa: E402
from django.http import HttpRequest  # noqa: E402
from django.test import RequestFactory  # noqa: E402

import django_flosse  # noqa: E402
from django_flosse import abroadcast, subscribe  # noqa: E402
from django_flosse.broadcasting.backends import get_backend  # noqa: E402
from django_flosse.streaming._lifecycle import Stream  # noqa: E402

#: Seconds between two events (after the previous one reached every stream).
QUIET_SECONDS = 0.005


async def fan(request: HttpRequest) -> AsyncIterator[Any]:
    async for event in subscribe(request, "t"):
        yield event


async def measure(subscribers: int, events: int) -> str:
    received = 0
    target = 0
    everyone = asyncio.Event()

    async def consume() -> None:
        nonlocal received
        stream = Stream(fan(RequestFactory().get("/")), encode=lambda e: e.frame, heartbeat=15.0)
        async for _chunk in stream.frames():
            received += 1
            if received == target:
                everyone.set()

    tasks = [asyncio.create_task(consume()) for _ in range(subscribers)]
    try:
        deadline = time.monotonic() + 60
        # Another task's progress: nothing to await but the next look.
        while get_backend().subscribers("t") < subscribers:  # type: ignore[attr-defined]
            if time.monotonic() > deadline:
                raise RuntimeError("the subscribers did not join within 60 s")
            await asyncio.sleep(0.01)
        gc.collect()
        before = [s["collections"] for s in gc.get_stats()]
        cpu, wall = [], []
        for i in range(events):
            target = received + subscribers
            everyone.clear()
            c0, w0 = time.process_time(), time.perf_counter()
            await abroadcast("t", {"i": i}, event="tick")
            await asyncio.wait_for(everyone.wait(), 30)
            cpu.append(time.process_time() - c0)
            wall.append(time.perf_counter() - w0)
            await asyncio.sleep(QUIET_SECONDS)
        collections = [s["collections"] - b for s, b in zip(gc.get_stats(), before, strict=True)]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    cpu.sort()
    wall.sort()
    mid = len(cpu) // 2
    return (
        f"{django_flosse.__file__} N={subscribers}: CPU p50 {cpu[mid] * 1e3:.2f} ms "
        f"({cpu[mid] / subscribers * 1e6:.1f} us/subscriber), max {cpu[-1] * 1e3:.1f} ms | "
        f"wall p50 {wall[mid] * 1e3:.2f} ms, max {wall[-1] * 1e3:.1f} ms | "
        f"gc collections per generation {collections}"
    )


if __name__ == "__main__":
    print(uvloop.run(measure(int(sys.argv[1]), int(sys.argv[2]))))
