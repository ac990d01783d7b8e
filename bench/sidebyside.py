"""The comparisons too close for peers measured one after the other.

A shared machine's speed drifts by 10-20% from one minute to the next, and each peer has
its own minutes in the main phase: good enough for ratios of 3x or 7x, not for "within
10%" or "under 5%". So after that phase every server is started again, all at once (each
pinned to the server CPU, idle ones cost nothing), and:

* D: first-event samples are taken round-robin, one connection to each server in turn,
  in a fresh random order every round, so every peer sees the same minutes of the machine;
* observability on against off: workloads A and B alternate between the two servers of
  each pair (on, off, off, on, ...), and the best run of each is compared, as in the main
  phase.

Every loop is bounded (rounds and the workload time-out); every server is stopped by its
pid, also when a workload fails.
"""

from __future__ import annotations

import contextlib
import random
import time
from pathlib import Path
from typing import Any

import loadgen
from peers import Peer, Server


async def first_events(servers: dict[str, Server], rounds: int, timeout: float) -> dict[str, Any]:
    """D, side by side: ``rounds`` rounds of one first-event sample per server."""
    names = list(servers)
    times: dict[str, list[float]] = {name: [] for name in names}
    for server in servers.values():  # warm-up
        await loadgen.first_event_times(server.port, server.peer.path, 5, timeout)
    deadline = time.monotonic() + timeout * 4
    for _ in range(rounds):
        random.shuffle(names)
        for name in names:
            server = servers[name]
            times[name] += await loadgen.first_event_times(
                server.port, server.peer.path, 1, timeout
            )
        if time.monotonic() > deadline:
            break
    return {name: loadgen.summarize_times(samples) for name, samples in times.items()}


async def alternated(
    pair: tuple[Server, Server], streams: int, events: int, repeats: int, timeout: float
) -> dict[str, dict[str, Any]]:
    """A or B on both servers of ``pair``, alternating, ``repeats`` runs each, summed up per
    server as in the main phase (``loadgen.summarize_runs``)."""
    runs: dict[str, list[dict[str, Any]]] = {s.peer.name: [] for s in pair}
    cpu = dict.fromkeys(runs, 0.0)
    for i in range(repeats):
        for server in pair if i % 2 == 0 else pair[::-1]:
            before = server.cpu_seconds()
            runs[server.peer.name].append(
                await loadgen.throughput(server.port, server.peer.path, streams, events, timeout)
            )
            cpu[server.peer.name] += server.cpu_seconds() - before
    return {name: loadgen.summarize_runs(done, cpu[name]) for name, done in runs.items()}


def obs_pairs(peers: list[Peer]) -> list[tuple[str, str]]:
    names = {peer.name for peer in peers}
    return [
        (peer.name, f"{peer.name}-obsoff")
        for peer in peers
        if peer.impl == "ours" and peer.observability == "on" and f"{peer.name}-obsoff" in names
    ]


async def measure(
    peers: list[Peer], sizes: Any, log_dir: Path, db: str, cpu: int | None
) -> dict[str, Any]:
    """Start every peer's server, run the side-by-side workloads, stop them all."""
    servers: dict[str, Server] = {}
    result: dict[str, Any] = {"pids": []}
    try:
        for peer in peers:
            servers[peer.name] = Server(peer, log_dir, extra_env={"BENCH_DB": db}, cpu=cpu)
            servers[peer.name].start()
        print(f"   D side by side: {len(servers)} servers, {sizes.d} rounds", flush=True)
        result["D"] = await first_events(servers, sizes.d, sizes.timeout)
        result["observability"] = {}
        for on, off in obs_pairs(peers):
            pair = (servers[on], servers[off])
            print(f"   A and B alternated: {on} / {off}", flush=True)
            result["observability"][on] = {
                "A": await alternated(pair, 1, sizes.a, sizes.repeats_a, sizes.timeout),
                # B varies more from run to run than A (50 streams' scheduling): as many
                # runs as A, not B's usual few.
                "B": await alternated(
                    pair, sizes.b_streams, sizes.b_events, sizes.repeats_a, sizes.timeout
                ),
            }
    finally:
        for server in servers.values():
            with contextlib.suppress(Exception):
                result["pids"] += sorted(server.pids_seen)
                server.stop()
    return result
