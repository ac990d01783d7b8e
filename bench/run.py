"""django-flosse's side-by-side benchmark (``make bench``, ``make bench-quick``).

For each peer (``bench/peers.py``): start its server on 127.0.0.1, pinned to CPU 0 (this
client runs on CPU 1), check that it sends exactly the bytes of the reference stream, run
the workloads, stop it by its pid. Then write ``latest.md`` (table, goals of issue 6,
machine facts), ``latest.json`` (everything measured) and one server log per peer.

Workloads (sizes for the full run; ``--quick`` and ``--sizes tiny`` are smaller):

A. one stream of 100,000 events read as fast as possible: events/s (best of 5 runs), and the
   server's CPU seconds per 100k events;
B. 50 concurrent streams of 5,000 events: aggregate events/s (best of 3 runs);
C. 1,000 streams idle after their first event: server RSS per connection; then all reset at
   once (RST): time until the server counts them closed, and RSS afterwards;
D. time to first event of 200 one-event streams opened one after the other (median, p99);
   and the same while another stream floods the server, as a ratio to D's median.

Then the comparisons that need better than the machine's minute-to-minute drift run with
every server up at once (``sidebyside.py``): D round-robin over all peers, and A and B
alternated between ours with observability on and off.

Then the fan-out workloads (``fanrun.py``, ``fanout.py``; issue 14): F1, N idle subscribers
of one topic in one server process, the publisher inside it; F2, two server processes and a
publisher in a third, through PostgreSQL or Redis. ``--workloads`` picks among ``single``
(A-D above), ``F1`` and ``F2``; the run fails when ours does not deliver every event to
every subscriber exactly once.

Every loop is bounded in count and time; every server is stopped by its pid, also when a
workload fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fanout
import fanrun
import loadgen
import report
import sidebyside
from fanpeers import F1_PEERS, F2_PEERS
from loadgen import run_async
from peers import APPS_DIR, PEERS, REFERENCE, Peer, Server, peer_named, pid_alive

EXPECTED_EVENTS = 5
EXPECTED_BODY = b"".join(b'event: tick\ndata: {"i": %d}\n\n' % i for i in range(EXPECTED_EVENTS))


@dataclass(frozen=True)
class Sizes:
    a: int  # events in workload A's one stream
    b_streams: int
    b_events: int
    c: int  # idle connections
    d: int  # sequential first-event samples
    flood_samples: int
    flood_seconds: float  # the flood stream ends by itself after this long
    timeout: float  # for any one workload
    repeats_a: int  # A is run this many times, B ``repeats_b``: the best run is reported
    repeats_b: int


SIZES = {
    "full": Sizes(100_000, 50, 5_000, 1_000, 200, 50, 6.0, 120.0, 5, 3),
    "quick": Sizes(10_000, 10, 500, 100, 30, 10, 2.0, 30.0, 2, 1),
    "tiny": Sizes(2_000, 5, 200, 20, 10, 5, 1.5, 20.0, 1, 1),
}


def main() -> int:
    args = parse_args()
    if args.drain:
        port, path, seconds = args.drain
        loadgen.drain(int(port), path, float(seconds))
        return 0
    sizes = SIZES[args.sizes or ("quick" if args.quick else "full")]
    peers = [peer_named(n) for n in args.peers.split(",")] if args.peers else list(PEERS)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    server_cpu, client_cpu = pin_cpus(args.no_pin)

    if args.profile_only:
        peers = []
        if not args.profile:
            raise SystemExit("--profile-only needs --profile PEER[,PEER]")
    workloads = set(args.workloads.split(","))
    if "single" not in workloads:
        peers = []
    size_name = args.sizes or ("quick" if args.quick else "full")
    fan_sizes = fanout.FAN_SIZES[size_name]
    if args.fan_subscribers:
        counts = tuple(int(n) for n in args.fan_subscribers.split(","))
        fan_sizes = dataclasses.replace(fan_sizes, subscribers=counts)
    started = time.time()
    facts = report.machine_facts(server_cpu, client_cpu)
    with tempfile.TemporaryDirectory(prefix="flosse-bench-") as tmp:
        db = str(Path(tmp) / "bench.sqlite3")
        if any(p.impl == "ours" for p in peers) or "ours" in args.profile:
            migrate(db)
        results = [run_peer(peer, sizes, out, db, server_cpu) for peer in peers]
        measured = [p for p, r in zip(peers, results, strict=True) if r.get("status") == "ok"]
        side = {}
        if len(measured) > 1:
            print("-- side by side (all servers at once)", flush=True)
            side = run_async(sidebyside.measure(measured, sizes, out / "logs", db, server_cpu))
        profiles = run_profiles(args.profile, out, db, server_cpu, args.profile_seconds)
        fan: dict[str, Any] = {}
        if workloads & {"F1", "F2"} and not args.profile_only:
            fan = fanrun.run(fan_sizes, out, db, server_cpu, args.fan_peers, workloads)
        if args.fan_profile:
            fan_profile = fanrun.profile(
                fan_sizes, out, db, server_cpu, args.fan_profile, args.profile_seconds
            )
            profiles[f"ours-memory F1 at {args.fan_profile:,} subscribers"] = fan_profile

    if args.profile_only:
        text = report.profiles_markdown(profiles, facts)
        (out / "profile.md").write_text(text)
        (out / "profile.json").write_text(json.dumps(profiles, indent=2, default=str) + "\n")
        print(text)
        leftovers = [pid for p in profiles.values() for pid in p.get("pids", []) if pid_alive(pid)]
        return 1 if leftovers else 0

    data = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
        "seconds": round(time.time() - started, 1),
        "sizes": {"name": size_name, **asdict(sizes)},
        "reference": REFERENCE,
        "machine": facts,
        "peers": results,
        "side_by_side": side,
        "profiles": profiles,
        "fanout": fan,
        "identity_ok": all(
            r["identity"]["ok"] for r in results if r.get("status") == "ok" and "identity" in r
        ),
    }
    (out / "latest.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    (out / "latest.md").write_text(report.markdown(data))
    print(report.markdown(data))
    print(f"wrote {out / 'latest.md'} and {out / 'latest.json'} in {data['seconds']} s")
    pids = [pid for r in results for pid in r.get("pids", [])] + side.get("pids", [])
    pids += fan.get("pids", [])
    leftovers = [pid for pid in pids if pid_alive(pid)]
    if leftovers:
        print(f"error: server processes still running: {leftovers}", file=sys.stderr)
        return 1
    failed = fanrun.failures(fan)
    if failed:
        print("error: ours did not deliver every event exactly once:", file=sys.stderr)
        print("\n".join(f"  {line}" for line in failed), file=sys.stderr)
        return 1
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (< 2 minutes)")
    parser.add_argument("--sizes", choices=sorted(SIZES), help="override the sizes")
    parser.add_argument(
        "--peers", help="comma-separated peer names (default: all): "
        + ", ".join(p.name for p in PEERS)
    )  # fmt: skip
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--no-pin", action="store_true", help="do not pin server and client")
    parser.add_argument(
        "--profile", default="",
        help="comma-separated peers to profile with py-spy on workload A after the run "
        "(e.g. ours-async-uvicorn,django-async-uvicorn)",
    )  # fmt: skip
    parser.add_argument("--profile-seconds", type=float, default=10.0)
    parser.add_argument(
        "--profile-only", action="store_true",
        help="only profile (--profile): write profile.md and leave latest.* alone",
    )  # fmt: skip
    parser.add_argument(
        "--workloads", default="single,F1,F2",
        help="comma-separated: single (A-D), F1 (fan-out in one process), F2 (across processes)",
    )  # fmt: skip
    parser.add_argument(
        "--fan-peers", help="comma-separated fan-out peers (default: all): "
        + ", ".join(p.name for p in F1_PEERS + F2_PEERS)
    )  # fmt: skip
    parser.add_argument(
        "--fan-subscribers", metavar="N[,N]", help="F1's sizes instead of the default ones"
    )
    parser.add_argument(
        "--fan-profile", type=int, default=0, metavar="N",
        help="profile ours (memory backend, cProfile) during F1 at N subscribers",
    )  # fmt: skip
    parser.add_argument("--drain", nargs=3, metavar=("PORT", "PATH", "SECONDS"),
                        help=argparse.SUPPRESS)  # fmt: skip
    return parser.parse_args()


def pin_cpus(disabled: bool) -> tuple[int | None, int | None]:
    """Server on the first allowed CPU, this client (and its children) on the second."""
    if disabled or not hasattr(os, "sched_getaffinity"):
        return None, None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    os.sched_setaffinity(0, {cpus[1]})
    return cpus[0], cpus[1]


def migrate(db: str) -> None:
    """Create ours' tables (its history model) in the run's own SQLite file."""
    env = Server(peer_named(REFERENCE), Path(tempfile.gettempdir())).environment()
    env["BENCH_DB"] = db
    subprocess.run(
        [sys.executable, "-m", "django", "migrate", "--noinput", "-v", "0"],
        cwd=APPS_DIR, env=env, check=True, timeout=120,
    )  # fmt: skip


def run_peer(peer: Peer, sizes: Sizes, out: Path, db: str, cpu: int | None) -> dict[str, Any]:
    result: dict[str, Any] = {
        "peer": peer.name, "label": peer.label, "impl": peer.impl, "server": peer.server,
        "view": peer.view, "loop": peer.loop, "observability": peer.observability,
        "note": peer.note,
    }  # fmt: skip
    missing = peer.missing()
    if missing:
        result.update(status="skipped", reason="not installed: " + ", ".join(missing))
        print(f"-- {peer.name}: skipped ({result['reason']})", flush=True)
        return result
    print(f"-- {peer.name} ({peer.label})", flush=True)
    began = time.monotonic()
    server = Server(peer, out / "logs", extra_env={"BENCH_DB": db}, cpu=cpu)
    try:
        with server:
            result["status"] = "ok"
            run_async(workloads(peer, server, sizes, result))
    except Exception as exc:
        result.update(status="failed", error=f"{type(exc).__name__}: {exc}")
        result["log_tail"] = server.log_tail()
        traceback.print_exc()
    finally:
        result["pids"] = sorted(server.pids_seen)
        result["seconds"] = round(time.monotonic() - began, 1)
    return result


async def workloads(peer: Peer, server: Server, sizes: Sizes, result: dict[str, Any]) -> None:
    port, path = server.port, peer.path
    result["identity"] = await identity(port, path)
    # Warm up: first requests import and compile what the server will use.
    await loadgen.throughput(port, path, 1, min(2_000, sizes.a), sizes.timeout)
    await loadgen.first_event_times(port, path, 5, sizes.timeout)

    async def step(name: str, work: Callable[[], Awaitable[dict[str, Any]]]) -> None:
        t0 = time.monotonic()
        try:
            result[name] = await asyncio.wait_for(work(), sizes.timeout)
        except Exception as exc:
            result[name] = {"error": f"{type(exc).__name__}: {exc}"}
        print(f"   {name}: {summary(result[name])} ({time.monotonic() - t0:.1f} s)", flush=True)
        await settle(port, peer)

    if peer.holds_idle:
        await step("C", lambda: idle_connections(peer, server, sizes))
    await step("D", lambda: first_event(port, path, sizes))
    await step("flood", lambda: flooded_first_event(port, path, sizes, result))
    await step("A", lambda: throughput(server, path, 1, sizes.a, sizes.repeats_a, sizes.timeout))
    await step(
        "B",
        lambda: throughput(
            server, path, sizes.b_streams, sizes.b_events, sizes.repeats_b, sizes.timeout
        ),
    )
    for name in ("A", "B"):
        if result[name].get("complete") is False:
            result[name]["error"] = "a stream ended early or with the wrong number of events"


def summary(value: dict[str, Any]) -> str:
    keys = ("events_per_s", "kib_per_connection", "closed_after_s", "median_ms", "ratio", "error")
    return ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
        for k, v in value.items()
        if k in keys
    )


async def identity(port: int, path: str) -> dict[str, Any]:
    """Does this peer send exactly the reference bytes for the same short stream?"""
    reader = await loadgen.read_stream(port, f"{path}?n={EXPECTED_EVENTS}", 10.0, keep_body=True)
    body = bytes(reader.body or b"")
    ok = reader.status == 200 and reader.complete and body == EXPECTED_BODY
    found: dict[str, Any] = {
        "ok": ok,
        "status": reader.status,
        "content_type": reader.headers.get("content-type"),
        "chunked": reader.complete,
    }
    if body != EXPECTED_BODY:
        diff = next(
            (i for i, (x, y) in enumerate(zip(body, EXPECTED_BODY, strict=False)) if x != y),
            min(len(body), len(EXPECTED_BODY)),
        )
        found.update(first_difference=diff, got=body[:120].decode("latin-1"))
    return found


async def throughput(
    server: Server, path: str, streams: int, events: int, repeats: int, timeout: float
) -> dict[str, Any]:
    """A or B, ``repeats`` times: the best run's events/s, and CPU over all runs
    (``loadgen.summarize_runs``)."""
    runs = []
    cpu = 0.0
    for _ in range(repeats):
        cpu_before = server.cpu_seconds()
        runs.append(await loadgen.throughput(server.port, path, streams, events, timeout))
        cpu += server.cpu_seconds() - cpu_before
    return loadgen.summarize_runs(runs, cpu)


async def first_event(port: int, path: str, sizes: Sizes) -> dict[str, Any]:
    times = await loadgen.first_event_times(port, path, sizes.d, sizes.timeout)
    return loadgen.summarize_times(times)


async def flooded_first_event(
    port: int, path: str, sizes: Sizes, result: dict[str, Any]
) -> dict[str, Any]:
    """Time to first event of a second stream while one stream floods the server."""
    idle = result.get("D", {}).get("median_ms")
    drain = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--drain", str(port),
        f"{path}?n=100000000&for_s={sizes.flood_seconds}", str(sizes.flood_seconds + 10),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        line = await asyncio.wait_for(drain.stdout.readline(), 10.0)  # type: ignore[union-attr]
        if line.strip() != b"started":
            raise RuntimeError("the flood stream did not start")
        await asyncio.sleep(0.3)  # the flood is in full swing
        times: list[float] = []
        deadline = time.monotonic() + sizes.flood_seconds - 0.5
        while len(times) < sizes.flood_samples and time.monotonic() < deadline:
            times += await loadgen.first_event_times(port, path, 1, sizes.timeout)
        if drain.returncode is not None:
            raise RuntimeError("the flood ended before the samples were taken")
    finally:
        if drain.returncode is None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(drain.wait(), sizes.flood_seconds + 15)
        if drain.returncode is None:
            drain.kill()  # by its own pid
            await drain.wait()
    found = loadgen.summarize_times(times)
    found["idle_median_ms"] = idle
    found["ratio"] = found["median_ms"] / idle if idle else None
    return found


async def idle_connections(peer: Peer, server: Server, sizes: Sizes) -> dict[str, Any]:
    """C: memory per idle stream, then how fast the server notices they were all reset."""
    port = server.port
    rss_base, fds_base = server.rss_bytes(), server.fd_count()
    idle = loadgen.IdleConnections()
    try:
        got = await idle.open(port, peer.path, sizes.c, sizes.timeout / 2)
        await asyncio.sleep(0.5)
        rss_idle, fds_idle = server.rss_bytes(), server.fd_count()
        active_idle = await active_streams(port, peer)
        dropped = time.perf_counter()
        idle.drop()
        closed_after = None
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline:
            if await active_streams(port, peer) == 0:
                closed_after = time.perf_counter() - dropped
                break
            await asyncio.sleep(0.01)
    finally:
        idle.drop()
    await asyncio.sleep(1.0)
    rss_after = server.rss_bytes()
    return {
        "connections": sizes.c,
        "got_first_event": got,
        "active_reported": active_idle,
        "rss_base_mib": rss_base / 2**20,
        "rss_idle_mib": rss_idle / 2**20,
        "rss_after_mib": rss_after / 2**20,
        "kib_per_connection": (rss_idle - rss_base) / 1024 / max(got, 1),
        "fds_base": fds_base,
        "fds_idle": fds_idle,
        "fds_after": server.fd_count(),
        "closed_after_s": closed_after,
        "counted_by": "flosse_connections_active (/flosse/metrics/)"
        if uses_metrics(peer)
        else "/active",
    }


def uses_metrics(peer: Peer) -> bool:
    return peer.impl == "ours" and peer.observability == "on"


_ACTIVE_GAUGE = re.compile(rb"^flosse_connections_active\{[^}]*\}\s+(\S+)", re.MULTILINE)


async def active_streams(port: int, peer: Peer) -> int:
    """Open streams as the server counts them (ours with metrics: the Prometheus gauge)."""
    if uses_metrics(peer):
        status, body = await loadgen.fetch(port, "/flosse/metrics/")
        if status != 200:
            raise RuntimeError(f"/flosse/metrics/ answered {status}")
        return round(sum(float(v) for v in _ACTIVE_GAUGE.findall(body)))
    status, body = await loadgen.fetch(port, "/active")
    if status != 200:
        raise RuntimeError(f"/active answered {status}")
    return int(json.loads(body)["active"])


async def settle(port: int, peer: Peer, timeout: float = 15.0) -> None:
    """Wait (bounded) until the server has no stream open, so workloads never overlap."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if await active_streams(port, peer) == 0:
                return
        await asyncio.sleep(0.05)


def run_profiles(names: str, out: Path, db: str, cpu: int | None, seconds: float) -> dict[str, Any]:
    if not names:
        return {}
    import spy

    profiles = {}
    for name in names.split(","):
        peer = peer_named(name)
        print(f"-- profiling {peer.name} on workload A for {seconds:g} s", flush=True)
        server = Server(peer, out / "logs", extra_env={"BENCH_DB": db}, cpu=cpu)
        try:
            with server:
                profiles[name] = run_async(spy.profile(peer, server, out, seconds))
        except Exception as exc:
            profiles[name] = {"error": f"{type(exc).__name__}: {exc}"}
            traceback.print_exc()
        profiles[name]["pids"] = sorted(server.pids_seen)
    return profiles


if __name__ == "__main__":
    sys.exit(main())
