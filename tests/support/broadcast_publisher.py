"""A publishing process for the broadcast tests: ``python -m tests.support.broadcast_publisher``.

Runs with the settings in ``DJANGO_SETTINGS_MODULE`` (those of the servers), like a Celery
worker or a cron job of the project would, and publishes with ``broadcast()``:

    --topics A,B --count 20 --prefix p1   events "p1-0" ... "p1-19", alternating the topics
    --interval 0.01                       seconds between two publishes
    --stamp                               data "<prefix>-<i> <time.time()>" (latency)
    --rollback                            publish once inside atomic() and roll it back
    --keep-going --max-count 5000         the fault tests' publisher: "<topic>:<prefix>-<i>"
                                          until a line "stop" on stdin (and at least
                                          --count), each retried until it is published

It prints "done <n>" when it has published everything. With ``--keep-going`` it prints one
JSON line per attempt instead (``{"ok": data}`` or ``{"failed": data, "error": ...}``), and
``{"done": n}`` at the end: :class:`Publisher` runs it so and counts them (standard library
only here: the soak run uses it too).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

_REPO_ROOT = Path(__file__).resolve().parents[2]

#: Seconds between two attempts at one event while the engine is down (the last repeats).
RETRY_DELAYS = (0.05, 0.1, 0.2, 0.5)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--topics", required=True)
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--prefix", default="p")
    parser.add_argument("--interval", type=float, default=0.0)
    parser.add_argument("--stamp", action="store_true")
    parser.add_argument("--rollback", action="store_true")
    parser.add_argument("--keep-going", action="store_true")
    parser.add_argument("--max-count", type=int, default=5000)
    args = parser.parse_args()

    import django

    django.setup()
    from django.db import transaction

    from django_flosse import broadcast

    topics = args.topics.split(",")
    if args.keep_going:
        keep_going(broadcast, topics, args)
        return
    if args.rollback:

        class Rollback(Exception):
            pass

        try:
            with transaction.atomic():
                for topic in topics:
                    broadcast(topic, f"{args.prefix}-rolled-back")
                raise Rollback
        except Rollback:
            print("done 0", flush=True)
        return
    for i in range(args.count):
        data = f"{args.prefix}-{i}"
        if args.stamp:
            data += f" {time.time()!r}"
        broadcast(topics[i % len(topics)], data)
        if args.interval:
            time.sleep(args.interval)
    print(f"done {args.count}", flush=True)


def keep_going(broadcast: Any, topics: list[str], args: argparse.Namespace) -> None:
    """Publish until told to stop, retrying each event until it goes through: what a
    task queue does with a task whose publish raised (see docs/broadcast.md)."""
    stop = threading.Event()

    def wait_for_stop() -> None:
        for line in sys.stdin:
            if line.strip() == "stop":
                break
        stop.set()

    threading.Thread(target=wait_for_stop, daemon=True).start()
    i = 0
    while i < args.max_count and (i < args.count or not stop.is_set()):
        topic = topics[i % len(topics)]
        data = f"{topic}:{args.prefix}-{i}"
        for attempt in range(10_000):
            try:
                broadcast(topic, data)
            except Exception as exc:
                report({"failed": data, "error": f"{type(exc).__name__}: {exc}"})
                time.sleep(RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)])
                continue
            report({"ok": data})
            break
        i += 1
        if args.interval:
            time.sleep(args.interval)
    report({"done": i})


def report(what: dict[str, Any]) -> None:
    print(json.dumps(what), flush=True)


class Publisher:
    """``tests.support.broadcast_publisher --keep-going`` in a process of its own: it
    publishes ``"<topic>:<prefix>-<i>"`` until :meth:`finish` (or ``count`` events), retrying
    each event until it goes through; its report lines are collected as they come."""

    def __init__(
        self,
        env: dict[str, str],
        topics: str,
        prefix: str,
        *,
        interval: float = 0.02,
        count: int = 0,
        cwd: str | None = None,
    ) -> None:
        self.oks: list[str] = []
        self.failures: list[tuple[str, str, float]] = []  # data, error, time.monotonic()
        self.done: int | None = None
        self.other: list[str] = []  # lines of stdout that are not reports
        self.first_failure_index: int | None = None  # len(oks) at the first failure
        self._stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed in finish)
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "tests.support.broadcast_publisher", "--keep-going",
                "--topics", topics, "--prefix", prefix, "--interval", str(interval),
                "--count", str(count),
            ],
            cwd=cwd or _REPO_ROOT,
            env={**os.environ, **env, "PGAPPNAME": f"publisher-{prefix}"},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )  # fmt: skip
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if count:  # exactly ``count`` events
            assert self.proc.stdin is not None
            self.proc.stdin.write("stop\n")
            self.proc.stdin.flush()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                report = json.loads(line)
            except ValueError:  # something else printed to stdout (a log line)
                self.other.append(line)
                continue
            if "ok" in report:
                self.oks.append(report["ok"])
            elif "failed" in report:
                if self.first_failure_index is None:
                    self.first_failure_index = len(self.oks)
                self.failures.append((report["failed"], report["error"], time.monotonic()))
            elif "done" in report:
                self.done = report["done"]

    def finish(self, timeout: float = 60.0) -> str:
        """Tell it to stop after the event it is on; wait; its stderr (empty when all went
        well). Raises AssertionError if it failed or did not end in time."""
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.write("stop\n")
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout)
        self._close_pipes()
        self._stderr.seek(0)
        err = self._stderr.read()
        self._stderr.close()
        assert self.proc.returncode == 0 and self.done is not None, err[-3000:]
        return err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(10)
        self._close_pipes()
        if not self._stderr.closed:
            self._stderr.close()

    def _close_pipes(self) -> None:
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None and not pipe.closed:
                with contextlib.suppress(OSError):
                    pipe.close()


if __name__ == "__main__":
    main()
