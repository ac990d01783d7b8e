"""The admin dashboard's data: what its SSE feed (``views.py``) reads and sends.

Why it is built this way (read before "simplifying"):

* The feed is itself an ``@sse_stream`` view (stream name :data:`DASHBOARD_STREAM`). It
  sends one ``snapshot`` event on connect, then an ``update`` event only when something
  changed: the decorator's keep-alive comments hold the connection in between.
* Every process and host writes its connections to ``StreamConnection``
  (``observing._history``), so the feed reads that table every :data:`POLL_INTERVAL` to see the
  whole deployment. This process's own rows lag its registry by up to ``FLUSH_INTERVAL``, so
  for this process the feed reads the registry instead (SQL filters on ``process``), and a
  registry observer wakes the feed the moment a local connection opens or closes.
* Everything is aggregated in SQL: per-stream counts and sums, and only the newest
  ``DASHBOARD_TOP`` live connections one by one. 10,000 live connections cost two queries
  per poll and a frame of bounded size.
* The feed leaves out its own stream: every frame it sends moves its own counters, which
  would be a change to report, which would be another frame, for ever.
* The topics panel (broadcast: subscribers per topic across processes, events published,
  lag) rides in the snapshot and then in an update at most every :data:`TOPICS_INTERVAL`
  (only when it changed), as a ``topics`` key; it is computed once per process for every
  viewer (:class:`_TopicsPanel`): it reads the topics
  of open rows (grouped in SQL, bounded by :data:`MAX_TOPIC_GROUPS`) and, on the
  ``database`` backend, the broadcast history of the last :data:`TOPICS_WINDOW` only
  (through its ``published_at`` index). The connections' cards and table keep their pace.
* ``AdminSite.admin_view`` wraps sync views only, so the outer feed view is sync (login
  redirect, permission check) and calls the async stream view through ``async_to_sync``.
  The response it returns then streams natively under ASGI, where a disconnect cancels the
  generator at once. Its queries run on one thread of its own through ``sync_to_async``:
  never on the event loop, and its database connection is closed when the feed ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections import Counter, deque
from datetime import datetime
from datetime import timezone as dt_timezone
from typing import Any

from django.conf import settings
from django.db.models import Count, Max, OuterRef, Q, Subquery, Sum
from django.utils import timezone

from .. import reasons
from ..conf import get_config
from .metrics import recent_lags
from .registry import Connection, current_process, registry

__all__ = [
    "DASHBOARD_STREAM",
    "MIN_POLL_GAP",
    "POLL_INTERVAL",
    "TOPICS_INTERVAL",
    "WINDOW",
    "Feed",
    "watcher",
]

#: The feed's own stream name (left out of what the dashboard shows).
DASHBOARD_STREAM = "django_flosse.dashboard"
#: Seconds between two reads of the connection table: changes in other processes reach
#: the page within FLUSH_INTERVAL + POLL_INTERVAL.
POLL_INTERVAL = 0.5
#: Local changes wake the feed at once, but a burst of them makes at most one poll per gap.
MIN_POLL_GAP = 0.1
#: Seconds covered by the chart and by the cards' opened / cancelled / errors counts.
WINDOW = 600
#: Points of the chart's history sent with the snapshot (one every WINDOW / POINTS s).
HISTORY_POINTS = 60
#: Seconds after which the base of the rate computation moves forward (see ``_Feed``).
REBASE_EVERY = 60.0
#: Topics listed one by one in the topics panel (the most subscribed first).
TOPICS_TOP = 20
#: Seconds covered by the topics panel's "published" counts and lag percentiles.
TOPICS_WINDOW = 300
#: Seconds between two computations of the topics panel (shared by a process's viewers).
TOPICS_INTERVAL = 5.0
#: Groups of open rows with the same topics and process read at most per computation
#: (per-user topics make one group per connection); beyond it the counts are partial.
MAX_TOPIC_GROUPS = 10_000


def _epoch(value: datetime | None) -> float | None:
    if value is None:
        return None
    if timezone.is_naive(value):  # USE_TZ = False: the column holds TIME_ZONE's wall time
        value = timezone.make_aware(value)
    return round(value.timestamp(), 3)


def _aware(epoch: float) -> datetime:
    """``epoch`` as the column wants it (naive local time when ``USE_TZ`` is off)."""
    moment = datetime.fromtimestamp(epoch, tz=dt_timezone.utc)
    return moment if settings.USE_TZ else timezone.make_naive(moment)


# --------------------------------------------------------------------------- local watcher
class _LocalWatcher:
    """Registry observer: wakes this process's feeds and counts local opens and closes.

    The counts (per second, for the last :data:`WINDOW`) stand in for this process's rows
    from ``since`` on, which the database may not have yet; older rows come from SQL.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._listeners: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Event]] = {}
        self._buckets: deque[tuple[int, Counter[tuple[str, str]]]] = deque()
        self.since = time.time()

    def reset(self) -> None:
        """Forget the counts and the topics panel (tests reset the registry too)."""
        with self._lock:
            self._buckets.clear()
            self.since = time.time()
        topics_panel.clear()

    def listen(self, loop: asyncio.AbstractEventLoop, event: asyncio.Event) -> int:
        with self._lock:
            token = id(event)
            self._listeners[token] = (loop, event)
        return token

    def unlisten(self, token: int) -> None:
        with self._lock:
            self._listeners.pop(token, None)

    def counts(self, start: float) -> dict[str, Counter[str]]:
        """Local opens (``"opened"``) and closes (by reason) per stream since ``start``."""
        result: dict[str, Counter[str]] = {}
        with self._lock:
            buckets = [counter for second, counter in self._buckets if second >= start]
        for counter in buckets:
            for (stream, kind), n in counter.items():
                result.setdefault(stream, Counter())[kind] += n
        return result

    def _record(self, stream: str, kind: str) -> None:
        if stream == DASHBOARD_STREAM:
            return
        now = int(time.time())
        with self._lock:
            if not self._buckets or self._buckets[-1][0] != now:
                self._buckets.append((now, Counter()))
            self._buckets[-1][1][stream, kind] += 1
            while self._buckets and self._buckets[0][0] < now - WINDOW - 1:
                self._buckets.popleft()
            listeners = list(self._listeners.values())
        for loop, event in listeners:
            with contextlib.suppress(RuntimeError):  # that feed's loop has just closed
                loop.call_soon_threadsafe(event.set)

    # Observer protocol: called on streaming threads and loops, so only counts and wakes.
    def connection_opened(self, connection: Connection) -> None:
        self._record(connection.stream, "opened")

    def connection_closed(self, connection: Connection) -> None:
        self._record(connection.stream, connection.close_reason or reasons.COMPLETED)

    def connection_rejected(self, stream: str, reason: str) -> None:
        pass


#: This process's watcher (wired to the registry by ``observing.wiring``).
watcher = _LocalWatcher()


# --------------------------------------------------------------------------- the feed's state
_ROW_FIELDS = (
    "connection_id", "stream", "username", "client_ip", "process", "opened_at",
    "events_sent", "bytes_sent", "last_event_at", "topics",
)  # fmt: skip
#: Characters of a row's topics sent to the page (the cell shows the start; the title all).
ROW_TOPICS_CHARS = 300


def _with_topics(row: dict[str, Any], topics: str) -> dict[str, Any]:
    # Only for connections that subscribed: most do not, and frames stay small.
    if topics:
        row["topics"] = topics[:ROW_TOPICS_CHARS]
    return row


def _row(values: tuple[Any, ...]) -> dict[str, Any]:
    cid, stream, user, ip, process, opened, events, sent, last, topics = values
    return _with_topics({
        "id": cid, "stream": stream, "user": user, "ip": ip, "process": process,
        "opened": _epoch(opened), "events": events, "bytes": sent, "last": _epoch(last),
    }, topics)  # fmt: skip


def _local_row(c: Connection) -> dict[str, Any]:
    last = None if c.last_event_at is None else round(c.last_event_at, 3)
    return _with_topics({
        "id": c.id, "stream": c.stream, "user": c.username, "ip": c.client_ip,
        "process": c.process, "opened": round(c.opened_at, 3), "events": c.events_sent,
        "bytes": c.bytes_sent, "last": last,
    }, " ".join(c.topics))  # fmt: skip


class Feed:
    """What one dashboard connection has sent, to send only what changed.

    Rates are deltas of per-stream running totals: this process's registry totals plus the
    events and bytes of other processes' rows that are open or closed since ``_base``. A
    row that closes stays in that sum, so closing never looks like negative traffic.
    ``_base`` moves forward every :data:`REBASE_EVERY` seconds (that poll keeps the previous
    rates) so the rows summed stay few.
    """

    def __init__(self, top: int) -> None:
        self.top = top
        self.me = current_process()
        self._margin = max(10.0, 5 * get_config().flush_interval)  # late flushes of closes
        self._base = time.time() - self._margin
        self._rebased = time.time()
        self._prev: tuple[float, dict[str, tuple[int, int]]] | None = None
        self._rates: dict[str, tuple[float, int]] = {}
        self._cards: list[dict[str, Any]] = []
        self._rows: dict[str, dict[str, Any]] = {}
        self._total = 0
        self._topics: dict[str, Any] | None = None

    def unchanged(self) -> dict[str, Any]:
        """An update frame that changes nothing (to carry the topics panel alone)."""
        return {"t": round(time.time(), 3), "total": self._total, "cards": self._cards,
                "upsert": [], "remove": []}  # fmt: skip

    def topics(self) -> dict[str, Any] | None:
        """The topics panel, or ``None`` when it has not changed since this feed sent it."""
        panel = topics_panel.get(time.time())
        if panel == self._topics:
            return None
        self._topics = panel
        return panel

    def snapshot(self) -> dict[str, Any]:
        now = time.time()
        cards, rows, total = self._collect(now)
        self._cards, self._rows, self._total = cards, {r["id"]: r for r in rows}, total
        return {
            "t": round(now, 3),
            "window": WINDOW,
            "poll": POLL_INTERVAL,
            "top": self.top,
            "total": total,
            "cards": cards,
            "rows": rows,
            "history": self._history(now),
        }

    def poll(self) -> dict[str, Any] | None:
        """The changes since the last frame, or ``None`` when nothing changed."""
        now = time.time()
        cards, rows, total = self._collect(now)
        new = {r["id"]: r for r in rows}
        upsert = [r for cid, r in new.items() if self._rows.get(cid) != r]
        remove = [cid for cid in self._rows if cid not in new]
        if cards == self._cards and total == self._total and not upsert and not remove:
            return None
        self._cards, self._rows, self._total = cards, new, total
        return {"t": round(now, 3), "total": total, "cards": cards, "upsert": upsert,
                "remove": remove}  # fmt: skip

    def _collect(self, now: float) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
        from ..models import StreamConnection

        rebase = now - self._rebased >= REBASE_EVERY
        if rebase:
            self._base, self._rebased = now - self._margin, now
        start, since = now - WINDOW, watcher.since
        # Other processes from the table; this one from its registry and watcher (whose
        # counts begin at ``since``: older rows of this process are counted from SQL).
        remote = ~Q(process=self.me)
        summed = remote & (Q(closed_at__isnull=True) | Q(closed_at__gte=_aware(self._base)))
        closed = Q(closed_at__gte=_aware(start)) & (remote | Q(closed_at__lt=_aware(since)))
        table = StreamConnection.objects.exclude(stream=DASHBOARD_STREAM)
        aggregates = (
            table.filter(
                Q(closed_at__isnull=True) | Q(closed_at__gte=_aware(min(start, self._base)))
            )
            .values("stream")
            .annotate(
                active=Count("pk", filter=Q(closed_at__isnull=True) & remote),
                events=Sum("events_sent", filter=summed, default=0),
                sent=Sum("bytes_sent", filter=summed, default=0),
                opened=Count(
                    "pk",
                    filter=Q(opened_at__gte=_aware(start))
                    & (remote | Q(opened_at__lt=_aware(since))),
                ),
                cancelled=Count("pk", filter=closed & Q(close_reason=reasons.CANCELLED)),
                errors=Count("pk", filter=closed & Q(close_reason=reasons.ERROR)),
            )
            .order_by()
        )
        top = list(
            table.filter(closed_at__isnull=True)
            .exclude(process=self.me)
            .order_by("-opened_at")
            .values_list(*_ROW_FIELDS)[: self.top]
        )
        totals = {n: t for n, t in registry.totals().items() if n != DASHBOARD_STREAM}
        local = [c for c in registry.live() if c.stream != DASHBOARD_STREAM]
        local_counts = watcher.counts(start)

        streams: dict[str, dict[str, int]] = {}
        for agg in aggregates:
            streams[agg["stream"]] = {k: int(v) for k, v in agg.items() if k != "stream"}
        zero = dict.fromkeys(("active", "events", "sent", "opened", "cancelled", "errors"), 0)
        for name, t in totals.items():
            counts = local_counts.get(name, Counter())
            if not (t.active or counts or name in streams):
                continue
            s = streams.setdefault(name, dict(zero))
            s["active"] += t.active
            s["events"] += t.events_sent
            s["sent"] += t.bytes_sent
            s["opened"] += counts["opened"]
            s["cancelled"] += counts[reasons.CANCELLED]
            s["errors"] += counts[reasons.ERROR]

        running = {name: (s["events"], s["sent"]) for name, s in streams.items()}
        if self._prev is not None and not rebase and now > self._prev[0]:
            elapsed, before = now - self._prev[0], self._prev[1]
            for name, (events, sent) in running.items():
                e0, b0 = before.get(name, (events, sent))
                self._rates[name] = (
                    round(max(0, events - e0) / elapsed, 1),
                    round(max(0, sent - b0) / elapsed),
                )
        self._prev = (now, running)

        cards = []
        for name in sorted(streams):
            s = streams[name]
            eps, bps = self._rates.get(name, (0.0, 0))
            cards.append({
                "stream": name, "active": s["active"], "opened": s["opened"],
                "cancelled": s["cancelled"], "errors": s["errors"], "eps": eps, "bps": bps,
            })  # fmt: skip
        rows = [_row(values) for values in top] + [_local_row(c) for c in local]
        rows.sort(key=lambda r: (r["opened"] or 0.0, r["id"]), reverse=True)
        return cards, rows[: self.top], sum(s["active"] for s in streams.values())

    def _history(self, now: float) -> list[list[float]]:
        """Active connections over the last WINDOW, from the table (all processes)."""
        from ..models import StreamConnection

        step = WINDOW / HISTORY_POINTS
        times = [now - WINDOW + i * step for i in range(HISTORY_POINTS + 1)]
        counts = {
            f"p{i}": Count(
                "pk",
                filter=Q(opened_at__lte=_aware(t))
                & (Q(closed_at__isnull=True) | Q(closed_at__gt=_aware(t))),
            )
            for i, t in enumerate(times)
        }
        result = (
            StreamConnection.objects.exclude(stream=DASHBOARD_STREAM)
            .filter(Q(closed_at__isnull=True) | Q(closed_at__gt=_aware(times[0])))
            .aggregate(**counts)
        )
        return [[round(t, 3), result[f"p{i}"]] for i, t in enumerate(times)]


# --------------------------------------------------------------------------- topics panel
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


def _activity(topics: list[str], since: float) -> tuple[str, dict[str, Any] | None]:
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
    from ._history import broadcast_shared, warn_unshared_broadcast

    me = current_process()
    subscribers, processes, partial = _subscribers(me)
    since = now - TOPICS_WINDOW
    subscribed = [topic for topic, _ in subscribers.most_common(TOPICS_TOP)]
    backend, activity = _activity(subscribed, since)
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
