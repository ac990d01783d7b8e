"""Some traffic for the demo's dashboard and metrics: ``make demo-load``.

Opens a bounded number of SSE connections to a running demo on 127.0.0.1, spread over a
bounded time, and drops them in the ways real clients do: some leave after a random while
(``cancelled``), some read a finite stream to its end (``completed``), some hit the failing
stream (``error``), some abort right after the headers. Then it prints what happened.

    python example/load.py                      # 50 connections over 30 s, port 8000
    python example/load.py --port 8001 --connections 100 --duration 60 --seed 1

Everything is bounded: at most ``--connections`` connections (500 at most), at most
``--concurrency`` open at once, and the whole run stops ``--duration`` + 15 s after it
started, whatever the server does. It only ever connects to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import httpx

HOST = "127.0.0.1"
MAX_CONNECTIONS = 500
MAX_DURATION = 600.0
DASHBOARD = "/admin/django_flosse/streamconnection/dashboard/"  # admin:django_flosse_dashboard
GRACE = 15.0  # seconds after --duration at which everything still running is abandoned


@dataclass(frozen=True)
class Scenario:
    name: str
    path: str
    weight: int
    hold: tuple[float, float] | None  # seconds before dropping; None: read to the end


SCENARIOS = [
    Scenario("feed, dropped after a while", "/stream/feed/", 6, (2.0, 12.0)),
    Scenario("htmx feed, dropped after a while", "/stream/htmx/", 2, (2.0, 8.0)),
    Scenario("progress, read to the end", "/stream/progress/", 3, None),
    Scenario("progress, aborted midway", "/stream/progress/", 2, (0.5, 2.0)),
    Scenario("resume, one connection's worth", "/stream/resume/", 2, None),
    Scenario("fail, read to the error", "/stream/fail/", 1, None),
    Scenario("feed, aborted at once", "/stream/feed/", 2, (0.0, 0.0)),
]


async def _read(response: httpx.Response, counts: Counter[str]) -> None:
    async for line in response.aiter_lines():
        if line.startswith("data:"):
            counts["events"] += 1
        elif line.startswith("event: error"):
            counts["error events"] += 1


async def one_connection(
    client: httpx.AsyncClient,
    scenario: Scenario,
    rng: random.Random,
    deadline: float,
    counts: Counter[str],
    outcomes: Counter[tuple[str, str]],
) -> None:
    hold = rng.uniform(*scenario.hold) if scenario.hold else None
    budget = max(0.1, deadline - time.monotonic())
    limit = budget if hold is None else min(hold, budget)
    try:
        async with client.stream("GET", scenario.path) as response:
            if response.status_code != 200:
                outcomes[(scenario.name, f"HTTP {response.status_code}")] += 1
                return
            try:
                await asyncio.wait_for(_read(response, counts), timeout=limit)
                outcomes[(scenario.name, "read to the end")] += 1
            except asyncio.TimeoutError:
                outcomes[(scenario.name, "dropped by the client")] += 1
    except httpx.HTTPError as exc:
        outcomes[(scenario.name, f"failed: {type(exc).__name__}")] += 1


async def run(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    base = f"http://{HOST}:{args.port}"
    started = time.monotonic()
    deadline = started + args.duration
    counts: Counter[str] = Counter()
    outcomes: Counter[tuple[str, str]] = Counter()
    gate = asyncio.Semaphore(args.concurrency)
    weights = [s.weight for s in SCENARIOS]
    # Start times spread over the first 80% of the run, so the last ones have time to end.
    plan = sorted(
        (rng.uniform(0, args.duration * 0.8), rng.choices(SCENARIOS, weights)[0])
        for _ in range(args.connections)
    )
    timeout = httpx.Timeout(10.0, read=None)  # streams are quiet for a while: no read timeout
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=0)

    async with httpx.AsyncClient(base_url=base, timeout=timeout, limits=limits) as client:
        try:
            (await client.get("/", timeout=5.0)).raise_for_status()
        except httpx.HTTPError as exc:
            print(f"no demo answers at {base}/ ({exc}); start it with `make demo`", file=sys.stderr)
            return 1
        print(
            f"{args.connections} connections to {base} over {args.duration:.0f} s "
            f"(at most {args.concurrency} at once); watch {base}{DASHBOARD}"
        )

        async def scheduled(at: float, scenario: Scenario) -> None:
            await asyncio.sleep(max(0.0, started + at - time.monotonic()))
            async with gate:
                if time.monotonic() < deadline:
                    counts["opened"] += 1
                    await one_connection(client, scenario, rng, deadline, counts, outcomes)

        async def report() -> None:
            while True:
                await asyncio.sleep(5)
                done = sum(outcomes.values())
                print(
                    f"  {time.monotonic() - started:5.1f} s: {counts['opened']} opened, "
                    f"{counts['opened'] - done} open, {counts['events']} events received"
                )

        reporter = asyncio.create_task(report())
        tasks = [asyncio.create_task(scheduled(at, s)) for at, s in plan]
        _, pending = await asyncio.wait(tasks, timeout=args.duration + GRACE)
        reporter.cancel()
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, reporter, return_exceptions=True)

    print(
        f"done in {time.monotonic() - started:.1f} s: {counts['opened']} connections, "
        f"{counts['events']} events, {counts['error events']} error events"
        + (f", {len(pending)} abandoned" if pending else "")
    )
    for (name, outcome), n in sorted(outcomes.items()):
        print(f"  {n:4d}  {name}: {outcome}")
    return 0


def _bounded(kind: Callable[[str], float], low: float, high: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = kind(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low:g} and {high:g}")
        return value

    return parse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=_bounded(int, 1, 65535), default=8000)
    parser.add_argument(
        "--connections", type=_bounded(int, 1, MAX_CONNECTIONS), default=50,
        help="connections to open in all (default 50)",
    )  # fmt: skip
    parser.add_argument(
        "--duration", type=_bounded(float, 1, MAX_DURATION), default=30.0,
        help="seconds the run lasts (default 30)",
    )  # fmt: skip
    parser.add_argument(
        "--concurrency", type=_bounded(int, 1, 100), default=12,
        help="connections open at once at most (default 12)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=None, help="for a repeatable run")
    args = parser.parse_args(argv)
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
