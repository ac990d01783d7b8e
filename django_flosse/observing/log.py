"""The structlog logger of django-flosse and the names of its log events.

When the project has configured structlog, its configuration is used as is. When it has
not, our events go through the standard library logger ``django_flosse``, so Django's
``LOGGING`` setting decides where they go and at which level.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import structlog

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


def _render_for_stdlib(logger: Any, method_name: str, event_dict: Any) -> Any:
    exc_info = event_dict.pop("exc_info", None)
    return (_KEY_VALUES(logger, method_name, event_dict),), {
        "exc_info": exc_info
    } if exc_info else {}


def get_logger() -> Any:
    """A bound logger; resolved per call so a later ``structlog.configure`` is honoured."""
    if structlog.is_configured():
        return structlog.get_logger("django_flosse")
    return _STDLIB_BRIDGE


# Used while the project has not configured structlog. filter_by_level comes first: a
# disabled level (INFO in production, often) costs a level check, not a rendering.
_STDLIB_BRIDGE = structlog.wrap_logger(
    _STDLIB_LOGGER,
    processors=[
        structlog.stdlib.filter_by_level,
        structlog.contextvars.merge_contextvars,
        _render_for_stdlib,
    ],
    wrapper_class=structlog.stdlib.BoundLogger,
    # Built once: a lazy proxy would bind a new logger for every line.
    cache_logger_on_first_use=True,
)


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
