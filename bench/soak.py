"""Soak run: connect/drop cycles, stuck clients and shutdowns against real servers, for minutes.

    python bench/soak.py                      # ~7 minutes (make soak): 5 + the broadcast phase
    python bench/soak.py --duration 60 --streams 300
    SOAK_ARGS="--duration 900" make soak
    SOAK_ARGS="--duration 0 --broadcast-duration 600" make soak   # only broadcast, 10 minutes
    python bench/soak.py --duration 0 --broadcast-duration 180 --broadcast-backend redis

One long-lived uvicorn process takes the repeated cycles; every few cycles a stuck client
(a client that stops reading on a flooding stream with ``send_timeout=2``) and a graceful
shutdown of a fresh server (uvicorn and gunicorn gthread, alternately) are mixed in. Each
cycle prints its figures; the end prints a summary: connections held and dropped, time back
to zero, RSS and Python objects over time (a leak shows as a trend), shutdown times.

Then the broadcast phase (``bench/soak_broadcast.py``) runs for ``--broadcast-duration``
seconds (120 by default; 0 skips it): ``--broadcast-subscribers`` (1,000) subscribers on two
workers, with a worker kill, drops and a backend restart in every cycle: PostgreSQL's
(``pg_ctl -m fast``, nothing may be lost) and Redis's (SIGKILL, no persistence: one
``flosse-reset`` per subscriber and restart, then every later event), half the duration
each (``--broadcast-backend postgres|redis|both``, ``both`` by default).

Everything is bounded: the run stops starting cycles at ``--duration`` and every wait has a
deadline. It only ever signals the servers it started, on 127.0.0.1. It exits non-zero if
a check failed (a stream not cleaned up, a shutdown that hung, memory that kept growing).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from tests.support.observe import active_gauge, closed_records, state, wait_until  # noqa: E402
from tests.support.processes import settled_rss  # noqa: E402
from tests.support.servers import LOGGING_SETTINGS, LiveServer  # noqa: E402
from tests.support.wire import RawStream, open_many, stuck_socket  # noqa: E402
from tests.support.wire import rst_close as rst_socket  # noqa: E402

STREAM = "rel.endless"


@dataclass
class Failures:
    """What went wrong in a phase (printed at once, and in the summary)."""

    failures: list[str] = field(default_factory=list)

    def fail(self, what: str) -> None:
        self.failures.append(what)
        print(f"  FAILED: {what}", flush=True)


@dataclass
class Figures(Failures):
    cycles: int = 0
    held: int = 0
    dropped: int = 0
    zero_times: list[float] = field(default_factory=list)
    rss: list[float] = field(default_factory=list)  # settled RSS after each cycle (MB)
    objects: list[int] = field(default_factory=list)  # Python objects after each cycle
    stuck: list[float] = field(default_factory=list)  # stuck stream ended after (s)
    pace: list[float] = field(default_factory=list)  # other stream's events/s while stuck
    shutdowns: list[tuple[str, int, float]] = field(default_factory=list)  # kind, n, s


def log(text: str) -> None:
    print(text, flush=True)


def migrate(db_file: str) -> None:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "FLOSSE_TEST_DB": db_file}
    subprocess.run(
        [sys.executable, "-m", "django", "migrate", "--noinput", "-v", "0"],
        cwd=REPO_ROOT,
        env=env,
        check=True,
        timeout=120,
    )


# --------------------------------------------------------------------------- cycles


def drop_cycle(server: LiveServer, n: int, figures: Figures) -> None:
    """Open ``n`` streams, then RST them all at once; time the return to zero."""
    finally_before = state(server)["finally"].get(STREAM, 0)
    dropped_at = 0.0

    async def run() -> None:
        nonlocal dropped_at
        streams: list[RawStream] = await open_many(server.port, "/rel/endless/?every=1", n)
        held = await asyncio.to_thread(state, server)
        if held["active"] != n:
            figures.fail(f"held {held['active']} of {n}")
        figures.held += n
        dropped_at = time.monotonic()
        for stream in streams:
            stream.rst()
        await asyncio.sleep(0)

    asyncio.run(run())
    last: dict[str, Any] = {}

    def zero() -> bool:
        nonlocal last
        last = state(server)
        return (
            last["active"] == 0
            and last["open_rows"] == 0
            and last["finally"].get(STREAM, 0) - finally_before == n
            and active_gauge(server, STREAM) == 0
        )

    took = wait_until(zero, 15.0, 0.05)
    if took is None:
        figures.fail(f"not back to zero 15 s after dropping {n}: {last}")
        return
    elapsed = time.monotonic() - dropped_at
    figures.dropped += n
    figures.zero_times.append(elapsed)
    rss = settled_rss(server.pid)
    objects = state(server, gc=True)["gc_objects"]
    figures.rss.append(rss)
    figures.objects.append(objects)
    log(f"  drop: {n} held, zero after {elapsed:.2f} s, RSS {rss:.1f} MB, {objects} Python objects")


def stuck_cycle(server: LiveServer, figures: Figures) -> None:
    """A client that never reads a flooding stream (send_timeout=2), while another reads."""
    before = len(closed_records(server, "rel.flood_timeout"))
    sock = stuck_socket(server.port, "/rel/flood-timeout/")
    started = time.monotonic()

    async def other() -> float:
        stream = await RawStream.open(server.port, "/rel/endless/?every=0.05")
        await stream.wait_for(b"data: ", 5)
        t0, n0 = time.monotonic(), stream.data.count(b"\n\n")
        await asyncio.sleep(2.0)
        rate = (stream.data.count(b"\n\n") - n0) / (time.monotonic() - t0)
        stream.rst()
        return rate

    try:
        rate = asyncio.run(other())
        figures.pace.append(rate)
        ended = wait_until(
            lambda: len(closed_records(server, "rel.flood_timeout")) > before, 10.0, 0.05
        )
        if ended is None:
            figures.fail("stuck stream did not end within 10 s")
            return
        took = time.monotonic() - started
        reason = closed_records(server, "rel.flood_timeout")[-1]["reason"]
        if reason != "timeout":
            figures.fail(f"stuck stream ended with {reason!r}")
        figures.stuck.append(took)
        log(f"  stuck: ended ({reason}) after {took:.2f} s; other stream {rate:.1f} events/s")
    finally:
        rst_socket(sock)


def shutdown_cycle(kind: str, n: int, env: dict[str, str], figures: Figures) -> None:
    """Start a fresh server, open ``n`` streams, SIGTERM it, time its exit."""
    extra = ("--graceful-timeout", "30") if kind == "gunicorn" else ()
    server = LiveServer(kind, env=env, extra_args=extra, threads=n + 20)  # type: ignore[arg-type]
    try:
        server.start()

        async def run() -> tuple[list[RawStream], float]:
            streams = await open_many(server.port, "/rel/endless/?every=0.5", n)
            sent = time.monotonic()
            server.send_signal(signal.SIGTERM)
            await asyncio.gather(*(s.wait_eof(15) for s in streams))
            return streams, sent

        streams, sent = asyncio.run(run())
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            figures.fail(f"{kind} did not exit within 30 s of SIGTERM")
            return
        took = time.monotonic() - sent
        finals = [s.events()[-1] for s in streams if s.events()]
        ok = sum(1 for e in finals if e.get("event") == "shutdown" and "retry" in e)
        retries = {e.get("retry") for e in finals}
        reasons = {r["reason"] for r in closed_records(server, STREAM)}
        if ok != n or reasons != {"shutdown"} or len(retries) < 2:
            figures.fail(f"{kind} shutdown: {ok}/{n} final frames, reasons {reasons}")
        figures.shutdowns.append((kind, n, took))
        log(
            f"  shutdown {kind}: {n} streams, {ok} final frames, "
            f"{len(retries)} distinct retry values, exited after {took:.2f} s"
        )
    finally:
        server.close()


# --------------------------------------------------------------------------- main


def summary(figures: Figures, wall: float, rss_baseline: float, objects_baseline: int) -> None:
    log("\n=== soak summary ===")
    log(f"wall time                  {wall:.0f} s, {figures.cycles} cycles")
    log(f"connections held/dropped   {figures.held} / {figures.dropped}")
    if figures.zero_times:
        z = figures.zero_times
        log(
            f"time back to zero (s)      min {min(z):.2f}  median {statistics.median(z):.2f}  "
            f"max {max(z):.2f}"
        )
    if figures.rss:
        log(
            f"RSS (MB)                   baseline {rss_baseline:.1f}  first {figures.rss[0]:.1f}  "
            f"last {figures.rss[-1]:.1f}  max {max(figures.rss):.1f}  "
            f"({(figures.rss[-1] / rss_baseline - 1) * 100:+.1f}% of baseline)"
        )
        log(
            f"Python objects             baseline {objects_baseline}  "
            f"first {figures.objects[0]}  last {figures.objects[-1]}"
        )
    if figures.stuck:
        log(
            f"stuck clients              {len(figures.stuck)}, ended after "
            f"{min(figures.stuck):.2f}-{max(figures.stuck):.2f} s (send_timeout 2 s); "
            f"other stream {min(figures.pace):.1f}-{max(figures.pace):.1f} events/s (20 sent/s)"
        )
    for kind in ("uvicorn", "gunicorn"):
        times = [t for k, _, t in figures.shutdowns if k == kind]
        if times:
            n = next(n for k, n, _ in figures.shutdowns if k == kind)
            log(
                f"shutdowns {kind:<17}{len(times)} x {n} streams, exit after "
                f"{min(times):.2f}-{max(times):.2f} s"
            )
    log(f"failures                   {len(figures.failures)}")
    for failure in figures.failures:
        log(f"  - {failure}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=300.0, help="seconds (300)")
    parser.add_argument("--streams", type=int, default=1000, help="per drop cycle (1000)")
    parser.add_argument("--shutdown-streams", type=int, default=100, help="per shutdown (100)")
    parser.add_argument("--every", type=int, default=4, help="stuck + shutdown every N cycles")
    parser.add_argument(
        "--broadcast-duration",
        type=float,
        default=120.0,
        help="seconds of the broadcast phase (120; 600 is the issue's 10 minutes; 0 skips it)",
    )
    parser.add_argument(
        "--broadcast-subscribers", type=int, default=1000, help="in the broadcast phase (1000)"
    )
    parser.add_argument(
        "--broadcast-backend",
        choices=("postgres", "redis", "both"),
        default="both",
        help="whose restart the broadcast cycles take: PostgreSQL's, Redis's (SIGKILL, no "
        "persistence), or both, one after the other, half the duration each (both)",
    )
    parser.add_argument(
        "--malloc-arena-max",
        type=int,
        default=2,
        help="MALLOC_ARENA_MAX for the servers (2, as docs/reliability.md recommends; "
        "0: glibc's default, to see the fragmentation of per-thread arenas)",
    )
    args = parser.parse_args(argv)
    if args.malloc_arena_max:
        os.environ["MALLOC_ARENA_MAX"] = str(args.malloc_arena_max)  # servers inherit it
    else:
        os.environ.pop("MALLOC_ARENA_MAX", None)

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, max(soft, 2 * args.streams + 512))
    wanted = min(hard, max(wanted, 2 * args.broadcast_subscribers + 512))
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    failed = 0
    if args.duration > 0:
        failed = connections_phase(args)
    if args.broadcast_duration > 0:
        import soak_broadcast

        backends = (
            ("postgres", "redis") if args.broadcast_backend == "both" else (args.broadcast_backend,)
        )
        phases = soak_broadcast.main(args.broadcast_duration, args.broadcast_subscribers, backends)
        failed += sum(len(figures.failures) for figures in phases)
    return 1 if failed else 0


def connections_phase(args: argparse.Namespace) -> int:
    """The connect/drop, stuck and shutdown cycles; the number of failures."""

    tmp = tempfile.mkdtemp(prefix="flosse-soak-")
    db_file = os.path.join(tmp, "soak.sqlite3")
    os.environ["FLOSSE_TEST_DB"] = db_file  # LiveServer passes it on
    migrate(db_file)
    env = {"DJANGO_SETTINGS_MODULE": LOGGING_SETTINGS}
    figures = Figures()
    started = time.monotonic()
    server = LiveServer("uvicorn", env=env)
    try:
        server.start()
        log(
            f"soak: uvicorn pid {server.pid}, {args.streams} streams per cycle, "
            f"{args.duration:.0f} s, MALLOC_ARENA_MAX={args.malloc_arena_max or 'default'}"
        )
        log("warm-up")
        drop_cycle(server, args.streams, figures)
        rss_baseline, objects_baseline = figures.rss[-1], figures.objects[-1]
        figures.rss.clear()
        figures.objects.clear()
        figures.zero_times.clear()
        kinds = ["uvicorn", "gunicorn"]
        while time.monotonic() - started < args.duration and len(figures.failures) < 5:
            figures.cycles += 1
            log(f"cycle {figures.cycles} ({time.monotonic() - started:.0f} s)")
            drop_cycle(server, args.streams, figures)
            if figures.cycles % args.every == 0:
                stuck_cycle(server, figures)
                kind = kinds[(figures.cycles // args.every) % 2]
                shutdown_cycle(kind, args.shutdown_streams, env, figures)
        if figures.rss and figures.rss[-1] > rss_baseline * 1.10:
            figures.fail(
                f"RSS {figures.rss[-1]:.1f} MB is more than 10% over the baseline "
                f"{rss_baseline:.1f} MB"
            )
        if "Traceback" in server.logs():
            figures.fail("the long-lived server logged a traceback")
    except Exception as exc:
        figures.fail(f"{type(exc).__name__}: {exc}")
        with contextlib.suppress(Exception):
            log("\n".join(server.logs().splitlines()[-40:]))
        rss_baseline, objects_baseline = 0.0, 0
    finally:
        server.close()
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(db_file + suffix)
        with contextlib.suppress(OSError):
            os.rmdir(tmp)
    summary(figures, time.monotonic() - started, rss_baseline or 1.0, objects_baseline)
    return len(figures.failures)


if __name__ == "__main__":
    sys.exit(main())
