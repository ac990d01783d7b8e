"""The admin dashboard's broadcast topics panel: subscribers per topic across processes,
events published, and lag.

It rides in the dashboard's snapshot and then in an update at most every
:data:`TOPICS_INTERVAL` (only when it changed), as a ``topics`` key; it is computed once per
process for every viewer (:class:`_TopicsPanel`): it reads the topics of open rows (grouped
in SQL, bounded by :data:`MAX_TOPIC_GROUPS`) and, on the ``database`` backend, the broadcast
history of the last :data:`TOPICS_WINDOW` only (through its ``published_at`` index).
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from typing import Any

from django.db.models import Count, Max, OuterRef, Subquery

from ..conf import get_config
from .metrics import recent_lags
from .registry import current_process, registry

__all__ = [
    "MAX_TOPIC_GROUPS",
    "TOPICS_INTERVAL",
    "TOPICS_TOP",
    "TOPICS_WINDOW",
    "topics_panel",
]

#: Topics listed one by one in the topics panel (the most subscribed first).
TOPICS_TOP = 20
#: Seconds covered by the topics panel's "published" counts and lag percentiles.
TOPICS_WINDOW = 300
#: Seconds between two computations of the topics panel (shared by a process's viewers).
TOPICS_INTERVAL = 5.0
#: Groups of open rows with the same topics and process read at most per computation
#: (per-user topics make one group per connection); beyond it the counts are partial.
MAX_TOPIC_GROUPS = 10_000


class _TopicsPanel:
    """The broadcast topics panel, computed at most every :data:`TOPICS_INTERVAL` for all
    the viewers of this process (the lock also keeps two viewers from computing it twice)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._value: dict[str, Any] | None = None
        self._at = 0.0

    def get(self, now: float) -> dict[str, Any]:
        with self._lock:
            if self._value is None or not 0 <= now - self._at < TOPICS_INTERVAL:
                self._value, self._at = _topics(now), now
            return self._value

    def clear(self) -> None:
        with self._lock:
            self._value = None


topics_panel = _TopicsPanel()


def _subscribers(me: str) -> tuple[Counter[str], set[str], bool]:
    """Open subscribed connections per topic, in every process, and the processes that
    have some; True when the groups read were capped (counts are then a lower bound)."""
    from ..models import StreamConnection

    groups = list(
        StreamConnection.objects.filter(closed_at__isnull=True)
        .exclude(process=me)
        .exclude(topics="")
        .values("topics", "process")
        .annotate(n=Count("pk"))
        .order_by("-n")[: MAX_TOPIC_GROUPS + 1]
    )
    subscribers: Counter[str] = Counter()
    processes: set[str] = set()
    for group in groups[:MAX_TOPIC_GROUPS]:
        processes.add(group["process"])
        for topic in group["topics"].split():
            subscribers[topic] += group["n"]
    for connection in registry.live():  # this process: its rows may not be written yet
        if connection.topics:
            processes.add(me)
            for topic in connection.topics:
                subscribers[topic] += 1
    return subscribers, processes, len(groups) > MAX_TOPIC_GROUPS


def _database_activity(topics: list[str], since: float) -> dict[str, tuple[int, float | None]]:
    """From the ``database`` backend's history: the busiest topics of the window, and the
    count and last publish of ``topics`` that are not among them. Every query is bounded
    by the window (``published_at`` index) or by one topic's history (its ``(topic,
    position)`` constraint)."""
    from ..models import BroadcastMessage, BroadcastTopic

    alias = get_config().broadcast_database
    messages = BroadcastMessage.objects.using(alias)
    busiest = (
        messages.filter(published_at__gte=since)
        .values("topic")
        .annotate(n=Count("pk"), last=Max("published_at"))
        .order_by("-n", "topic")[:TOPICS_TOP]
    )
    result: dict[str, tuple[int, float | None]] = {r["topic"]: (r["n"], r["last"]) for r in busiest}
    missing = [topic for topic in topics if topic not in result]
    if missing:
        in_window = (
            BroadcastMessage.objects.filter(topic=OuterRef("topic"), published_at__gte=since)
            .order_by()
            .values("topic")
            .annotate(c=Count("pk"))
            .values("c")
        )
        latest = BroadcastMessage.objects.filter(topic=OuterRef("topic")).order_by("-position")
        rows = (
            BroadcastTopic.objects.using(alias)
            .filter(topic__in=missing)
            .annotate(n=Subquery(in_window), last=Subquery(latest.values("published_at")[:1]))
            .values_list("topic", "n", "last")
        )
        for topic, n, last in rows:
            result[topic] = (n or 0, last)
    return result


def _publish_activity(topics: list[str], since: float) -> tuple[str, dict[str, Any] | None]:
    """The backend's name and what it can say of recent publishes (``None``: nothing)."""
    from ..broadcasting.backends import _backend_class, get_backend
    from ..broadcasting.backends.base import Backend

    try:
        cls = _backend_class(get_config().broadcast_backend)
    except Exception:  # not installed or misconfigured: broadcasting says so where used
        return "?", None
    name = str(getattr(cls, "name", cls.__name__))
    if name == "database":  # queried here: no need to make a backend in this process
        return name, _database_activity(topics, since)
    if cls.topic_activity is Backend.topic_activity:
        return name, None  # redis: no cheap per-topic count
    return name, get_backend().topic_activity(topics, since)


def _percentile(ordered: list[float], fraction: float) -> float:
    """Nearest-rank percentile of a sorted, non-empty list."""
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


def _topics(now: float) -> dict[str, Any]:
    # Imported here: the history writer uses the models, and this module must load in a
    # project without the app (``views`` imports it for the metrics view's module).
    from ._sharing import broadcast_shared, warn_unshared_broadcast

    me = current_process()
    subscribers, processes, partial = _subscribers(me)
    since = now - TOPICS_WINDOW
    subscribed = [topic for topic, _ in subscribers.most_common(TOPICS_TOP)]
    backend, activity = _publish_activity(subscribed, since)
    known = set(subscribers) | set(activity or ())
    ranked = sorted(
        known,
        key=lambda t: (-subscribers[t], -(activity or {}).get(t, (0, None))[0], t),
    )
    rows = []
    for topic in ranked[:TOPICS_TOP]:
        published, last = (activity or {}).get(topic, (0, None))
        rows.append({
            "topic": topic, "subscribers": subscribers[topic],
            "published": published if activity is not None else None,
            "last": None if last is None else round(last, 3),
        })  # fmt: skip
    lags = sorted(recent_lags.since(since))
    lag = None
    if lags:
        lag = {
            "p50": round(_percentile(lags, 0.5), 4),
            "p99": round(_percentile(lags, 0.99), 4),
            "max": round(lags[-1], 4),
            "samples": len(lags),
        }
    unshared = None
    if len(processes) > 1 and not broadcast_shared():
        unshared = sorted(processes)[:10]
        warn_unshared_broadcast(sorted(processes))
    return {
        "window": TOPICS_WINDOW,
        "backend": backend,
        "rows": rows,
        "more": max(0, len(ranked) - TOPICS_TOP),
        "partial": partial,
        "lag": lag,
        "unshared": unshared,
        "processes": len(processes),
    }
