"""The live connections of this process, and what happened to the ones that ended.

Every ``@sse_stream`` connection is registered when its request is accepted and closed
exactly once, with one reason. The registry notifies observers (metrics, logs, persistence,
the dashboard, a project's own) on open, close and rejection; it never calls them per
event. Per-event accounting lives on the :class:`Connection` itself: a few integer updates
by the one task or thread that streams it, no lock shared between connections. Readers on
other threads see counters that are at most one chunk old, which is all a dashboard needs.

Open and close take one short process-wide lock so that connection limits are exact under
concurrency: 200 simultaneous requests against a limit of 50 admit exactly 50.

The registry knows nothing of settings or logging. ``AppConfig.ready()`` wires it
(``observing.wiring``): the configured observers, and the hook that logs an observer's error.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from .. import reasons

__all__ = [
    "Connection",
    "Observer",
    "Registry",
    "StreamTotals",
    "client_address",
    "registry",
]

_default_log = logging.getLogger("django_flosse")


def _log_observer_error(observer: object, method: str) -> None:
    """Until ``AppConfig.ready()`` sets the structlog hook: the stdlib logger."""
    _default_log.exception("sse.observer.error observer=%r method=%s", observer, method)


@dataclass(eq=False, slots=True)
class Connection:
    """One SSE connection. Fields after ``opened_at`` change while it streams."""

    id: str
    stream: str
    path: str = ""
    route: str = ""
    user_id: str | None = None
    username: str = ""
    client_ip: str | None = None
    user_agent: str = ""
    last_event_id: str = ""
    process: str = ""
    opened_at: float = field(default_factory=time.time)
    events_sent: int = 0
    bytes_sent: int = 0
    last_event_at: float | None = None
    closed_at: float | None = None
    close_reason: str | None = None
    error_id: str | None = None
    #: Set (by the admin's terminate, or at shutdown) to ask the stream to end with this reason.
    stop_reason: str | None = None
    #: Set by the running stream: wakes it (from any thread) to notice ``stop_reason``.
    wake: Callable[[], object] | None = field(default=None, repr=False)
    #: The broadcast topics its view subscribed to (``subscribe()``), sorted.
    topics: tuple[str, ...] = ()
    #: Broadcast events handed to the stream (live or replayed), replayed, and resets sent.
    broadcast_delivered: int = 0
    broadcast_replayed: int = 0
    broadcast_resets: int = 0
    #: Seconds from publish to live delivery, not yet folded into the lag histogram (at
    #: most ``MAX_PENDING_LAGS``; the metrics observer empties it).
    broadcast_lags: list[float] = field(default_factory=list, repr=False)
    # ``on_close``'s list, created when the first callback comes: most connections never
    # subscribe, and an empty list is 56 bytes kept for the connection's whole life.
    _on_close: list[Callable[[], None]] | None = field(default=None, repr=False)

    @property
    def on_close(self) -> list[Callable[[], None]]:
        """Called (without arguments) once it is closed: a subscription stops there."""
        if self._on_close is None:
            self._on_close = []
        return self._on_close

    def close_callbacks(self) -> Sequence[Callable[[], None]]:
        """What :attr:`on_close` holds, without creating its list."""
        return self._on_close or ()

    def request_stop(self, reason: str) -> bool:
        """Ask the stream to end with ``reason`` (thread-safe); False if already asked."""
        if reason not in reasons.CLOSE_REASONS:
            raise ValueError(
                f"unknown close reason {reason!r}; expected one of {reasons.CLOSE_REASONS}"
            )
        if self.stop_reason is not None or self.closed_at is not None:
            return False
        self.stop_reason = reason
        wake = self.wake
        if wake is not None:
            wake()
        return True

    @property
    def is_open(self) -> bool:
        return self.closed_at is None

    @property
    def duration(self) -> float:
        return (self.closed_at or time.time()) - self.opened_at

    def snapshot(self) -> Connection:
        """A copy that no longer changes (safe to hand to another thread)."""
        return replace(self, wake=None, broadcast_lags=[], _on_close=None)


@dataclass
class StreamTotals:
    """What one stream name has done in this process since it started."""

    stream: str
    active: int = 0
    opened: int = 0
    closed: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    events_sent: int = 0  # of closed connections; add the live ones' for a running total
    bytes_sent: int = 0

    def copy(self) -> StreamTotals:
        return replace(self, closed=Counter(self.closed), rejected=Counter(self.rejected))


class Observer(Protocol):
    """Receives the registry's notifications. Methods are called on the streaming thread
    or event loop: keep them quick and never block (queue work for a thread instead)."""

    def connection_opened(self, connection: Connection) -> None: ...

    def connection_closed(self, connection: Connection) -> None: ...

    def connection_rejected(self, stream: str, reason: str) -> None: ...


def client_address(value: object) -> str | None:
    """``value`` as an IP address in its normal form (an IPv6 zone dropped), or ``None``.

    A client address comes from a header the client may make up (``CLIENT_IP_HEADER``), or
    from the server: the registry, logs, history and dashboard keep it only when it parses.
    """
    if not isinstance(value, str) or not value or len(value) > 64:
        return None
    return _parsed_address(value)


# Every connection asks (its REMOTE_ADDR, the proxy header), and the same few addresses
# come back again and again (a proxy, a load balancer, a busy client): parsing one is a few
# microseconds on the request's path. Bounded: at most this many addresses of <= 64 chars.
@functools.lru_cache(maxsize=1024)
def _parsed_address(value: str) -> str | None:
    try:
        return str(ipaddress.ip_address(value.split("%")[0]))
    except ValueError:
        return None


#: Lag samples a connection keeps for the metrics observer before it drops new ones.
MAX_PENDING_LAGS = 4096

_process: tuple[int, str] = (0, "")


def current_process() -> str:
    """``host:pid`` of this process (a worker may have forked since it was last asked)."""
    global _process
    pid = os.getpid()
    if _process[0] != pid:
        _process = (pid, f"{socket.gethostname()}:{pid}")
    return _process[1]


class Registry:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: dict[str, Connection] = {}
        self._totals: dict[str, StreamTotals] = {}
        self._per_user: Counter[tuple[str, str]] = Counter()
        # Observers are read on every open and close, never written then: each list is
        # replaced whole, so a notification iterates a list nobody changes.
        self._wired: list[Observer] = []  # from the settings (``observing.wiring``)
        self._observers: list[Observer] = []  # added with subscribe()
        self._stopping: str | None = None
        # Streams whose view exists (decorated), in order: their series start at zero.
        self._declared: dict[str, None] = {}
        #: Called (from inside the ``except``) when an observer raises.
        self.on_observer_error: Callable[[object, str], None] = _log_observer_error

    # -- observers ---------------------------------------------------------------------
    def wire(self, observers: Iterable[Observer]) -> None:
        """Set the observers that come from the settings (replacing the previous ones);
        they hear of every stream declared so far."""
        with self._lock:
            self._wired = list(observers)
            wired, declared = self._wired, list(self._declared)
        for observer in wired:
            for stream in declared:
                self._call_optional(observer, "stream_declared", stream)

    def subscribe(self, observer: Observer) -> None:
        """Add an observer for this process (in addition to ``FLOSSE["OBSERVERS"]``)."""
        with self._lock:
            if observer not in self._observers and observer not in self._wired:
                self._observers = [*self._observers, observer]

    def unsubscribe(self, observer: Observer) -> None:
        with self._lock:
            self._observers = [o for o in self._observers if o is not observer]

    def observers(self) -> list[Observer]:
        """Every observer notified: the wired ones, then the subscribed ones."""
        return [*self._wired, *self._observers]

    def _call_optional(self, observer: object, method: str, *args: Any) -> None:
        handler = getattr(observer, method, None)
        if handler is None:  # an optional notification this observer does not take
            return
        try:
            handler(*args)
        except Exception:
            self.on_observer_error(observer, method)

    def _notify_optional(self, method: str, *args: Any) -> None:
        for observers in (self._wired, self._observers):
            for observer in observers:
                self._call_optional(observer, method, *args)

    def _notify(self, method: str, *args: Any) -> None:
        for observers in (self._wired, self._observers):
            for observer in observers:
                try:
                    getattr(observer, method)(*args)
                except Exception:  # an observer must never break a stream
                    self.on_observer_error(observer, method)

    # -- lifecycle -----------------------------------------------------------------------
    def declare(self, stream: str) -> None:
        """A stream exists (its view was decorated), before any connection: observers that
        take ``stream_declared`` hear of it (the metrics create its series at zero, so that
        Prometheus's ``rate()`` and ``increase()`` see its first event after a start)."""
        with self._lock:
            if stream in self._declared:
                return
            self._declared[stream] = None
        self._notify_optional("stream_declared", stream)

    def declared(self) -> list[str]:
        """The streams declared in this process, in order."""
        with self._lock:
            return list(self._declared)

    def lost(self, stream: str, count: int) -> None:
        """Count ``count`` connections of ``stream`` that another process closed as ``lost``
        (their own process died and cannot): observers that take ``connections_lost``."""
        self._notify_optional("connections_lost", stream, count)

    def open(
        self,
        connection: Connection,
        *,
        max_connections: int | None = None,
        max_connections_per_user: int | None = None,
    ) -> str | None:
        """Register ``connection``, or refuse it: returns ``None`` or the rejection reason
        (``"stream_limit"``, ``"user_limit"``), which is counted and notified."""
        name = connection.stream
        user_key = (name, connection.user_id) if connection.user_id is not None else None
        with self._lock:
            totals = self._totals.get(name) or self._totals.setdefault(name, StreamTotals(name))
            if max_connections is not None and totals.active >= max_connections:
                rejected: str | None = reasons.STREAM_LIMIT
            elif (
                max_connections_per_user is not None
                and user_key is not None
                and self._per_user[user_key] >= max_connections_per_user
            ):
                rejected = reasons.USER_LIMIT
            else:
                rejected = None
                if self._stopping is not None:  # shutting down: it ends at its first step
                    connection.stop_reason = self._stopping
                self._live[connection.id] = connection
                totals.active += 1
                totals.opened += 1
                if user_key is not None:
                    self._per_user[user_key] += 1
            if rejected:
                totals.rejected[rejected] += 1
        if rejected:
            self._notify("connection_rejected", name, rejected)
        else:
            self._notify("connection_opened", connection)
        return rejected

    def reject(self, stream: str, reason: str) -> None:
        """Count a request refused before it became a connection (``forbidden``, ...)."""
        with self._lock:
            totals = self._totals.get(stream) or self._totals.setdefault(
                stream, StreamTotals(stream)
            )
            totals.rejected[reason] += 1
        self._notify("connection_rejected", stream, reason)

    def close(self, connection: Connection, reason: str) -> bool:
        """Close ``connection`` with ``reason``; only the first call counts."""
        if reason not in reasons.CLOSE_REASONS:
            raise ValueError(
                f"unknown close reason {reason!r}; expected one of {reasons.CLOSE_REASONS}"
            )
        with self._lock:
            if self._live.pop(connection.id, None) is None:
                return False
            connection.close_reason = reason
            connection.closed_at = time.time()
            totals = self._totals[connection.stream]
            totals.active -= 1
            totals.closed[reason] += 1
            totals.events_sent += connection.events_sent
            totals.bytes_sent += connection.bytes_sent
            if connection.user_id is not None:
                user_key = (connection.stream, connection.user_id)
                self._per_user[user_key] -= 1
                if self._per_user[user_key] <= 0:
                    del self._per_user[user_key]
        self._notify("connection_closed", connection)
        # Each runs once, and the list goes with them: a subscription holds its connection
        # and its callback holds the subscription, a cycle that would keep the subscription
        # for as long as the connection (the request's attribute) lives.
        callbacks, connection._on_close = connection.close_callbacks(), None
        for callback in callbacks:
            try:
                callback()
            except Exception:  # like an observer: never break the close
                self.on_observer_error(callback, "on_close")
        return True

    # -- reading -------------------------------------------------------------------------
    def live(self, stream: str | None = None) -> list[Connection]:
        """Snapshots of the open connections (of one stream, or all), oldest first."""
        with self._lock:
            connections = list(self._live.values())
        return [c.snapshot() for c in connections if stream is None or c.stream == stream]

    def active(self) -> int:
        """How many connections of this process are open right now (all streams)."""
        return len(self._live)

    def get(self, connection_id: str) -> Connection | None:
        """The live connection object itself (not a copy), e.g. to ask it to stop."""
        return self._live.get(connection_id)

    def totals(self) -> dict[str, StreamTotals]:
        """Per-stream totals, with live connections' events and bytes included."""
        with self._lock:
            result = {name: t.copy() for name, t in self._totals.items()}
            live = list(self._live.values())
        for connection in live:
            result[connection.stream].events_sent += connection.events_sent
            result[connection.stream].bytes_sent += connection.bytes_sent
        return result

    def stop(self, connection_ids: Iterable[str], reason: str) -> int:
        """Ask live connections of this process to end with ``reason``; returns how many."""
        count = 0
        for connection_id in connection_ids:
            connection = self._live.get(connection_id)
            if connection is not None and connection.request_stop(reason):
                count += 1
        return count

    def stop_all(self, reason: str) -> int:
        """End every live connection with ``reason``, and any opened from now on (shutdown)."""
        with self._lock:
            self._stopping = reason
            ids = list(self._live)
        return self.stop(ids, reason)

    @property
    def stopping(self) -> str | None:
        """The reason given to :meth:`stop_all`, if the process is shutting down."""
        return self._stopping

    def reset(self) -> None:
        """Forget every connection and total (for tests); subscribed observers stay."""
        with self._lock:
            self._stopping = None
            self._live.clear()
            self._totals.clear()
            self._per_user.clear()


#: The registry of this process.
registry = Registry()
