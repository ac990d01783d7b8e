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
JSON line per attempt instead (``{"ok": data}`` or ``{"failed": data, "error": ...}``, what
``tests.support.fleet.Publisher`` counts), and ``{"done": n}`` at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from typing import Any

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


if __name__ == "__main__":
    main()
