"""The structlog logger of django-flosse and the names of its log events.

When the project has configured structlog, its configuration is used as is. When it has
not, our events go through the standard library logger ``django_flosse``, so Django's
``LOGGING`` setting decides where they go and at which level.
"""

from __future__ import annotations

import logging
from typing import Any

import structlog

__all__ = ["CONNECTION_CLOSED", "CONNECTION_OPENED", "CONNECTION_REJECTED", "STREAM_ERROR", "get_logger"]

CONNECTION_OPENED = "sse.connection.opened"
CONNECTION_CLOSED = "sse.connection.closed"
CONNECTION_REJECTED = "sse.connection.rejected"
STREAM_ERROR = "sse.stream.error"

_STDLIB_LOGGER = logging.getLogger("django_flosse")

# Used only when the project has not configured structlog: render the event dict into the
# stdlib record's message, and keep exc_info for the stdlib handler to format.
_KEY_VALUES = structlog.processors.KeyValueRenderer(key_order=["event"], drop_missing=True)


def _render_for_stdlib(logger: Any, method_name: str, event_dict: Any) -> Any:
    exc_info = event_dict.pop("exc_info", None)
    return (_KEY_VALUES(logger, method_name, event_dict),), {"exc_info": exc_info} if exc_info else {}


def get_logger() -> Any:
    """A bound logger; resolved per call so a later ``structlog.configure`` is honoured."""
    if structlog.is_configured():
        return structlog.get_logger("django_flosse")
    return structlog.wrap_logger(
        _STDLIB_LOGGER,
        processors=[structlog.contextvars.merge_contextvars, _render_for_stdlib],
        wrapper_class=structlog.stdlib.BoundLogger,
    )
