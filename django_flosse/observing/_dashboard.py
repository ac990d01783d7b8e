"""The admin dashboard's data: what its SSE feed (``views.py``) reads and sends.

Why it is built this way (read before "simplifying"):

* The feed is itself an ``@sse_stream`` view (stream name :data:`DASHBOARD_STREAM`). It
  sends one ``snapshot`` event on connect, then an ``update`` event only when something
  changed: the decorator's keep-alive comments hold the connection in between.
* Its cost is bounded by what it shows, not by the traffic it shows. The history table
  holds one row per connection, and one anonymous client can open hundreds a second: a
  feed that counted the rows of its window on every poll cost a core per viewer under such
  a flood. So the cards and the chart come from aggregates kept as connections open and
  close (``observing._activity``: in memory for this process, the small ``StreamActivity``
  table for the others), and only open rows are read from the history (the live
  connections listed, counted per stream), through the ``(closed_at, process)`` index.
* One computation per interval per process, whatever the number of viewers: the
  :class:`_Board` computes the state (cards, the newest ``DASHBOARD_TOP`` live rows, the
  total, the chart) at most every :data:`POLL_INTERVAL` from the database and every
  :data:`MIN_POLL_GAP` from this process's registry, and every viewer's :class:`Feed` only
  compares it with what it last sent. A registry observer wakes the feeds the moment a
  local connection opens or closes.
* This process's own rows lag its registry by up to ``FLUSH_INTERVAL``, so for this
  process the feed reads the registry instead (SQL filters on ``process``).
* The feed leaves out its own stream: every frame it sends moves its own counters, which
  would be a change to report, which would be another frame, for ever.
* Client addresses are shown only when they parse as an IP (validated where the request
  is read, ``streaming._clients``, and again here for connections made by other code).
* The broadcast topics panel (``_topics``) rides in the snapshot and then in an update at
  most every :data:`TOPICS_INTERVAL`, as a ``topics`` key.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db.models import Count, Sum
from django.utils import timezone

from ._activity import BUCKET, DASHBOARD_STREAM, WINDOW, activity, bucket_of
from ._topics import TOPICS_INTERVAL, TOPICS_TOP, TOPICS_WINDOW, topics_panel
from .registry import Connection, client_address, current_process, registry

__all__ = [
    "DASHBOARD_STREAM",
    "HISTORY_POINTS",
    "MIN_POLL_GAP",
    "POLL_INTERVAL",
    "TOPICS_INTERVAL",
    "TOPICS_TOP",
    "TOPICS_WINDOW",
    "WINDOW",
    "Feed",
    "board",
    "topics_panel",
    "watcher",
]

#: Seconds between two reads of the database: changes in other processes reach the page
#: within FLUSH_INTERVAL + POLL_INTERVAL.
POLL_INTERVAL = 0.5
#: Local changes wake the feed at once, but a burst of them makes at most one poll per gap.
MIN_POLL_GAP = 0.1
#: Points of the chart's history sent with the snapshot (one per bucket of the window).
HISTORY_POINTS = WINDOW // BUCKET
#: Buckets back in which the newest running totals of another process are looked for.
_RECENT_BUCKETS = 3


def _epoch(value: datetime | None) -> float | None:
    if value is None:
        return None
    if timezone.is_naive(value):  # USE_TZ = False: the column holds TIME_ZONE's wall time
        value = timezone.make_aware(value)
    return round(value.timestamp(), 3)


# --------------------------------------------------------------------------- local watcher
class _LocalWatcher:
    """Registry observer: counts local opens and closes (``_activity``) and wakes this
    process's feeds."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._listeners: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Event]] = {}

    def reset(self) -> None:
        """Forget the counts, the shared state and the topics panel (tests)."""
        activity.reset()
        board.reset()
        topics_panel.clear()

    def listen(self, loop: asyncio.AbstractEventLoop, event: asyncio.Event) -> int:
        with self._lock:
            token = id(event)
            self._listeners[token] = (loop, event)
        return token

    def unlisten(self, token: int) -> None:
        with self._lock:
            self._listeners.pop(token, None)

    def _wake(self, stream: str) -> None:
        if stream == DASHBOARD_STREAM:
            return
        with self._lock:
            listeners = list(self._listeners.values())
        for loop, event in listeners:
            with contextlib.suppress(RuntimeError):  # that feed's loop has just closed
                loop.call_soon_threadsafe(event.set)

    # Observer protocol: called on streaming threads and loops, so only counts and wakes.
    def connection_opened(self, connection: Connection) -> None:
        activity.connection_opened(connection)
        self._wake(connection.stream)

    def connection_closed(self, connection: Connection) -> None:
        activity.connection_closed(connection)
        self._wake(connection.stream)

    def connection_rejected(self, stream: str, reason: str) -> None:
        pass


#: This process's watcher (wired to the registry by ``observing.wiring``).
watcher = _LocalWatcher()


# --------------------------------------------------------------------------- rows
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
        "id": c.id, "stream": c.stream, "user": c.username[:150],
        "ip": client_address(c.client_ip), "process": c.process,
        "opened": round(c.opened_at, 3), "events": c.events_sent, "bytes": c.bytes_sent,
        "last": last,
    }, " ".join(c.topics))  # fmt: skip


# --------------------------------------------------------------------------- shared state
_Key = tuple[str, str]  # (process, stream)


@dataclass
class _Remote:
    """What the database says of the other processes (read at most every POLL_INTERVAL)."""

    at: float
    top: int
    open: dict[str, int]
    rows: list[dict[str, Any]]
    counts: dict[str, tuple[int, int, int]]
    running: dict[_Key, tuple[int, int]]


@dataclass
class _State:
    t: float
    top: int
    cards: list[dict[str, Any]]
    rows: list[dict[str, Any]]
    total: int
    #: When it was computed (``t`` is the same, rounded for the page), and
    #: ``activity.version`` then.
    at: float = 0.0
    version: int = -1


def _read_remote(me: str, top: int, now: float) -> _Remote:
    from ..models import StreamActivity, StreamConnection

    live = (
        StreamConnection.objects.filter(closed_at__isnull=True)
        .exclude(process=me)
        .exclude(stream=DASHBOARD_STREAM)
    )
    open_counts = {
        r["stream"]: r["n"] for r in live.values("stream").annotate(n=Count("pk")).order_by()
    }
    rows = [_row(v) for v in live.order_by("-opened_at").values_list(*_ROW_FIELDS)[:top]]
    for row in rows:  # the column validates; a row written by other code may not have
        row["ip"] = client_address(row["ip"])
    others = StreamActivity.objects.exclude(process=me)
    counts = {
        r["stream"]: (r["o"], r["c"], r["e"])
        for r in others.filter(bucket__gte=bucket_of(now - WINDOW))
        .values("stream")
        .annotate(o=Sum("opened"), c=Sum("cancelled"), e=Sum("errors"))
        .order_by()
    }
    recent = others.filter(bucket__gte=bucket_of(now) - _RECENT_BUCKETS * BUCKET)
    newest: dict[_Key, tuple[int, int, int]] = {}
    for process, stream, bucket, events, sent in recent.values_list(
        "process", "stream", "bucket", "events_total", "bytes_total"
    ):
        if newest.get((process, stream), (-1,))[0] < bucket:
            newest[process, stream] = (bucket, events, sent)
    running = {key: (events, sent) for key, (_, events, sent) in newest.items()}
    return _Remote(now, top, open_counts, rows, counts, running)


class _Board:
    """The dashboard's state, computed for every viewer of this process at once.

    Rates are deltas of running totals per (process, stream) between two reads of the
    database (keys present in both: a process that appears or goes away is no traffic);
    they are kept between reads.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._state: _State | None = None
            self._remote: _Remote | None = None
            self._prev: tuple[float, dict[_Key, tuple[int, int]]] | None = None
            self._rates: dict[str, tuple[float, int]] = {}
            self._history: tuple[float, list[list[float]]] | None = None
            #: How many times the state was computed, and the CPU seconds the feeds spent
            #: (queries included: SQLite runs in the thread), for tests and a shell.
            self.computations = 0
            self.cpu_seconds = 0.0

    def charge(self, seconds: float) -> None:
        with self._lock:
            self.cpu_seconds += seconds

    def state(self, top: int, max_age: float = 0.0, remote_max_age: float = 0.0) -> _State:
        """The state, computed again when it is older than ``remote_max_age`` seconds, or
        than ``max_age`` if a connection of this process opened or closed since (0: now).

        So every viewer of the process reads one state per interval, and a local change
        reaches them within ``max_age``; the database is read at most every
        ``remote_max_age``.
        """
        with self._lock:
            now = time.time()
            state, version = self._state, activity.version
            if state is not None and state.top == top and now >= state.at:
                age = now - state.at
                if age < max_age or (state.version == version and age < remote_max_age):
                    return state
            remote = self._remote
            if remote is None or remote.top != top or not 0 <= now - remote.at < remote_max_age:
                remote = self._remote = _read_remote(current_process(), top, now)
                fresh = True
            else:
                fresh = False
            self._state = self._compute(now, top, remote, fresh)
            self._state.at, self._state.version = now, version
            self.computations += 1
            return self._state

    def _compute(self, now: float, top: int, remote: _Remote, fresh: bool) -> _State:
        me = current_process()
        totals = {n: t for n, t in registry.totals().items() if n != DASHBOARD_STREAM}
        local = [c for c in registry.live() if c.stream != DASHBOARD_STREAM]
        local_counts = activity.counts(now - WINDOW)
        names = set(remote.open) | set(remote.counts) | set(local_counts)
        names.update(n for n, t in totals.items() if t.active)
        if fresh:
            running = dict(remote.running)
            running.update(((me, n), (t.events_sent, t.bytes_sent)) for n, t in totals.items())
            self._update_rates(now, running)
        cards: list[dict[str, Any]] = []
        for name in sorted(names):
            o1, c1, e1 = remote.counts.get(name, (0, 0, 0))
            o2, c2, e2 = local_counts.get(name, (0, 0, 0))
            local_totals = totals.get(name)
            eps, bps = self._rates.get(name, (0.0, 0))
            cards.append({
                "stream": name,
                "active": remote.open.get(name, 0) + (local_totals.active if local_totals else 0),
                "opened": o1 + o2, "cancelled": c1 + c2, "errors": e1 + e2,
                "eps": eps, "bps": bps,
            })  # fmt: skip
        rows = remote.rows + [_local_row(c) for c in local]
        rows.sort(key=lambda r: (r["opened"] or 0.0, r["id"]), reverse=True)
        total = sum(card["active"] for card in cards)
        return _State(round(now, 3), top, cards, rows[:top], total)

    def _update_rates(self, now: float, running: dict[_Key, tuple[int, int]]) -> None:
        prev, self._prev = self._prev, (now, running)
        if prev is None or now <= prev[0]:
            return
        elapsed, before = now - prev[0], prev[1]
        moved: dict[str, list[int]] = {}
        for key, (events, sent) in running.items():
            e0, b0 = before.get(key, (events, sent))
            totals = moved.setdefault(key[1], [0, 0])
            totals[0] += max(0, events - e0)
            totals[1] += max(0, sent - b0)
        self._rates = {
            name: (round(events / elapsed, 1), round(sent / elapsed))
            for name, (events, sent) in moved.items()
        }

    def history(self, total: int, max_age: float = 0.0) -> list[list[float]]:
        """Open connections at the end of each bucket of the window (every process), then
        ``total`` now."""
        from ..models import StreamActivity

        with self._lock:
            now = time.time()
            cached = self._history
            if cached is None or not 0 <= now - cached[0] < max_age:
                current = bucket_of(now)
                buckets = [current - (HISTORY_POINTS - i) * BUCKET for i in range(HISTORY_POINTS)]
                remote = dict(
                    StreamActivity.objects.exclude(process=current_process())
                    .filter(bucket__gte=buckets[0], bucket__lt=current)
                    .values("bucket")
                    .annotate(n=Sum("active"))
                    .order_by()
                    .values_list("bucket", "n")
                )
                local = activity.active_series(buckets)
                points = [
                    [float(b + BUCKET), remote.get(b, 0) + n]
                    for b, n in zip(buckets, local, strict=True)
                ]
                cached = self._history = (now, points)
        return [*cached[1], [round(time.time(), 3), total]]


#: The dashboard state of this process, shared by its viewers.
board = _Board()


# --------------------------------------------------------------------------- one viewer
class Feed:
    """What one dashboard connection has sent, to send only what changed.

    ``shared=True`` (the feed view) reuses the :data:`board`'s state while it is fresh
    enough; ``False`` (tests, a shell) always computes it anew.
    """

    def __init__(self, top: int, *, shared: bool = False) -> None:
        self.top = top
        self._ages = (MIN_POLL_GAP * 0.9, POLL_INTERVAL * 0.9) if shared else (0.0, 0.0)
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
        started = time.thread_time()
        state = board.state(self.top, *self._ages)
        self._cards, self._rows, self._total = (
            state.cards,
            {r["id"]: r for r in state.rows},
            state.total,
        )
        history = board.history(state.total, max_age=self._ages[1])
        board.charge(time.thread_time() - started)
        return {
            "t": state.t,
            "window": WINDOW,
            "poll": POLL_INTERVAL,
            "top": self.top,
            "total": state.total,
            "cards": state.cards,
            "rows": state.rows,
            "history": history,
        }

    def poll(self) -> dict[str, Any] | None:
        """The changes since the last frame, or ``None`` when nothing changed."""
        started = time.thread_time()
        try:
            return self._changes()
        finally:
            board.charge(time.thread_time() - started)

    def _changes(self) -> dict[str, Any] | None:
        state = board.state(self.top, *self._ages)
        new = {r["id"]: r for r in state.rows}
        upsert = [r for cid, r in new.items() if self._rows.get(cid) != r]
        remove = [cid for cid in self._rows if cid not in new]
        if state.cards == self._cards and state.total == self._total and not upsert and not remove:
            return None
        self._cards, self._rows, self._total = state.cards, new, state.total
        return {"t": state.t, "total": state.total, "cards": state.cards, "upsert": upsert,
                "remove": remove}  # fmt: skip
