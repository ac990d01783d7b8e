"""The structlog logger of django-flosse and the names of its log events.

When the project has configured structlog, its configuration is used as is. When it has
not, our events go through the standard library logger ``django_flosse``, so Django's
``LOGGING`` setting decides where they go and at which level.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import structlog
from structlog.contextvars import merge_contextvars

if TYPE_CHECKING:
    from .registry import Connection

__all__ = [
    "BROADCAST_BACKEND_ERROR",
    "BROADCAST_ONE_PROCESS",
    "BROADCAST_PUBLISHED",
    "BROADCAST_RESET",
    "CONNECTIONS_LOST",
    "CONNECTION_CLOSED",
    "CONNECTION_OPENED",
    "CONNECTION_REJECTED",
    "OBSERVER_ERROR",
    "PERSISTENCE_DROPPED",
    "PERSISTENCE_ERROR",
    "PERSISTENCE_RECOVERED",
    "STREAM_ERROR",
    "LogObserver",
    "get_logger",
    "log_observer_error",
]

CONNECTION_OPENED = "sse.connection.opened"
CONNECTION_CLOSED = "sse.connection.closed"
CONNECTION_REJECTED = "sse.connection.rejected"
STREAM_ERROR = "sse.stream.error"
OBSERVER_ERROR = "sse.observer.error"
# The connection history (``observing._history``, ``terminate``).
CONNECTIONS_LOST = "sse.connection.lost"
PERSISTENCE_ERROR = "sse.persistence.error"
PERSISTENCE_RECOVERED = "sse.persistence.recovered"
PERSISTENCE_DROPPED = "sse.persistence.dropped"
# Broadcast (``django_flosse.broadcasting``).
BROADCAST_PUBLISHED = "sse.broadcast.published"
BROADCAST_RESET = "sse.broadcast.reset"
BROADCAST_BACKEND_ERROR = "sse.broadcast.backend_error"
BROADCAST_ONE_PROCESS = "sse.broadcast.memory_backend_shared"

_STDLIB_LOGGER = logging.getLogger("django_flosse")

# Used only when the project has not configured structlog: render the event dict into the
# stdlib record's message, and keep exc_info for the stdlib handler to format.
_KEY_VALUES = structlog.processors.KeyValueRenderer(key_order=["event"], drop_missing=True)


def get_logger() -> Any:
    """A bound logger; resolved per call so a later ``structlog.configure`` is honoured."""
    if structlog.is_configured():
        return structlog.get_logger("django_flosse")
    return _STDLIB_BRIDGE


class _StdlibBridge:
    """Our lines while the project has not configured structlog: structlog's own processors
    (the level check first, then ``merge_contextvars`` and ``KeyValueRenderer``) called
    directly, and one stdlib record.

    Not a ``structlog.stdlib.BoundLogger`` over those processors, which it replaces: every
    connection logs ``sse.connection.opened`` before its first event, and the bound logger's
    machinery around the same processors (a lazy proxy, a context copy, the processor loop,
    the dispatch by method name) was about a fifth of that line's cost (docs/performance.md,
    "The open path"). A disabled level still costs one level check and no rendering.
    """

    __slots__ = ()

    def _log(self, level: int, method: str, event: str, kw: dict[str, Any]) -> None:
        if not _STDLIB_LOGGER.isEnabledFor(level):
            return
        exc_info = kw.pop("exc_info", None)
        kw["event"] = event
        message = _KEY_VALUES(_STDLIB_LOGGER, method, merge_contextvars(None, method, kw))
        # stacklevel 3: the record's file and line are those of the code that called info()
        # (or warning(), ...), not this module's.
        _STDLIB_LOGGER.log(level, message, exc_info=exc_info, stacklevel=3)

    def debug(self, event: str, **kw: Any) -> None:
        self._log(logging.DEBUG, "debug", event, kw)

    def info(self, event: str, **kw: Any) -> None:
        self._log(logging.INFO, "info", event, kw)

    def warning(self, event: str, **kw: Any) -> None:
        self._log(logging.WARNING, "warning", event, kw)

    def error(self, event: str, **kw: Any) -> None:
        self._log(logging.ERROR, "error", event, kw)

    def exception(self, event: str, **kw: Any) -> None:
        kw.setdefault("exc_info", True)
        self._log(logging.ERROR, "error", event, kw)


_STDLIB_BRIDGE = _StdlibBridge()


class LogObserver:
    """Logs connection opened/closed/rejected (INFO; never a line per event)."""

    def connection_opened(self, connection: Connection) -> None:
        get_logger().info(
            CONNECTION_OPENED,
            connection_id=connection.id,
            stream=connection.stream,
            path=connection.path,
            user_id=connection.user_id,
            client_ip=connection.client_ip,
            last_event_id=connection.last_event_id or None,
        )

    def connection_closed(self, connection: Connection) -> None:
        broadcast = {}
        if connection.topics:  # it subscribed: what the broadcast gave it
            broadcast = {
                "broadcast_delivered": connection.broadcast_delivered,
                "broadcast_replayed": connection.broadcast_replayed,
                "broadcast_resets": connection.broadcast_resets,
            }
        get_logger().info(
            CONNECTION_CLOSED,
            connection_id=connection.id,
            stream=connection.stream,
            reason=connection.close_reason,
            duration=round(connection.duration, 3),
            events=connection.events_sent,
            bytes=connection.bytes_sent,
            error_id=connection.error_id,
            **broadcast,
        )

    def connection_rejected(self, stream: str, reason: str) -> None:
        get_logger().warning(CONNECTION_REJECTED, stream=stream, reason=reason)


def log_observer_error(observer: object, method: str) -> None:
    """The registry's hook for an observer that raised (called inside the ``except``)."""
    get_logger().exception(OBSERVER_ERROR, observer=repr(observer), method=method)
