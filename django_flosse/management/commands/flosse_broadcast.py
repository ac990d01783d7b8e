"""``manage.py flosse_broadcast TOPIC DATA [--event NAME] [--json]``: publish one event.

From a shell, a cron job or a deploy script, to every stream subscribed to ``TOPIC`` in
every process (with a backend shared by the processes: ``database`` or ``redis``).
"""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from django_flosse.broadcasting import broadcast


class Command(BaseCommand):
    help = (
        "Broadcast one event to every stream subscribed to TOPIC. DATA is sent as the "
        "string given (with --json: parsed as JSON first, sent as its JSON encoding)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("topic", metavar="TOPIC")
        parser.add_argument("data", metavar="DATA")
        parser.add_argument("--event", metavar="NAME", default=None, help="The event name.")
        parser.add_argument("--json", action="store_true", help="Parse DATA as JSON first.")

    def handle(self, *args: Any, topic: str, data: str, event: str | None, **options: Any) -> None:
        value: Any = data
        if options["json"]:
            try:
                value = json.loads(data)
            except json.JSONDecodeError as exc:
                raise CommandError(f"DATA is not valid JSON: {exc}") from exc
        try:
            broadcast(topic, value, event=event)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        named = f" (event {event!r})" if event else ""
        self.stdout.write(f"Broadcast to {topic!r}{named}: {json.dumps(value)[:200]}")
