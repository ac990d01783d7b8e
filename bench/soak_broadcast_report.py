"""The broadcast phase's figures (``soak_broadcast.py``): what each cycle records, how the
end judges them (nothing lost or twice, resets only where a restart explains them, memory
flat, the time back to zero unchanged) and the summary it prints.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from soak import Failures, log


@dataclass
class BroadcastFigures(Failures):
    engine: str = "PostgreSQL"
    cycles: int = 0
    subscribers: int = 0
    published: int = 0
    refused: int = 0  # publish attempts refused while the engine was down (all retried)
    received: int = 0
    lost: int = 0
    duplicated: int = 0  # or out of order
    resets: int = 0
    failed_streams: int = 0  # streams that ended with an ``error`` event
    #: Events a subscriber skipped across its ``flosse-reset`` (Redis's history died with it).
    unrecoverable: int = 0
    #: Per Redis restart: {resets one subscriber got: how many subscribers got that many}.
    restart_resets: list[dict[int, int]] = field(default_factory=list)
    moved: list[int] = field(default_factory=list)  # subscribers on the killed worker
    resumed: list[float] = field(default_factory=list)  # kill -> all moved ones streaming
    zero: list[float] = field(default_factory=list)  # drop -> A cleaned them up
    outages: list[float] = field(default_factory=list)
    recovered: list[float] = field(default_factory=list)  # engine back -> caught up (reset)
    rss: list[float] = field(default_factory=list)  # worker A, settled, after each cycle
    objects: list[int] = field(default_factory=list)


def last(values: list[float]) -> str:
    return f"{values[-1]:.2f}" if values else "-"


def first_failure(logs: str) -> str:
    """The first failed stream of a server's log, with its traceback (for a failure)."""
    start = logs.find("sse.stream.error")
    if start < 0:
        return "  (no sse.stream.error in the worker's log)"
    return "  " + logs[logs.rfind("\n", 0, start) + 1 : start + 4000].replace("\n", "\n  ")


def halves(values: list[float]) -> str:
    """The medians of the first and second half of the cycles (a trend shows there)."""
    if len(values) < 4:
        return ""
    half = len(values) // 2
    first, second = statistics.median(values[:half]), statistics.median(values[half:])
    return f"; median {first:.2f} in the first half of the cycles, {second:.2f} in the second"


def summary(figures: BroadcastFigures) -> None:
    def span(values: list[float]) -> str:
        if not values:
            return "-"
        return f"{min(values):.2f} / {statistics.median(values):.2f} / {max(values):.2f}"

    log(f"\n=== broadcast phase: {figures.engine} ===")
    log(f"cycles                     {figures.cycles}, {figures.subscribers} subscribers")
    log("(times: min / median / max)")
    log(
        f"events                     {figures.published} published "
        f"({figures.refused} attempts refused during outages, retried), "
        f"{figures.received} received"
    )
    log(f"lost / duplicated / resets {figures.lost} / {figures.duplicated} / {figures.resets}")
    if figures.failed_streams:
        log(f"streams failed (error)     {figures.failed_streams}")
    if figures.restart_resets:
        per = ", ".join(
            " + ".join(f"{n} x {k}" for k, n in sorted(counts.items()))
            for counts in figures.restart_resets
        )
        log(f"resets per restart         subscribers x resets each: {per}")
        log(
            f"unrecoverable              {figures.unrecoverable} events: each subscriber's "
            "between its last event and its flosse-reset (the old history died with Redis, "
            "the reset told it to reload), not counted as lost"
        )
    moved = f"{min(figures.moved)}-{max(figures.moved)}" if figures.moved else "-"
    log(f"worker kill, resumed (s)   {span(figures.resumed)} ({moved} subscribers moved)")
    log(f"drop, back to zero (s)     {span(figures.zero)}{halves(figures.zero)}")
    log(f"{figures.engine + ' outage (s)':<27}{span(figures.outages)}")
    after = "reset + live after it (s)" if figures.restart_resets else "caught up after it (s)"
    log(f"{after:<27}{span(figures.recovered)}")
    if figures.rss:
        log(
            f"worker A RSS (MB)          first {figures.rss[0]:.1f}  last {figures.rss[-1]:.1f}  "
            f"max {max(figures.rss):.1f}; objects first {figures.objects[0]} "
            f"last {figures.objects[-1]}"
        )
    log(f"failures                   {len(figures.failures)}")
    for failure in figures.failures:
        log(f"  - {failure}")


def check_trends(figures: BroadcastFigures) -> None:
    """Nothing lost or twice, memory flat (the last cycle against the first) and the time
    back to zero unchanged (the second half of the cycles against the first)."""
    if figures.lost or figures.duplicated:
        figures.fail(f"{figures.lost} events lost, {figures.duplicated} duplicated")
    if figures.failed_streams:
        figures.fail(f"{figures.failed_streams} streams ended with an error event")
    expected = sum(k * n for counts in figures.restart_resets for k, n in counts.items())
    if figures.resets != expected:
        figures.fail(f"{figures.resets} resets, {expected} of them in the restarts")
    if len(figures.rss) >= 3 and figures.rss[-1] > figures.rss[0] * 1.10:
        figures.fail(f"worker A RSS grew {figures.rss[0]:.1f} -> {figures.rss[-1]:.1f} MB")
    if len(figures.zero) >= 4:  # halves' medians: one slow cycle on a shared machine is noise
        half = len(figures.zero) // 2
        first, second = (
            statistics.median(figures.zero[:half]),
            statistics.median(figures.zero[half:]),
        )
        if second > 2 * first + 1.0:
            figures.fail(f"back to zero: median {first:.2f} s, then {second:.2f} s")
