"""The PostgreSQL doorbell of the ``database`` backend: one ``LISTEN`` session per process.

Publishers run ``SELECT pg_notify('flosse_broadcast', topic)`` in the transaction that
inserts the event, so PostgreSQL delivers the notification when (and only if) it commits.
The payload is only the topic: the event itself stays in the table, where the reader
fetches it (NOTIFY's 8,000-byte payload limit never applies).

The session is a psycopg connection of its own, not one from Django's pool: it must stay
open and idle for the life of the process, in autocommit, which a pooled connection (or
PgBouncer in transaction mode: give ``BROADCAST_LISTEN_URL`` a direct address) cannot
promise. When it breaks, the listener logs ``sse.broadcast.backend_error`` once per outage,
reconnects with a growing delay, and on success rings for every topic (a notification may
have been missed meanwhile); the reader's poll heals the gap in any case.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from ._outage import Outage

__all__ = ["CHANNEL", "Listener", "listen_params"]

#: The notification channel every publisher rings and every listener listens on.
CHANNEL = "flosse_broadcast"

#: Seconds one wait for notifications lasts: how soon the listener sees it must stop.
WAIT_SECONDS = 0.5

# Keys of Django's connection parameters that are Django's own, not libpq's.
_DJANGO_ONLY = (
    "assume_role", "context", "cursor_factory", "isolation_level", "pool",
    "prepare_threshold", "server_side_binding",
)  # fmt: skip


def listen_params(connection: Any, url: str | None) -> tuple[str, dict[str, Any]]:
    """``psycopg.connect`` arguments: ``url`` when given, else those of ``connection``."""
    if url:
        return url, {}
    params = dict(connection.get_connection_params())
    for key in _DJANGO_ONLY:
        params.pop(key, None)
    return "", params


class Listener:
    """A thread holding the ``LISTEN`` session; ``ring(topic)`` for each notification,
    ``ring(None)`` after a (re)connection: every topic may have moved."""

    def __init__(
        self, conninfo: str, params: dict[str, Any], ring: Callable[[str | None], None]
    ) -> None:
        self._conninfo = conninfo
        self._params = params
        self._ring = ring
        self._stop = threading.Event()
        self.listening = threading.Event()  # set while the session listens (tests wait on it)
        self._thread = threading.Thread(target=self._run, name="flosse-broadcast-listen")
        self._thread.daemon = True
        self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _run(self) -> None:
        import psycopg

        outage = Outage("listener")
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True, **self._params) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.listening.set()
                    outage.ok()
                    self._ring(None)
                    while not self._stop.is_set():
                        for notify in conn.notifies(timeout=WAIT_SECONDS):
                            self._ring(notify.payload)
            except Exception as exc:  # the reader polls meanwhile
                self.listening.clear()
                self._stop.wait(outage.failed(exc))
        self.listening.clear()
