"""``manage.py flosse_prune``: remove closed history rows older than the retention period.

Open rows are never removed, however old: they are live connections (or will be closed as
``lost`` by a live process), and the dashboard and terminate depend on them.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from django_flosse.conf import get_config
from django_flosse.models import StreamConnection


class Command(BaseCommand):
    help = (
        "Delete closed SSE connection rows older than FLOSSE['RETENTION_DAYS'] days "
        "(or --days N). Open rows are kept."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--days",
            type=int,
            default=None,
            help="Keep this many days instead of FLOSSE['RETENTION_DAYS'].",
        )
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Only count the rows that would be deleted.",
        )

    def handle(self, *args: Any, days: int | None, dry_run: bool, **options: Any) -> None:
        if days is None:
            days = get_config().retention_days
            if days is None:
                self.stdout.write(
                    "FLOSSE['RETENTION_DAYS'] is None: rows are kept for ever (use --days N)."
                )
                return
        if days < 0:
            raise CommandError(f"--days must be 0 or more; got {days}")
        cutoff = timezone.now() - timedelta(days=days)
        # closed_at is NULL for open rows, so this never matches one.
        old = StreamConnection.objects.filter(closed_at__lt=cutoff)
        kept_open = StreamConnection.objects.filter(closed_at__isnull=True).count()
        if dry_run:
            self.stdout.write(
                f"Would delete {old.count()} closed connection(s) older than {days} day(s); "
                f"{kept_open} open connection(s) kept."
            )
            return
        deleted, _ = old.delete()
        self.stdout.write(
            f"Deleted {deleted} closed connection(s) older than {days} day(s); "
            f"{kept_open} open connection(s) kept."
        )
