"""Retention of the connection history: closed rows past ``RETENTION_DAYS`` or beyond the
newest ``RETENTION_ROWS`` go, in small indexed batches.

Why here and in small batches: every connection, anonymous ones included, writes a row, so a
client that opens hundreds of connections a second grows the table by millions a day. A
``manage.py flosse_prune`` in cron is a bound only if someone sets it up; the history writer
of every process (``_history``) applies retention itself, when it starts and then every
:data:`INTERVAL` seconds, off the request path. Each batch is one indexed ``SELECT`` of at
most :data:`BATCH` primary keys (``closed_at`` or primary-key index) and one ``DELETE`` of
them, so the table is never locked for long; a pass stops after :data:`BUDGET` seconds and
the next one goes on where it stopped.

The row cap counts by primary key (``BigAutoField``: ids only grow): rows whose id is more
than ``RETENTION_ROWS`` below the newest id go. A gap in the ids (rows deleted by the age
bound, a rolled-back insert) makes it keep fewer rows, never more, and costs one index
lookup instead of a ``COUNT(*)`` of the table. Open rows are never deleted, however old.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.db.models import Max, Q
from django.utils import timezone

from ..conf import Config
from ._activity import KEEP

__all__ = ["BATCH", "BUDGET", "INTERVAL", "Pruned", "prune_activity", "prune_history"]

#: Seconds between two retention passes of a history writer.
INTERVAL = 5.0
#: Rows deleted per statement.
BATCH = 1000
#: Seconds one pass may spend deleting before it leaves the rest to the next pass.
BUDGET = 0.1


@dataclass(frozen=True)
class Pruned:
    """What a pass did: rows deleted, and whether it stopped with more to do."""

    deleted: int
    more: bool


def _cutoffs(config: Config, objects: Any) -> Q | None:
    """Which closed rows are past retention (``None``: keep them all)."""
    expired = Q()
    if config.retention_days is not None:
        expired |= Q(closed_at__lt=timezone.now() - timedelta(days=config.retention_days))
    if config.retention_rows is not None:
        newest = objects.aggregate(newest=Max("pk"))["newest"]
        if newest is not None and newest > config.retention_rows:
            expired |= Q(pk__lte=newest - config.retention_rows)
    return expired or None


def prune_history(
    objects: Any, config: Config, *, budget: float = BUDGET, batch: int = BATCH
) -> Pruned:
    """Delete closed rows of ``objects`` (a manager or queryset) past the configured bounds,
    ``batch`` at a time, for at most ``budget`` seconds."""
    expired = _cutoffs(config, objects)
    deleted = 0
    more = False
    if expired is not None:
        old = objects.filter(expired, closed_at__isnull=False)
        deadline = time.monotonic() + budget
        while True:
            pks = list(old.order_by("pk").values_list("pk", flat=True)[:batch])
            if pks:
                deleted += objects.filter(pk__in=pks).delete()[0]
            if len(pks) < batch:
                break
            if time.monotonic() >= deadline:
                more = True
                break
    return Pruned(deleted, more)


def prune_activity(objects: Any, now: float) -> int:
    """Delete ``StreamActivity`` rows older than the dashboard needs (a small table)."""
    deleted: int = objects.filter(bucket__lt=int(now) - KEEP).delete()[0]
    return deleted
