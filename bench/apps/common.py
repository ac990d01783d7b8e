"""What every peer shares: the query string of the benchmark stream and an open-stream count.

Every peer serves the same stream at ``/stream`` (``/sync-stream`` for a sync view): ``n``
events ``event: tick`` with JSON data ``{"i": <index>}``, then, with ``idle=1``, it waits
(for at most ``IDLE_SECONDS``) instead of ending; with ``for_s=S`` it stops after ``S`` seconds
even if ``n`` is not reached (the flood: a client that leaves mid-flood is noticed late by
some peers, e.g. Django's response loop never yields to the loop once uvicorn stops writing,
so the flood ends by itself instead). ``/active`` answers how many streams the
process has open, counted by the peer's own ``try/finally`` around its generator (ours
reads its registry), so run.py can time how fast dropped connections are noticed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from urllib.parse import parse_qs

#: An idle stream ends by itself after this long, whatever happens to the client.
IDLE_SECONDS = 600.0

#: Upper bound for ``n``: the flood stream asks for "endless" and the client hangs up.
MAX_EVENTS = 100_000_000


def parse_query(query: str | bytes) -> tuple[Iterable[int], bool]:
    """``(indices, idle)`` from a query string such as ``n=100&idle=1`` or ``n=...&for_s=5``."""
    if isinstance(query, bytes):
        query = query.decode("latin-1")
    params = parse_qs(query)
    n = min(int(params.get("n", ["5"])[0]), MAX_EVENTS)
    idle = params.get("idle", ["0"])[0] == "1"
    seconds = float(params.get("for_s", ["0"])[0])
    return (_timed_range(n, seconds) if seconds > 0 else range(n)), idle


def _timed_range(n: int, seconds: float) -> Iterator[int]:
    deadline = time.monotonic() + seconds
    for i in range(n):
        yield i
        if not i & 255 and time.monotonic() > deadline:
            return


class OpenStreams:
    """A thread-safe count of the streams this process is serving."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.value = 0

    def add(self, delta: int) -> None:
        with self._lock:
            self.value += delta


open_streams = OpenStreams()
