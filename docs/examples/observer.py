"""A project's own registry observer: count long connections per stream."""

from __future__ import annotations

from collections import Counter

from django_flosse.observing.registry import Connection

LONG_CONNECTION_SECONDS = 60.0


class LongConnections:
    """Called on open, close and rejection; never per event. Keep it quick: it runs on
    the streaming thread or event loop (queue real work for a thread of your own)."""

    def __init__(self) -> None:
        self.per_stream: Counter[str] = Counter()

    def connection_opened(self, connection: Connection) -> None:
        pass

    def connection_closed(self, connection: Connection) -> None:
        if connection.duration >= LONG_CONNECTION_SECONDS:
            self.per_stream[connection.stream] += 1

    def connection_rejected(self, stream: str, reason: str) -> None:
        pass
