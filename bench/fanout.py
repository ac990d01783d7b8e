"""The fan-out workloads: one topic, many idle subscribers, every event to every one of them.

F1, one process: for each size N (``FanSizes.subscribers``) a fresh server of the peer,
N idle subscribers on one topic (held by ``fanclient.py`` processes on the client CPU),
then the server publishes, from inside its own process (``GET /publish``), ``spaced``
events ``interval`` seconds apart and a burst of ``burst`` back to back. Measured:

* per event, publish to the last subscriber's copy (the server stamps
  ``time.monotonic_ns()`` into the event, the client reads the same clock on receipt):
  p50 and p99 over the spaced events, and over the burst;
* deliveries per second in the burst: N x burst over the time from the burst's first
  publish to the last copy of its last event;
* the server's CPU seconds (user + system) per 1,000 deliveries, over the whole schedule;
* RSS per idle subscriber: (RSS with the N subscribers registered - RSS before) / N;
* loss and duplicates: per subscriber and event, how many copies arrived. Every
  subscriber of ours must receive every event exactly once, else the run fails; the
  peers' loss and duplicates are shown in the table.

F2, across processes: two servers of the peer share the N subscribers, the schedule is
published by a third process (``apps/fan_publisher.py``) through the peer's own
mechanism (PostgreSQL or Redis, started here on 127.0.0.1 as the tests start them).

Every loop is bounded (counts and ``FanSizes.timeout``); every server, client and database
process is stopped by its pid, also when a workload fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import loadgen
from fanpeers import FanPeer
from peers import APPS_DIR, BENCH_DIR, Server

CLIENT = BENCH_DIR / "fanclient.py"
#: Subscribers one client process holds at most.
PER_CLIENT = 2_500


@dataclass(frozen=True)
class FanSizes:
    subscribers: tuple[int, ...]  # F1, one fresh server per size
    across: int  # F2's subscribers, split over two servers
    spaced: int
    interval: float
    burst: int
    timeout: float  # for one size's publish and delivery

    @property
    def events(self) -> int:
        return self.spaced + self.burst

    def query(self) -> str:
        return f"spaced={self.spaced}&interval={self.interval}&burst={self.burst}"


FAN_SIZES = {
    "full": FanSizes((100, 1_000, 5_000, 10_000), 1_000, 20, 0.05, 200, 240.0),
    "quick": FanSizes((100, 500), 100, 10, 0.05, 100, 60.0),
    "tiny": FanSizes((20,), 20, 5, 0.05, 40, 30.0),
}


# -- the subscribers' processes ----------------------------------------------------------------


class Clients:
    """``fanclient.py`` processes (they inherit this process's CPU pinning)."""

    def __init__(self, count: int) -> None:
        self.procs = [
            subprocess.Popen(
                [sys.executable, str(CLIENT)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                bufsize=1,
            )
            for _ in range(count)
        ]

    async def ask(self, commands: list[dict[str, Any]], timeout: float) -> list[dict[str, Any]]:
        """Send one command to each process (at once), then read every answer."""
        for proc, command in zip(self.procs, commands, strict=True):
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(command) + "\n")
            proc.stdin.flush()
        loop = asyncio.get_running_loop()
        reads = [loop.run_in_executor(None, p.stdout.readline) for p in self.procs]  # type: ignore[union-attr]
        lines = await asyncio.wait_for(asyncio.gather(*reads), timeout)
        if not all(lines):
            raise RuntimeError("a subscriber process exited")
        return [json.loads(line) for line in lines]

    def stop(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(OSError):
                if proc.stdin is not None:
                    proc.stdin.close()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()  # by its own pid
                proc.wait()


def split(total: int, parts: int) -> list[int]:
    return [total // parts + (i < total % parts) for i in range(parts)]


async def subscribe(clients: Clients, ports: list[int], total: int, timeout: float) -> int:
    """Open ``total`` streams spread over the clients and the servers' ``ports``."""
    counts = split(total, len(clients.procs))
    commands = [
        {"cmd": "open", "port": ports[i % len(ports)], "path": "/fan", "count": n,
         "timeout": timeout}
        for i, n in enumerate(counts)
    ]  # fmt: skip
    answers = await clients.ask(commands, timeout + 30)
    return sum(a["opened"] for a in answers)


async def registered(servers: list[Server]) -> int:
    total = 0
    for server in servers:
        status, body = await loadgen.fetch(server.port, "/active")
        if status != 200:
            raise RuntimeError(f"/active answered {status}")
        total += int(json.loads(body)["active"])
    return total


async def wait_registered(servers: list[Server], expected: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    count = await registered(servers)
    while count < expected and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        count = await registered(servers)
    return count


# -- one measurement ---------------------------------------------------------------------------


@contextlib.contextmanager
def servers_of(
    peer: FanPeer, count: int, log_dir: Path, env: dict[str, str], cpu: int | None
) -> Iterator[list[Server]]:
    servers = [
        Server(peer, log_dir / (f"f2-{i}" if count > 1 else ""), extra_env=env, cpu=cpu)
        for i in range(count)
    ]
    try:
        for server in servers:
            server.start()
        yield servers
    finally:
        for server in servers:
            with contextlib.suppress(Exception):
                server.stop()


async def warm_up(servers: list[Server], publish: Any) -> None:
    """First publishes import and compile what the server will use."""
    streams = [await loadgen.open_stream(s.port, "/fan", rst=True) for s in servers]
    try:
        await wait_registered(servers, len(servers), 10.0)
        await publish("spaced=1&interval=0&burst=2")
        await asyncio.sleep(0.2)
    finally:
        for transport, _reader in streams:
            transport.abort()
    await wait_registered_zero(servers)


async def wait_registered_zero(servers: list[Server], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    # Another process's count: nothing to await but the next answer.
    while time.monotonic() < deadline and await registered(servers):  # noqa: ASYNC110
        await asyncio.sleep(0.05)


async def measure(
    servers: list[Server], subscribers: int, sizes: FanSizes, publish: Any
) -> dict[str, Any]:
    """N idle subscribers, the schedule, the tally (see the module docstring)."""
    rss_before = sum(s.rss_bytes() for s in servers)
    clients = Clients(max(1, -(-subscribers // PER_CLIENT)))
    try:
        opened = await subscribe(clients, [s.port for s in servers], subscribers, sizes.timeout)
        count = await wait_registered(servers, subscribers, sizes.timeout / 4)
        await asyncio.sleep(0.3)
        rss_idle = sum(s.rss_bytes() for s in servers)
        result: dict[str, Any] = {"subscribers": subscribers, "opened": opened,
                                  "registered": count}  # fmt: skip
        if count < subscribers:
            result["error"] = f"only {count} of {subscribers} subscribers registered"
            return result
        cpu_before = sum(s.cpu_seconds() for s in servers)
        published = await asyncio.wait_for(publish(sizes.query()), sizes.timeout)
        tallies = await clients.ask(
            [{"cmd": "collect", "events": sizes.events, "timeout": sizes.timeout}]
            * len(clients.procs),
            sizes.timeout + 30,
        )
        cpu = sum(s.cpu_seconds() for s in servers) - cpu_before
        await clients.ask([{"cmd": "close"}] * len(clients.procs), 30)
    finally:
        clients.stop()
    result.update(summarize(tallies, sizes, subscribers))
    result.update(
        publisher=published,
        timeout=sizes.timeout,
        rss_idle_kib_per_subscriber=(rss_idle - rss_before) / subscribers / 1024,
        server_cpu_s=round(cpu, 3),
        cpu_ms_per_1000_deliveries=(
            cpu * 1e3 * 1000 / result["received"] if result["received"] else None
        ),
    )
    return result


def summarize(tallies: list[dict[str, Any]], sizes: FanSizes, subscribers: int) -> dict[str, Any]:
    events = sizes.events
    published = [max(t["published_ns"][i] for t in tallies) for i in range(events)]
    last = [max(t["last_ns"][i] for t in tallies) for i in range(events)]
    latency_ms = [
        (last[i] - published[i]) / 1e6 if published[i] and last[i] else None for i in range(events)
    ]
    lost = sum(t["lost"] for t in tallies)
    duplicates = sum(t["duplicates"] for t in tallies)
    found: dict[str, Any] = {
        "received": sum(t["received"] for t in tallies),
        "expected": subscribers * events,
        "lost": lost,
        "duplicates": duplicates,
        "subscribers_with_loss": sum(t["subscribers_with_loss"] for t in tallies),
        "subscribers_with_duplicates": sum(t["subscribers_with_duplicates"] for t in tallies),
        "events_with_loss": sum(
            1 for i in range(events) if any(t["lost_by_event"][i] for t in tallies)
        ),
        "streams_ended": sum(t["streams_ended"] for t in tallies),
        "timed_out": any(t["timed_out"] for t in tallies),
        "exactly_once": lost == 0 and duplicates == 0,
        "latency_ms": latency_ms,
    }
    found.update(percentiles("spaced", latency_ms[: sizes.spaced]))
    found.update(percentiles("burst", latency_ms[sizes.spaced :]))
    first_burst = published[sizes.spaced]
    burst_last = [x for x in last[sizes.spaced :] if x]
    burst_received = subscribers * sizes.burst - sum(
        sum(t["lost_by_event"][sizes.spaced :]) for t in tallies
    )
    if first_burst and burst_last:
        seconds = (max(burst_last) - first_burst) / 1e9
        found["burst_seconds"] = seconds
        found["deliveries_per_s"] = burst_received / seconds if seconds > 0 else None
    return found


def percentiles(name: str, values: list[float | None]) -> dict[str, float | None]:
    known = sorted(v for v in values if v is not None)
    if not known:
        return {f"{name}_p50_ms": None, f"{name}_p99_ms": None}
    p99 = known[min(len(known) - 1, max(0, round(0.99 * len(known)) - 1))]
    return {f"{name}_p50_ms": statistics.median(known), f"{name}_p99_ms": p99}


# -- F1 and F2 ---------------------------------------------------------------------------------


def in_process_publish(server: Server, timeout: float) -> Any:
    async def publish(query: str) -> dict[str, Any]:
        status, body = await loadgen.fetch(server.port, f"/publish?{query}", timeout)
        if status != 200:
            raise RuntimeError(f"/publish answered {status}: {body[:300]!r}")
        return dict(json.loads(body))

    return publish


def publisher_process(peer: FanPeer, server: Server, log: Path, timeout: float) -> Any:
    """F2: the schedule published by ``apps/fan_publisher.py`` with the servers' settings."""

    async def publish(query: str) -> dict[str, Any]:
        with open(log, "ab") as out:  # noqa: ASYNC230 - opened once per publish
            proc = await asyncio.create_subprocess_exec(
                sys.executable, str(APPS_DIR / "fan_publisher.py"), peer.module, query,
                cwd=APPS_DIR, env=server.environment(), stdout=asyncio.subprocess.PIPE,
                stderr=out,
            )  # fmt: skip
            try:
                stdout, _ = await asyncio.wait_for(proc.communicate(), timeout)
            finally:
                if proc.returncode is None:
                    proc.kill()  # by its own pid
                    await proc.wait()
        if proc.returncode != 0:
            raise RuntimeError(f"the publisher exited with {proc.returncode} (see {log})")
        return dict(json.loads(stdout.decode().strip().splitlines()[-1]))

    return publish


async def f1_peer(
    peer: FanPeer, sizes: FanSizes, log_dir: Path, env: dict[str, str], cpu: int | None
) -> dict[str, Any]:
    found: dict[str, Any] = {"peer": peer.name, "label": peer.label, "impl": peer.impl,
                             "sizes": {}, "pids": []}  # fmt: skip
    missing = peer.missing()
    if missing:
        found.update(status="skipped", reason="not installed: " + ", ".join(missing))
        return found
    found["status"] = "ok"
    for n in sizes.subscribers:
        if n > peer.max_subscribers:
            found["sizes"][str(n)] = {"skipped": f"run up to {peer.max_subscribers:,} only"}
            continue
        print(f"   F1 {peer.name}: {n:,} subscribers", flush=True)
        t0 = time.monotonic()
        with servers_of(peer, 1, log_dir, env, cpu) as servers:
            found["pids"] += [p for s in servers for p in s.pids_seen]
            try:
                publish = in_process_publish(servers[0], sizes.timeout)
                await warm_up(servers, publish)
                row = await measure(servers, n, sizes, publish)
            except Exception as exc:
                row = {"error": f"{type(exc).__name__}: {exc}"}
                traceback.print_exc()
            found["pids"] += [p for s in servers for p in s.pids_seen]
        found["sizes"][str(n)] = row
        print(f"      {brief(row)} ({time.monotonic() - t0:.1f} s)", flush=True)
    return found


async def f2_peer(
    peer: FanPeer, sizes: FanSizes, log_dir: Path, env: dict[str, str], cpu: int | None
) -> dict[str, Any]:
    found: dict[str, Any] = {"peer": peer.name, "label": peer.label, "impl": peer.impl,
                             "pids": []}  # fmt: skip
    missing = peer.missing()
    if missing:
        found.update(status="skipped", reason="not installed: " + ", ".join(missing))
        return found
    found["status"] = "ok"
    print(f"   F2 {peer.name}: {sizes.across:,} subscribers over 2 servers", flush=True)
    t0 = time.monotonic()
    with servers_of(peer, 2, log_dir, env, cpu) as servers:
        try:
            publish = publisher_process(peer, servers[0], log_dir / "f2-publisher.log",
                                        sizes.timeout)  # fmt: skip
            await warm_up(servers, publish)
            found["result"] = await measure(servers, sizes.across, sizes, publish)
        except Exception as exc:
            found["result"] = {"error": f"{type(exc).__name__}: {exc}"}
            traceback.print_exc()
        found["pids"] += [p for s in servers for p in s.pids_seen]
    print(f"      {brief(found['result'])} ({time.monotonic() - t0:.1f} s)", flush=True)
    return found


def brief(row: dict[str, Any]) -> str:
    if "error" in row:
        return f"error: {row['error']}"
    rate = row.get("deliveries_per_s")
    return (
        f"spaced p50 {row.get('spaced_p50_ms') or 0:.1f} ms, burst "
        f"{rate or 0:,.0f} deliveries/s, lost {row['lost']}, duplicates {row['duplicates']}, "
        f"{row['rss_idle_kib_per_subscriber']:.1f} KiB/subscriber"
    )


def peers_named(names: str | None, known: list[FanPeer]) -> list[FanPeer]:
    if not names:
        return list(known)
    wanted = names.split(",")
    return [p for p in known if p.name in wanted]
