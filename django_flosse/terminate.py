"""Ending connections from outside their stream: the admin's terminate, and lost rows.

Both work on the connection history (``StreamConnection``), so they reach every process and
host of the deployment: a process polls its open rows for stop requests at each flush of its
history writer (``observing._history``), and every writer closes the rows of processes that
stopped refreshing them.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from django.db import router
from django.db.models import F
from django.utils import timezone

from . import reasons
from .conf import get_config
from .models import StreamConnection
from .observing.log import CONNECTIONS_LOST, PERSISTENCE_ERROR, get_logger
from .observing.registry import current_process, registry

__all__ = ["close_lost", "request_stop"]

#: Rows per UPDATE statement (well under SQLite's variable limit).
BATCH_SIZE = 500


def _objects() -> Any:
    return StreamConnection.objects.using(router.db_for_write(StreamConnection))


def close_lost() -> int:
    """Close as ``lost`` the open rows of other processes not refreshed for ``LOST_AFTER``.

    Run by every writer as it flushes; the admin calls it too, so the history is right even
    when no process of the deployment is streaming. Returns how many rows it closed.
    """
    cutoff = timezone.now() - timedelta(seconds=get_config().lost_after)
    stale = _objects().filter(closed_at__isnull=True, last_seen_at__lt=cutoff)
    stale = stale.exclude(process=current_process())
    count = 0
    try:
        # Stream by stream, so that each is counted in the metrics by the process that
        # closed its rows (the dead process cannot; two processes closing at once each
        # count only the rows their own UPDATE changed).
        for stream in stale.values_list("stream", flat=True).distinct().order_by():
            closed: int = stale.filter(stream=stream).update(
                closed_at=F("last_seen_at"), close_reason=reasons.LOST
            )
            if closed:
                registry.lost(stream, closed)
                count += closed
    except Exception:
        get_logger().exception(PERSISTENCE_ERROR, during="close_lost")
        raise
    if count:
        get_logger().warning(CONNECTIONS_LOST, connections=count)
    return count


def request_stop(connection_ids: Iterable[str], reason: str = reasons.TERMINATED) -> int:
    """Ask connections to end with ``reason``, wherever they run; returns how many were open.

    Live connections of this process stop at once. For the others, the request is written
    to their rows (``stop_requested``): the owning process, on any host, polls it at its
    next flush and ends them within ``FLUSH_INTERVAL``. Blocking (database): async code calls
    it through ``sync_to_async``. A database error propagates after the local stops.
    """
    if reason not in reasons.CLOSE_REASONS:
        raise ValueError(
            f"unknown close reason {reason!r}; expected one of {reasons.CLOSE_REASONS}"
        )
    ids = list(dict.fromkeys(connection_ids))
    asked = set()
    for connection_id in ids:
        connection = registry.get(connection_id)
        if connection is not None and connection.request_stop(reason):
            asked.add(connection_id)
    for start in range(0, len(ids), BATCH_SIZE):
        rows = _objects().filter(
            connection_id__in=ids[start : start + BATCH_SIZE], closed_at__isnull=True
        )
        asked.update(rows.values_list("connection_id", flat=True))
        rows.update(stop_requested=reason)
    return len(asked)
