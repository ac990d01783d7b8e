"""Database hygiene: a stream does not hold a database connection while it waits.

Django keeps a thread's connection open until the request finishes (and longer with
``CONN_MAX_AGE``). A request that streams for hours would hold it for hours: a thousand
streams, a thousand connections. So the stream lets go of its connections when streaming
starts (the view's permission checks and user lookup are done with them) and after a step
that took long (a poll loop sleeping between queries): a ``def`` view's generator thread
closes its own, an ``async def`` view's stream hops once to the request's thread, where
Django ran its async ORM calls. The next query reconnects. A connection inside
``transaction.atomic()`` is never closed, so wrap work that must keep its connection (a
cursor read across slow steps) in an atomic block.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["IDLE_STEP_SECONDS", "release_connections"]

#: A step of a sync generator at least this long counts as idle waiting (a poll loop).
IDLE_STEP_SECONDS = 0.05


def release_connections(connections: Iterable[Any] | None = None) -> None:
    """Close the given (default: this thread's) open connections outside transactions."""
    if connections is None:
        from django.db import connections as handler

        connections = handler.all(initialized_only=True)
    for connection in connections:
        if connection.connection is not None and not connection.in_atomic_block:
            connection.close()
