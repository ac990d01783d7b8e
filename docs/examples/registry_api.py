"""Read this process's registry: live connections and per-stream totals."""

from __future__ import annotations

from typing import Any

from django_flosse.observing.registry import registry


def stream_summary() -> dict[str, dict[str, Any]]:
    summary = {}
    for name, totals in registry.totals().items():
        summary[name] = {
            "active": totals.active,
            "opened": totals.opened,
            "cancelled": totals.closed["cancelled"],
            "errors": totals.closed["error"],
            "events": totals.events_sent,
            "bytes": totals.bytes_sent,
        }
    return summary


def oldest_connections(limit: int = 5) -> list[tuple[str, str, float]]:
    live = sorted(registry.live(), key=lambda connection: connection.opened_at)
    return [(c.stream, c.username or "anonymous", c.duration) for c in live[:limit]]
