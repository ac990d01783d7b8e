"""The connection history in tests: its settings, connections and rows made by hand."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

#: PERSISTENCE on, with the timings the history tests count on (the ``writer`` fixture).
HISTORY_SETTINGS = {"PERSISTENCE": True, "FLUSH_INTERVAL": 1.0, "LOST_AFTER": 30.0}


def open_connection(**fields: Any) -> Any:
    """A connection of this process (stream ``persist.unit``), registered and open."""
    from django_flosse.observing.registry import Connection, current_process, registry

    connection = Connection(
        id=uuid.uuid4().hex, stream="persist.unit", process=current_process(), **fields
    )
    assert registry.open(connection) is None
    return connection


def row(connection: Any) -> Any:
    """The history row of ``connection``."""
    from django_flosse.models import StreamConnection

    return StreamConnection.objects.get(connection_id=connection.id)


def stale_row(process: str, age: float, **fields: Any) -> Any:
    """An open row of another process, last seen ``age`` seconds ago."""
    from django.utils import timezone

    from django_flosse.models import StreamConnection

    seen = timezone.now() - timedelta(seconds=age)
    return StreamConnection.objects.create(
        connection_id=uuid.uuid4().hex,
        stream="persist.other",
        process=process,
        opened_at=seen - timedelta(seconds=10),
        last_seen_at=seen,
        **fields,
    )
