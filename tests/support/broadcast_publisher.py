"""A publishing process for the broadcast tests: ``python -m tests.support.broadcast_publisher``.

Runs with the settings in ``DJANGO_SETTINGS_MODULE`` (those of the servers), like a Celery
worker or a cron job of the project would, and publishes with ``broadcast()``:

    --topics A,B --count 20 --prefix p1   events "p1-0" ... "p1-19", alternating the topics
    --interval 0.01                       seconds between two publishes
    --stamp                               data "<prefix>-<i> <time.time()>" (latency)
    --rollback                            publish once inside atomic() and roll it back

It prints "done <n>" when it has published everything.
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--topics", required=True)
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--prefix", default="p")
    parser.add_argument("--interval", type=float, default=0.0)
    parser.add_argument("--stamp", action="store_true")
    parser.add_argument("--rollback", action="store_true")
    args = parser.parse_args()

    import django

    django.setup()
    from django.db import transaction

    from django_flosse import broadcast

    topics = args.topics.split(",")
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


if __name__ == "__main__":
    main()
