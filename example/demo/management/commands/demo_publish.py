"""``manage.py demo_publish``: broadcast a numbered note every second. Demo only.

``make demo-cluster`` runs it as a process of its own, beside the servers: the events it
publishes reach every server process through the broadcast backend (PostgreSQL or Redis),
as a Celery worker's would.
"""

from __future__ import annotations

import itertools
import os
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from django_flosse import broadcast

#: Every ALERT_EVERY-th note also goes to the ``alerts`` topic.
ALERT_EVERY = 5


class Command(BaseCommand):
    help = "Broadcast a numbered note to 'news' every --every seconds (every fifth to 'alerts')."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--every", type=float, default=1.0, help="seconds between notes")
        parser.add_argument("--count", type=int, default=0, help="stop after N notes (0: never)")

    def handle(self, *args: Any, every: float, count: int, **options: Any) -> None:
        pid = os.getpid()
        numbers = range(1, count + 1) if count > 0 else itertools.count(1)
        for n in numbers:
            data = {"text": f"note {n} from the publisher", "pid": pid}
            broadcast("news", data, event="note")
            topics = "news"
            if n % ALERT_EVERY == 0:
                broadcast("alerts", data, event="note")
                topics += " and alerts"
            self.stdout.write(f"published note {n} to {topics}")
            self.stdout.flush()
            time.sleep(every)
