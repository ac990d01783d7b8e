"""Traffic per stream and time bucket: what the dashboard's cards and chart show, kept as
connections open and close instead of counted from the history.

Why (read before "simplifying" it back into a query over ``StreamConnection``): the history
holds one row per connection, and one anonymous client can open hundreds a second. Counting
the rows of the last ten minutes on every dashboard poll made the admin's cost grow with the
churn an attacker chooses: 600,000 rows in the window took a core per viewer. These
aggregates cost the same whatever the traffic:

* This process: :data:`activity`, a registry observer, counts opens and closes (cancelled,
  errors) per stream and :data:`BUCKET` seconds, and the connections open at each bucket's
  last change. A few integers per stream per bucket, in memory, for :data:`KEEP` seconds.
* Other processes and hosts: the history writer (``_history``) upserts this process's
  changed buckets into ``StreamActivity`` at each flush (one row per process, stream and
  bucket, plus the running totals of events and bytes for the rates), and deletes rows older
  than :data:`KEEP`. The dashboard sums the rows of the other processes: processes x streams
  x ``WINDOW / BUCKET`` rows at most, however many connections they served.

Counts over the window are exact to a bucket: the window starts at a bucket boundary.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass

from .. import reasons
from .registry import Connection, registry

__all__ = [
    "BUCKET",
    "DASHBOARD_STREAM",
    "KEEP",
    "WINDOW",
    "Activity",
    "BucketRow",
    "activity",
    "bucket_of",
]

#: The dashboard feed's own stream name: left out of the aggregates (every frame it sends
#: would otherwise be traffic to report, for ever).
DASHBOARD_STREAM = "django_flosse.dashboard"
#: Seconds covered by the dashboard's chart and by its cards' opened / cancelled / errors.
WINDOW = 600
#: Seconds per bucket (one point of the dashboard's chart).
BUCKET = 10
#: Seconds of buckets kept, in memory and in the table: the window and a margin for late
#: flushes of other processes.
KEEP = WINDOW + 6 * BUCKET


def bucket_of(epoch: float) -> int:
    """The start (epoch seconds) of the bucket holding ``epoch``."""
    return int(epoch // BUCKET) * BUCKET


@dataclass
class _Counts:
    opened: int = 0
    cancelled: int = 0
    errors: int = 0
    #: Connections of the stream open at the bucket's last change.
    active: int = 0


@dataclass(frozen=True)
class BucketRow:
    """One bucket of one stream, as the history writer stores it for other processes."""

    bucket: int
    stream: str
    opened: int
    cancelled: int
    errors: int
    active: int
    events_total: int
    bytes_total: int


class Activity:
    """Registry observer: this process's opens, closes and open connections per bucket."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buckets: dict[int, dict[str, _Counts]] = {}  # oldest first
        self._active: Counter[str] = Counter()
        # Open connections per stream at the end of the buckets already forgotten: where
        # the chart's carry-forward starts (a long-lived stream has no recent change).
        self._base: Counter[str] = Counter()
        self._dirty: set[tuple[int, str]] = set()  # not yet written for other processes
        #: Moves on every open and close: the dashboard's state is stale when it moved.
        self.version = 0

    def reset(self) -> None:
        """Forget everything (tests reset the registry too)."""
        with self._lock:
            self._buckets.clear()
            self._active.clear()
            self._base.clear()
            self._dirty.clear()

    # Observer protocol: called on streaming threads and loops, so only counts.
    def connection_opened(self, connection: Connection) -> None:
        self._record(connection.stream, +1, None)

    def connection_closed(self, connection: Connection) -> None:
        self._record(connection.stream, -1, connection.close_reason or reasons.COMPLETED)

    def connection_rejected(self, stream: str, reason: str) -> None:
        pass

    def _record(self, stream: str, step: int, reason: str | None) -> None:
        if stream == DASHBOARD_STREAM:
            return
        bucket = bucket_of(time.time())
        with self._lock:
            counts = self._counts(bucket, stream)
            if step > 0:
                counts.opened += 1
            elif reason == reasons.CANCELLED:
                counts.cancelled += 1
            elif reason == reasons.ERROR:
                counts.errors += 1
            self._active[stream] = max(0, self._active[stream] + step)
            counts.active = self._active[stream]
            self._dirty.add((bucket, stream))
            self.version += 1

    def _counts(self, bucket: int, stream: str) -> _Counts:
        streams = self._buckets.get(bucket)
        if streams is None:
            self._forget_before(bucket - KEEP)
            streams = self._buckets[bucket] = {}
        counts = streams.get(stream)
        if counts is None:
            counts = streams[stream] = _Counts(active=self._active[stream])
        return counts

    def _forget_before(self, oldest: int) -> None:
        for bucket in [b for b in self._buckets if b < oldest]:
            for stream, counts in self._buckets.pop(bucket).items():
                self._base[stream] = counts.active
                self._dirty.discard((bucket, stream))

    # -- what the dashboard reads ------------------------------------------------------
    def counts(self, start: float) -> dict[str, tuple[int, int, int]]:
        """(opened, cancelled, errors) per stream in the buckets from ``start``'s on."""
        first = bucket_of(start)
        result: dict[str, tuple[int, int, int]] = {}
        with self._lock:
            for bucket, streams in self._buckets.items():
                if bucket < first:
                    continue
                for stream, c in streams.items():
                    o, k, e = result.get(stream, (0, 0, 0))
                    result[stream] = (o + c.opened, k + c.cancelled, e + c.errors)
        return result

    def active_series(self, buckets: list[int]) -> list[int]:
        """Open connections of this process (all streams) at the end of each bucket of
        ``buckets`` (ascending), carried forward over buckets without a change."""
        series = []
        with self._lock:
            current = Counter(self._base)
            known = sorted(self._buckets)
            i = 0
            for bucket in buckets:
                while i < len(known) and known[i] <= bucket:
                    for stream, c in self._buckets[known[i]].items():
                        current[stream] = c.active
                    i += 1
                series.append(sum(current.values()))
        return series

    # -- what the history writer stores ----------------------------------------------------
    def take_rows(self, now: float) -> list[BucketRow]:
        """The buckets changed since the last call, and the current bucket of every stream
        with open connections (its row carries the running totals the rates come from)."""
        current = bucket_of(now)
        totals = registry.totals()
        with self._lock:
            self._forget_before(current - KEEP)
            keys = set(self._dirty)
            keys.update((current, s) for s, n in self._active.items() if n > 0)
            self._dirty.clear()
            rows = []
            for bucket, stream in sorted(keys):
                c = self._buckets.get(bucket, {}).get(stream) or _Counts(
                    active=self._active[stream]
                )
                t = totals.get(stream)
                rows.append(
                    BucketRow(
                        bucket,
                        stream,
                        c.opened,
                        c.cancelled,
                        c.errors,
                        c.active,
                        t.events_sent if t else 0,
                        t.bytes_sent if t else 0,
                    )
                )
        return rows

    def give_back(self, rows: list[BucketRow]) -> None:
        """Rows a failed write did not store: written again by the next flush."""
        with self._lock:
            self._dirty.update((row.bucket, row.stream) for row in rows)


#: This process's aggregates (wired to the registry by ``observing.wiring``).
activity = Activity()
