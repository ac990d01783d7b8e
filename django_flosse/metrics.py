"""Prometheus metrics: every prometheus_client object, defined once, on the default registry.

Projects that already expose ``/metrics`` (django-prometheus, prometheus_client's own view)
get these for free; ``flosse:metrics`` serves them too (multiprocess-aware). The label
``stream`` is the stream's name, never a user, IP or connection id.

Events and bytes are not counted per event: :class:`MetricsObserver` folds each live
connection's counters into the Prometheus counters at most once a second (and at close),
from one background thread, so the hot path never touches a metric lock.
"""

from __future__ import annotations

import threading
import time

from prometheus_client import Counter, Gauge, Histogram

from .registry import Connection

__all__ = [
    "CONNECTIONS_ACTIVE",
    "CONNECTIONS_CLOSED",
    "CONNECTIONS_OPENED",
    "CONNECTIONS_REJECTED",
    "CONNECTION_DURATION",
    "EVENTS_SENT",
    "FOLD_INTERVAL",
    "SENT_BYTES",
    "MetricsObserver",
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


class _Folding:
    """What of each live connection's counters is already in Prometheus: one per process,
    shared by every MetricsObserver (settings changes build new observers mid-stream)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.folded: dict[Connection, list[int]] = {}
        self.thread: threading.Thread | None = None


_folding = _Folding()


class MetricsObserver:
    """Keeps the metrics above up to date from the registry's notifications."""

    def connection_opened(self, connection: Connection) -> None:
        CONNECTIONS_ACTIVE.labels(connection.stream).inc()
        CONNECTIONS_OPENED.labels(connection.stream).inc()
        with _folding.lock:
            _folding.folded[connection] = [0, 0]
            if _folding.thread is None or not _folding.thread.is_alive():
                _folding.thread = threading.Thread(
                    target=_fold_forever, name="flosse-metrics", daemon=True
                )
                _folding.thread.start()

    def connection_closed(self, connection: Connection) -> None:
        with _folding.lock:
            _fold(connection, _folding.folded.pop(connection, [0, 0]))
        CONNECTIONS_ACTIVE.labels(connection.stream).dec()
        CONNECTIONS_CLOSED.labels(connection.stream, connection.close_reason or "").inc()
        CONNECTION_DURATION.labels(connection.stream).observe(connection.duration)

    def connection_rejected(self, stream: str, reason: str) -> None:
        CONNECTIONS_REJECTED.labels(stream, reason).inc()

    def fold(self) -> None:
        """Fold every live connection's new events and bytes into the counters now."""
        fold_all()


def fold_all() -> None:
    # One lock for the whole fold (once a second, never per event), so a connection
    # closing meanwhile cannot fold the same events twice.
    with _folding.lock:
        for connection, folded in _folding.folded.items():
            _fold(connection, folded)


def _fold(connection: Connection, folded: list[int]) -> None:
    # Read each counter once: the streaming thread may bump it meanwhile.
    events, sent = connection.events_sent, connection.bytes_sent
    if events > folded[0]:
        EVENTS_SENT.labels(connection.stream).inc(events - folded[0])
        folded[0] = events
    if sent > folded[1]:
        SENT_BYTES.labels(connection.stream).inc(sent - folded[1])
        folded[1] = sent


#: Seconds without a live connection after which the folding thread stops (it is started
#: again by the next connection; starting a thread per connection would cost each one).
FOLDER_IDLE_EXIT = 60.0


def _fold_forever() -> None:
    """The folding thread: runs while connections are live, then stops until the next."""
    idle_since = None
    while True:
        with _folding.lock:
            if _folding.folded:
                idle_since = None
            elif idle_since is None:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since >= FOLDER_IDLE_EXIT:
                _folding.thread = None
                return
        fold_all()
        time.sleep(FOLD_INTERVAL)
