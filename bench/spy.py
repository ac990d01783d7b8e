"""Profile a peer's server with py-spy while it streams workload A (``run.py --profile``).

Two recordings one after the other, of the same endless stream: a flame graph (SVG) to
look at, and raw collapsed stacks (per thread) that this module sums into "self" and "total"
shares per function and per file for the report. Only the threads that stream count (the
event loop, gunicorn's request threads, a sync generator's thread): py-spy does not always
see that a background thread (metrics folding, the history writer) is asleep. Only the
server is sampled (by its pid; for gunicorn its worker, the pid's child), and py-spy stops
by itself after ``--duration``.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import loadgen
from peers import Peer, Server

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")

#: A thread that ever shows one of these in a stack serves the stream; the others are left out.
STREAMING_MARKERS = (
    "Stream.frames", "ASGIHandler", "RequestResponseCycle", "ThreadedSource", "handle_request",
    "iterate_on_private_loop", "(raw_asgi.py", "EventSourceResponse", "StreamingHttpResponse",
)  # fmt: skip

#: A stack ending in one of these is a thread waiting (py-spy sees the Python frame that
#: called the blocking C function): thread pools, timers, the persistence writer, the
#: metrics folder. They are left out, so shares are of the time spent working.
IDLE_LEAVES = frozenset({
    "Condition.wait (threading.py)",
    "Event.wait (threading.py)",
    "_worker (concurrent/futures/thread.py)",
    "Thread._wait_for_tstate_lock (threading.py)",
    "Thread.join (threading.py)",
    "SimpleQueue.get (queue.py)",
    "Queue.get (queue.py)",
    "sleep (time.py)",
    "EpollSelector.select (selectors.py)",
    "select (selectors.py)",
    "PollSelector.select (selectors.py)",
    "ThreadWorker.wait_for_and_dispatch_events (gunicorn/workers/gthread.py)",
})  # fmt: skip


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        raise RuntimeError("py-spy is not installed (pip install py-spy into bench/.venv)")
    return found


async def record(
    pid: int, seconds: float, fmt: str, output: Path, *, rate: int = 250, blocking: bool = True
) -> None:
    """py-spy on ``pid`` for ``seconds``; ``blocking=False`` reads the process without
    pausing it (cheaper per sample: with thousands of connections, pausing made py-spy fall
    behind its rate and overrun its duration)."""
    proc = await asyncio.create_subprocess_exec(
        py_spy(), "record", "--pid", str(pid), "--duration", str(int(seconds)),
        "--rate", str(rate), "--threads", "--format", fmt, "--output", str(output),
        *(() if blocking else ("--nonblocking",)),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        _, err = await asyncio.wait_for(proc.communicate(), seconds + 30)
    finally:
        if proc.returncode is None:
            proc.kill()  # by its own pid
            await proc.wait()
    if proc.returncode != 0 or not output.exists():  # noqa: ASYNC240 - once, after the run
        raise RuntimeError(f"py-spy failed ({proc.returncode}): {err.decode()[-500:]}")


async def profile(peer: Peer, server: Server, out: Path, seconds: float) -> dict[str, Any]:
    # gunicorn: the worker (the master only forks and waits) is the last pid of the tree.
    pid = server.tree()[-1]
    svg = out / f"profile-{peer.name}.svg"
    raw = out / f"profile-{peer.name}.txt"
    stream_seconds = 2 * seconds + 6
    path = f"{peer.path}?n=100000000&for_s={stream_seconds}"
    transport, reader = await loadgen.open_stream(server.port, path)
    try:
        await asyncio.wait_for(reader.first, 10)
        await asyncio.sleep(0.5)
        await record(pid, seconds, "flamegraph", svg)
        counted, t0 = reader.events, time.perf_counter()
        await record(pid, seconds, "raw", raw)
        rate = (reader.events - counted) / (time.perf_counter() - t0)
        await asyncio.wait_for(asyncio.shield(reader.done), stream_seconds + 10)
    finally:
        transport.abort()
    found = summarize(raw.read_text())
    found.update(svg=str(svg), raw=str(raw), events_per_s=rate, pid=pid)
    return found


def summarize(collapsed: str, top: int = 25) -> dict[str, Any]:
    """Self and total shares (percent of busy samples) per function and per file."""
    stacks: list[tuple[str, list[str], int]] = []  # (thread, frames, count)
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        thread, _, rest = stack.partition(";") if stack.startswith("thread (") else ("", "", stack)
        stacks.append((thread, [_name(frame) for frame in rest.split(";")], int(count_text)))
    threads: Counter[str] = Counter()
    streaming = set()
    for thread, frames, count in stacks:
        threads[thread] += count
        if any(marker in frame for frame in frames for marker in STREAMING_MARKERS):
            streaming.add(thread)

    self_count: Counter[str] = Counter()
    total_count: Counter[str] = Counter()
    file_count: Counter[str] = Counter()
    samples = idle = 0
    for thread, frames, count in stacks:
        if thread not in streaming or frames[-1] in IDLE_LEAVES:
            idle += count
            continue
        samples += count
        for key in set(frames):
            total_count[key] += count
        self_count[frames[-1]] += count
        file_count[_file(frames[-1])] += count

    def share(counter: Counter[str], n: int) -> list[dict[str, Any]]:
        return [
            {"function": key, "self": 100 * self_count[key] / samples,
             "total": 100 * total_count[key] / samples}
            for key, _ in counter.most_common(n)
        ]  # fmt: skip

    return {
        "samples": samples,
        "left_out_samples": idle,
        "threads": {name or "?": n for name, n in threads.most_common()},
        "streaming_threads": sorted(streaming),
        "top": share(self_count, top) if samples else [],
        "top_total": share(total_count, top) if samples else [],
        "by_file": [
            {"file": key, "self": 100 * count / samples}
            for key, count in file_count.most_common(top)
        ],
    }


def _name(frame: str) -> str:
    """``f (django_flosse/lifecycle.py:170)`` -> ``f (django_flosse/lifecycle.py)``."""
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    return f"{match['func']} ({_short(match['file'])})"


def _file(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    return _short(match["file"]) if match else frame.strip()


def _short(path: str) -> str:
    for marker in ("site-packages/", "lib/python3."):
        if marker in path:
            path = path.split(marker, 1)[1]
            if marker == "lib/python3.":
                path = "stdlib:" + path.split("/", 1)[-1]
            break
    return path


async def profile_fanout(
    peer: Peer, server: Server, out: Path, sizes: Any, subscribers: int, seconds: float
) -> dict[str, Any]:
    """cProfile inside ours' server (``/profile`` of ``apps/fan_ours.py``) while it publishes
    one schedule to ``subscribers`` idle subscribers and delivers it (``seconds`` after the
    last publish). py-spy is not used here: attached to a server holding 2,000 or more
    connections it fell a second behind per sample on this machine, or did not attach."""
    import pstats

    import fanout
    import loadgen

    stats_path = out / f"profile-fanout-{peer.name}.pstats"
    clients = fanout.Clients(max(1, -(-subscribers // fanout.PER_CLIENT)))
    try:
        await fanout.subscribe(clients, [server.port], subscribers, sizes.timeout)
        count = await fanout.wait_registered([server], subscribers, sizes.timeout / 4)
        if count < subscribers:
            raise RuntimeError(f"only {count} of {subscribers} subscribers registered")
        query = f"{sizes.query()}&out={stats_path}&linger={seconds}"
        status, body = await loadgen.fetch(
            server.port, f"/profile?{query}", sizes.timeout + seconds
        )
        if status != 200:
            raise RuntimeError(f"/profile answered {status}: {body[:300]!r}")
        tallies = await clients.ask(
            [{"cmd": "collect", "events": sizes.events, "timeout": sizes.timeout}]
            * len(clients.procs),
            sizes.timeout + 30,
        )
        await clients.ask([{"cmd": "close"}] * len(clients.procs), 30)
    finally:
        clients.stop()
    stats = pstats.Stats(str(stats_path))
    found = summarize_pstats(stats)
    found.update(
        profiler="cProfile", pstats=str(stats_path), subscribers=subscribers,
        gc=json.loads(body).get("gc"),
        lost=sum(t["lost"] for t in tallies), duplicates=sum(t["duplicates"] for t in tallies),
    )  # fmt: skip
    return found


def summarize_pstats(stats: Any, top: int = 25) -> dict[str, Any]:
    """Self ("tottime") and inclusive ("cumtime") shares per function, of the total time."""
    rows = stats.stats  # (file, line, function) -> (calls, primitive calls, tottime, cumtime, _)
    total = sum(tottime for _, _, tottime, _, _ in rows.values()) or 1.0

    def name(key: tuple[str, int, str]) -> str:
        file, _line, func = key
        return f"{func} ({_short(file)})" if file != "~" else func

    def entry(key: tuple[str, int, str]) -> dict[str, Any]:
        calls, _, tottime, cumtime, _ = rows[key]
        return {"function": name(key), "calls": calls, "self": 100 * tottime / total,
                "total": 100 * cumtime / total}  # fmt: skip

    by_self = sorted(rows, key=lambda k: rows[k][2], reverse=True)[:top]
    by_total = sorted(rows, key=lambda k: rows[k][3], reverse=True)[:top]
    files: Counter[str] = Counter()
    for key, (_, _, tottime, _, _) in rows.items():
        files[_short(key[0]) if key[0] != "~" else "(builtins)"] += tottime
    return {
        "seconds": total,
        "top": [entry(k) for k in by_self],
        "top_total": [entry(k) for k in by_total],
        "by_file": [{"file": f, "self": 100 * t / total} for f, t in files.most_common(top)],
    }
