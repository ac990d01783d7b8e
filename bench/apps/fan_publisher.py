"""The publisher of F2, in a process of its own: ``python fan_publisher.py MODULE [QUERY]``.

Runs with the servers' settings (``DJANGO_SETTINGS_MODULE=bench_settings`` and the same
``BENCH_*`` variables), as a worker or a cron job of the project would, and publishes the
schedule (``fan_common.Schedule``, from a query string such as
``spaced=20&interval=0.05&burst=200``) with the peer's own cross-process publish:
``MODULE.publish_one`` (ours: ``abroadcast`` on PostgreSQL or Redis; django-eventstream:
``send_event`` with ``EVENTSTREAM_REDIS``; Channels: ``group_send`` on ``channels_redis``).
Prints the schedule's timings as one JSON line.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import sys

import django


def main() -> None:
    module_name = sys.argv[1]
    schedule_query = sys.argv[2] if len(sys.argv) > 2 else ""
    django.setup()
    from fan_common import Schedule

    module = importlib.import_module(module_name)
    done = asyncio.run(Schedule.from_query(schedule_query).run(module.publish_one))
    print(json.dumps(done), flush=True)


if __name__ == "__main__":
    main()
