"""Prometheus metrics: every prometheus_client object, defined once, on the default registry.

Projects that already expose ``/metrics`` (django-prometheus, prometheus_client's own view)
get these for free; ``flosse:metrics`` serves them too (multiprocess-aware). The label
``stream`` is the stream's name, never a user, IP or connection id.

Events and bytes are not counted per event: :class:`MetricsObserver` folds each live
connection's counters into the Prometheus counters at most once a second (and at close),
from one background thread, so the hot path never touches a metric lock. Broadcast
deliveries are folded the same way (their counters and lag samples live on the
:class:`~.registry.Connection`, filled by the subscription), and the recent lag samples are
kept for the admin dashboard (:data:`recent_lags`).
"""

from __future__ import annotations

import threading
import time
from collections import deque

from prometheus_client import Counter, Gauge, Histogram

from .. import reasons
from .registry import Connection

__all__ = [
    "BROADCAST_DELIVERED",
    "BROADCAST_LAG",
    "BROADCAST_PUBLISHED_TOTAL",
    "BROADCAST_REPLAYED",
    "BROADCAST_RESETS",
    "CONNECTIONS_ACTIVE",
    "CONNECTIONS_CLOSED",
    "CONNECTIONS_OPENED",
    "CONNECTIONS_REJECTED",
    "CONNECTION_DURATION",
    "EVENTS_SENT",
    "FOLD_INTERVAL",
    "SENT_BYTES",
    "MetricsObserver",
    "RecentLags",
    "recent_lags",
]

#: Seconds between two folds of live connections' event and byte counters.
FOLD_INTERVAL = 1.0

CONNECTIONS_ACTIVE = Gauge(
    "flosse_connections_active",
    "SSE connections streaming right now.",
    ["stream"],
    multiprocess_mode="livesum",
)
CONNECTIONS_OPENED = Counter(
    "flosse_connections_opened",
    "SSE connections accepted.",
    ["stream"],
)
CONNECTIONS_CLOSED = Counter(
    "flosse_connections_closed",
    "SSE connections ended, by close reason (completed, cancelled, error, terminated, "
    "shutdown, timeout, lost).",
    ["stream", "reason"],
)
CONNECTIONS_REJECTED = Counter(
    "flosse_connections_rejected",
    "SSE requests refused before streaming (forbidden, stream_limit, user_limit).",
    ["stream", "reason"],
)
EVENTS_SENT = Counter(
    "flosse_events_sent",
    "SSE events sent (keep-alive comments and retry frames are not events).",
    ["stream"],
)
SENT_BYTES = Counter(
    "flosse_sent_bytes",
    "Bytes handed to the server: events, comments and retry frames (compressed size when "
    "the stream is gzipped).",
    ["stream"],
)
CONNECTION_DURATION = Histogram(
    "flosse_connection_duration_seconds",
    "How long SSE connections lasted.",
    ["stream"],
    buckets=(0.1, 0.5, 1, 5, 15, 30, 60, 300, 900, 1800, 3600, 7200, 14400, 43200, 86400),
)

# Broadcast. No topic label: topics can be per user.
BROADCAST_PUBLISHED_TOTAL = Counter(
    "flosse_broadcast_published",
    "Broadcast events published by this process (counted by the publisher).",
)
BROADCAST_DELIVERED = Counter(
    "flosse_broadcast_delivered",
    "Broadcast events handed to a subscriber's stream, live or replayed.",
    ["stream"],
)
BROADCAST_REPLAYED = Counter(
    "flosse_broadcast_replayed",
    "Broadcast events a subscriber read from the history (a resume or a catch-up).",
    ["stream"],
)
BROADCAST_RESETS = Counter(
    "flosse_broadcast_resets",
    "flosse-reset events sent: a subscriber's position could not be resumed.",
    ["stream"],
)
BROADCAST_LAG = Histogram(
    "flosse_broadcast_lag_seconds",
    "Seconds from a broadcast's publish to its live delivery to a subscriber's stream.",
    ["stream"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


class RecentLags:
    """The latest broadcast lag samples of this process, for the dashboard's percentiles.

    Filled by the fold (once a second, never per event) with at most :attr:`keep` samples;
    the dashboard reads the ones younger than a window. Only this process's live deliveries:
    Prometheus (``flosse_broadcast_lag_seconds``) has every process's.
    """

    def __init__(self, keep: int = 4096) -> None:
        self.keep = keep
        self._lock = threading.Lock()
        self._samples: deque[tuple[float, float]] = deque(maxlen=keep)

    def add(self, at: float, lags: list[float]) -> None:
        with self._lock:
            self._samples.extend((at, lag) for lag in lags[-self.keep :])

    def since(self, start: float) -> list[float]:
        """The lag samples folded at or after ``start`` (epoch seconds)."""
        with self._lock:
            return [lag for at, lag in self._samples if at >= start]

    def clear(self) -> None:
        with self._lock:
            self._samples.clear()


#: This process's recent lag samples (filled by the metrics observer's fold).
recent_lags = RecentLags()


class MetricsObserver:
    """Keeps the metrics above up to date from the registry's notifications.

    It remembers how much of each live connection's counters is already in Prometheus, so
    one instance must see a connection from open to close: ``AppConfig.ready()`` wires one
    per process and keeps it across settings changes (``observing.wiring``).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Per live connection, what is already in Prometheus: see _FOLDED_FIELDS. Shared
        # _NOTHING_FOLDED until its counters first move (an idle connection keeps no list).
        self._folded: dict[Connection, tuple[int, ...]] = {}
        self._thread: threading.Thread | None = None
        # Per stream, the series every open and close moves, looked up once: ``labels()``
        # validates its arguments and takes the metric's lock on every call, and an open
        # calls it on the request's path. prometheus_client returns the same child for the
        # same labels as long as nobody removes it, and this package never does.
        self._series: dict[str, tuple[Gauge, Counter, Histogram]] = {}

    def _series_of(self, stream: str) -> tuple[Gauge, Counter, Histogram]:
        series = self._series.get(stream)
        if series is None:
            series = self._series[stream] = (
                CONNECTIONS_ACTIVE.labels(stream),
                CONNECTIONS_OPENED.labels(stream),
                CONNECTION_DURATION.labels(stream),
            )
        return series

    def connection_opened(self, connection: Connection) -> None:
        active, opened, _ = self._series_of(connection.stream)
        active.inc()
        opened.inc()
        with self._lock:
            self._folded[connection] = _NOTHING_FOLDED
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._fold_forever, name="flosse-metrics", daemon=True
                )
                self._thread.start()

    def connection_closed(self, connection: Connection) -> None:
        with self._lock:
            _fold(connection, self._folded.pop(connection, _NOTHING_FOLDED))
        active, _, duration = self._series_of(connection.stream)
        active.dec()
        CONNECTIONS_CLOSED.labels(connection.stream, connection.close_reason or "").inc()
        duration.observe(connection.duration)

    def connection_rejected(self, stream: str, reason: str) -> None:
        CONNECTIONS_REJECTED.labels(stream, reason).inc()

    def stream_declared(self, stream: str) -> None:
        """Create every series of ``stream`` at zero (``labels()`` makes a child at 0), so the
        first scrape has them: Prometheus takes a series' first sample as its start, and
        ``increase()`` would miss the first close, error or rejection after a restart."""
        CONNECTIONS_ACTIVE.labels(stream)
        CONNECTIONS_OPENED.labels(stream)
        for reason in reasons.CLOSE_REASONS:
            CONNECTIONS_CLOSED.labels(stream, reason)
        for reason in reasons.REJECT_REASONS:
            CONNECTIONS_REJECTED.labels(stream, reason)
        for metric in (EVENTS_SENT, SENT_BYTES, CONNECTION_DURATION):
            metric.labels(stream)
        for metric in (BROADCAST_DELIVERED, BROADCAST_REPLAYED, BROADCAST_RESETS, BROADCAST_LAG):
            metric.labels(stream)

    def connections_lost(self, stream: str, count: int) -> None:
        CONNECTIONS_CLOSED.labels(stream, reasons.LOST).inc(count)

    def forget(self) -> None:
        """Stop folding the connections seen so far (tests reset the registry under them)."""
        with self._lock:
            self._folded.clear()

    def fold(self) -> None:
        """Fold every live connection's new events, bytes and broadcast deliveries into the
        metrics now."""
        # One lock for the whole fold (once a second, never per event), so a connection
        # closing meanwhile cannot fold the same events twice.
        with self._lock:
            for connection, folded in self._folded.items():
                self._folded[connection] = _fold(connection, folded)

    def _fold_forever(self) -> None:
        """The folding thread: runs while connections are live, then stops until the next
        (starting a thread per connection would cost each one)."""
        idle_since = None
        while True:
            with self._lock:
                if self._folded:
                    idle_since = None
                elif idle_since is None:
                    idle_since = time.monotonic()
                elif time.monotonic() - idle_since >= FOLDER_IDLE_EXIT:
                    self._thread = None
                    return
            self.fold()
            time.sleep(FOLD_INTERVAL)


#: The counters of a connection folded into a counter metric, in the order of ``_folded``.
_FOLDED_FIELDS = (
    ("events_sent", EVENTS_SENT),
    ("bytes_sent", SENT_BYTES),
    ("broadcast_delivered", BROADCAST_DELIVERED),
    ("broadcast_replayed", BROADCAST_REPLAYED),
    ("broadcast_resets", BROADCAST_RESETS),
)


_NOTHING_FOLDED = (0,) * len(_FOLDED_FIELDS)


def _fold(connection: Connection, folded: tuple[int, ...]) -> tuple[int, ...]:
    """Add what ``connection`` did since its last fold (called under the observer's lock);
    returns what is folded now."""
    moved = None
    for i, (name, metric) in enumerate(_FOLDED_FIELDS):
        # Read each counter once: the streaming thread may bump it meanwhile.
        now = getattr(connection, name)
        if now > folded[i]:
            metric.labels(connection.stream).inc(now - folded[i])
            if moved is None:
                moved = list(folded)
            moved[i] = now
    lags = connection.broadcast_lags
    if lags:
        # The subscription appends to this list from its own thread or loop, without a
        # lock. Swapping in a new list could lose a sample: it may have fetched the old
        # list just before and append to it after we read it. Instead take the first
        # ``count`` samples and delete exactly those: ``del lags[:count]`` is one atomic
        # list operation, so samples appended meanwhile stay for the next fold, and each
        # sample is observed once (one fold at a time: the caller holds the lock).
        count = len(lags)
        samples = lags[:count]
        del lags[:count]
        histogram = BROADCAST_LAG.labels(connection.stream)
        for lag in samples:
            histogram.observe(max(0.0, lag))
        recent_lags.add(time.time(), samples)
    return folded if moved is None else tuple(moved)


#: Seconds without a live connection after which the folding thread stops (it is started
#: again by the next connection).
FOLDER_IDLE_EXIT = 60.0
