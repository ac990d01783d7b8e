"""The database backend's publisher alone, on a throwaway PostgreSQL: ms per ``abroadcast()``.

Two shapes, each ``--calls`` calls on one topic, repeated ``--rounds`` times (the median and
the range are printed): the calls awaited one by one (F2's publisher: each call waits for
its own commit) and all of them in flight together (the publisher's group commit shares
transactions). No subscriber: this is the cost of storing and notifying only.

    bench/.venv/bin/python bench/pg_publish.py [--calls 200] [--rounds 5]

It imports ``django_flosse`` from the interpreter's path: run it with the bench venv of the
tree to measure (``bench/.venv`` is editable-installed to its own tree).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


async def awaited(calls: int, topic: str) -> float:
    from django_flosse import abroadcast

    start = time.perf_counter()
    for n in range(calls):
        await abroadcast(topic, n)
    return time.perf_counter() - start


async def in_flight(calls: int, topic: str) -> float:
    from django_flosse import abroadcast

    start = time.perf_counter()
    await asyncio.gather(*(abroadcast(topic, n) for n in range(calls)))
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    from tests.support.postgres import running_cluster

    with running_cluster() as cluster:
        os.environ.update(cluster.env())
        os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings_pg"
        import django
        from django.conf import settings
        from django.test import override_settings

        django.setup()
        flosse = {**settings.FLOSSE, "BROADCAST_BACKEND": "database"}
        with override_settings(FLOSSE=flosse):
            import django_flosse

            print(f"django_flosse from {Path(django_flosse.__file__).parent}")
            asyncio.run(awaited(20, "warm-up"))
            for shape in (awaited, in_flight):
                seconds = [
                    asyncio.run(shape(args.calls, f"{shape.__name__}-{n}"))
                    for n in range(args.rounds)
                ]
                per_call = sorted(1000 * s / args.calls for s in seconds)
                print(
                    f"{shape.__name__:>9}: {args.calls} calls x {args.rounds} rounds, "
                    f"ms per call median {statistics.median(per_call):.2f} "
                    f"(range {per_call[0]:.2f}-{per_call[-1]:.2f})"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
