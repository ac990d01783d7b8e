"""Connection history: each process writes its own rows in batches, off the hot path.

Why it is built this way:

- Streaming never waits on the database. The registry's open/close notifications only put
  the connection in a dict (a lock held for a dict insert); an async view never runs an ORM
  call on its event loop. One daemon thread per process does every query.
- Writes are batched. The thread flushes at once after a quiet period (a lone connection
  shows up in the admin within milliseconds) but never more often than ``FLUSH_INTERVAL``,
  so 1,000 connections opening in one second cost one ``INSERT``, and refreshing 10,000 open
  rows costs one ``UPDATE`` of ``last_seen_at`` plus one prepared ``UPDATE`` run with
  ``executemany`` for the rows whose counters moved (``db.update_each``).
- Nothing is lost to a database error. A failed flush is rolled back as a whole, logged,
  and its work is put back to be retried by the next one. A row the database refuses for
  good (a user deleted meanwhile, a value it rejects) is retried alone, then without its
  user, and only then dropped with an error log: one bad row never blocks the others.
- Processes see each other through the table. Each flush polls the open rows of this
  process for ``stop_requested`` (set by :func:`request_stop` in any process or host) and
  stops those streams; and it closes as ``lost`` the open rows of other processes that have
  not been refreshed for ``LOST_AFTER`` seconds (their ``closed_at`` is when they were last
  seen alive). A process that was only slow and comes back writes its true close reason
  over ``lost`` when its connections end.
- A process identity (``host:pid``) can come back: a restarted container is often pid 1 on
  the same host name. The first flush of a writer closes as ``lost`` the open rows carrying
  its own identity, which no live process can own.
- Each flush also upserts this process's changed traffic buckets (``_activity``: opens,
  closes and open connections per stream and 10 seconds) into ``StreamActivity``, in the
  same transaction: the dashboards of other processes count from them, never from the
  history's rows, so their cost does not grow with the churn.
- The history bounds itself: the first flush of a writer, then one every
  ``_retention.INTERVAL`` seconds, deletes closed rows past ``RETENTION_DAYS`` or beyond
  ``RETENTION_ROWS`` in small indexed batches (``_retention``), and the buckets the
  dashboard no longer shows. A client that opens connections as fast as it can cannot grow
  the table past the bound, and nobody has to remember a cron job.
- After ``fork()`` (gunicorn workers, multiprocessing) the child starts clean with its own
  thread; what was pending belongs to the parent, which writes it.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any

from django.db import close_old_connections, connections, transaction
from django.db.models import F
from django.utils import timezone

from .. import reasons
from ..conf import get_config
from ..models import StreamActivity
from ..terminate import close_lost
from . import _retention
from ._activity import activity
from ._rows import (
    OpenRow,
    close_rows,
    db,
    insert_rows,
    objects,
    refresh_rows,
    subscribed_processes,
    write_activity,
    written,
)
from ._sharing import (
    broadcast_shared,
    forget_warnings,
    warn_unshared_broadcast,
)
from .log import (
    PERSISTENCE_DROPPED,
    PERSISTENCE_ERROR,
    PERSISTENCE_RECOVERED,
    get_logger,
)
from .registry import Connection, Registry, current_process, registry

__all__ = ["PersistenceWriter", "broadcast_shared", "warn_unshared_broadcast", "writer"]


#: Connections kept waiting for their first insert while the database is down; beyond it
#: the oldest are dropped (with a log line) rather than growing without bound.
MAX_PENDING = 100_000
#: While flushes keep failing, the error is logged again at most this often (seconds).
ERROR_LOG_INTERVAL = 60.0
#: Seconds the exit handler waits for a last flush of closed connections.
EXIT_FLUSH_TIMEOUT = 3.0
#: Seconds between two looks for subscriptions of another process (``memory`` backend).
SHARING_CHECK_INTERVAL = 10.0


class PersistenceWriter:
    """Registry observer that keeps this process's rows of :class:`StreamConnection`.

    Subscribed by ``AppConfig.ready()``. Tests drive it with :meth:`flush`, :meth:`paused`
    and :meth:`reset`.
    """

    def __init__(self, registry: Registry = registry) -> None:
        self._registry = registry
        self._init_state()
        _WRITERS.add(self)

    def _init_state(self) -> None:
        # Also the after-fork reset: a lock held by a thread of the parent would never be
        # released in the child, so every lock and event is new.
        self._pid = os.getpid()
        self._lock = threading.Lock()  # the dicts below and _thread
        self._flushing = threading.Lock()  # one flush at a time (thread or flush())
        self._pending: dict[str, Connection] = {}  # opened, no row yet
        self._finished: dict[str, Connection] = {}  # closed, row not closed yet
        self._open: dict[str, OpenRow] = {}
        # Every connection this writer owes a closed row, from its open notification until
        # that row is written: a close that arrives while its insert is in flight (neither
        # pending nor open) must not be dropped, or the row would stay open for ever.
        self._tracked: set[str] = set()
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._paused = False
        self._claimed = False
        self._last_flush = 0.0
        self._last_lost_check = 0.0
        self._last_retention = 0.0
        self._failing_since: float | None = None
        self._last_error_log = 0.0
        self._dropped = 0
        self._last_sharing_check = 0.0

    # -- registry notifications (streaming path: no I/O) -----------------------------------
    def connection_opened(self, connection: Connection) -> None:
        if not get_config().persistence:
            return
        if self._pid != os.getpid():
            self._init_state()
        with self._lock:
            if len(self._pending) >= MAX_PENDING:
                oldest = next(iter(self._pending))
                del self._pending[oldest]
                self._tracked.discard(oldest)
                self._dropped += 1
            self._pending[connection.id] = connection
            self._tracked.add(connection.id)
            self._ensure_thread()
        self._wake.set()

    def connection_closed(self, connection: Connection) -> None:
        with self._lock:
            if connection.id not in self._tracked:
                return  # opened while persistence was off, or dropped
            self._finished[connection.id] = connection
            self._ensure_thread()
        self._wake.set()

    def connection_rejected(self, stream: str, reason: str) -> None:
        """Rejected requests never became connections: no row (metrics count them)."""

    # -- control -----------------------------------------------------------------------
    def flush(self) -> None:
        """Write what is pending, then act on stop requests and lost rows (synchronous)."""
        if self._pid != os.getpid():
            self._init_state()
        with self._flushing:
            self._last_flush = time.monotonic()
            if not self._write():
                return
            if time.monotonic() - self._last_retention >= _retention.INTERVAL:
                self._last_retention = time.monotonic()
                self.apply_retention()
            self._poll_stop_requests()
            config = get_config()
            if time.monotonic() - self._last_lost_check >= min(
                config.lost_after / 4, max(config.flush_interval, 5.0)
            ):
                self._last_lost_check = time.monotonic()
                with contextlib.suppress(Exception):  # logged inside; retried next time
                    close_lost()
            if time.monotonic() - self._last_sharing_check >= SHARING_CHECK_INTERVAL:
                self._last_sharing_check = time.monotonic()
                self.check_broadcast_sharing()

    def apply_retention(self) -> int:
        """Delete history rows past ``RETENTION_DAYS`` / ``RETENTION_ROWS`` (a bounded
        pass: ``_retention``) and activity rows the dashboard no longer shows."""
        try:
            pruned = _retention.prune_history(objects(), get_config())
            _retention.prune_activity(StreamActivity.objects.using(db()), time.time())
        except Exception as exc:
            self._log_failure(exc)
            return 0
        if pruned.more:  # a backlog (a flood, or a lower bound just set): go on soon
            self._last_retention = 0.0
        return pruned.deleted

    def check_broadcast_sharing(self) -> None:
        """Warn when this process streams subscriptions of the ``memory`` broadcast backend
        while another process does too: each process hears only its own publishes.

        The cheapest place to look: this flush already reads and writes open rows; it looks
        only while this process has a subscribed connection (so its backend exists), with
        one indexed query for the other processes' open subscribed rows.
        """
        with self._lock:
            subscribed = any(row.connection.topics for row in self._open.values())
        if not subscribed or broadcast_shared():
            return
        try:
            others = subscribed_processes(exclude=current_process())
        except Exception as exc:
            self._log_failure(exc)
            return
        if others:
            warn_unshared_broadcast([current_process(), *others])

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Keep the thread from flushing (tests prove the streaming path makes no query)."""
        self._paused = True
        try:
            yield
        finally:
            self._paused = False

    def reset(self) -> None:
        """Forget pending work and stop the thread (tests)."""
        self.close()
        with self._lock:
            self._pending.clear()
            self._finished.clear()
            self._open.clear()
            self._tracked.clear()
            self._claimed = False
            self._last_lost_check = 0.0
            self._last_retention = 0.0
            self._last_sharing_check = 0.0
        forget_warnings()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread (it is started again by the next connection)."""
        with self._lock:
            thread, self._thread = self._thread, None
            self._stop.set()
            self._wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    # -- the thread ----------------------------------------------------------------------
    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            if not _EXIT_HOOK:
                _EXIT_HOOK.append(atexit.register(_flush_at_exit))
            self._stop = threading.Event()
            self._thread = threading.Thread(
                target=self._run, args=(self._stop,), name="flosse-persistence", daemon=True
            )
            self._thread.start()

    def _run(self, stop: threading.Event) -> None:
        try:
            self._loop(stop)
        finally:
            # The thread stops when idle or asked to; a connection it left open would be
            # closed only by the garbage collector (Python 3.13 warns: "unclosed database").
            connections.close_all()

    def _loop(self, stop: threading.Event) -> None:
        while not stop.is_set():
            interval = get_config().flush_interval
            # Flush on the first change after a quiet period, and at least every interval
            # (to refresh open rows), but never twice within one interval.
            self._wake.wait(interval)
            delay = self._last_flush + interval - time.monotonic()
            if stop.is_set() or (delay > 0 and stop.wait(delay)):
                return
            self._wake.clear()
            if not self._paused:
                try:
                    self.flush()
                except Exception:  # never let the thread die; flush logs its own errors
                    get_logger().exception(PERSISTENCE_ERROR, during="flush")
                finally:
                    _release_connections()
            with self._lock:
                if not (self._pending or self._finished or self._open or self._paused):
                    if self._thread is threading.current_thread():
                        self._thread = None
                    return  # started again by the next connection

    # -- one flush -----------------------------------------------------------------------
    def _write(self) -> bool:
        """Insert new rows, close finished ones, refresh open ones: all or nothing."""
        with self._lock:
            pending, self._pending = self._pending, {}
            finished, self._finished = self._finished, {}
            known = dict(self._open)
            dropped, self._dropped = self._dropped, 0
        if dropped:
            get_logger().error(PERSISTENCE_DROPPED, connections=dropped, limit=MAX_PENDING)
        # This process's changed traffic buckets, for the dashboards of other processes.
        buckets = activity.take_rows(time.time())
        if not (pending or finished or known or buckets or not self._claimed):
            return True
        now = timezone.now()
        me = current_process()
        # What the new rows hold at least, read before they are made: a change after this
        # (a subscription's topics, often set just after the open) differs from it, so the
        # next refresh writes it.
        seen = {connection_id: written(c) for connection_id, c in pending.items()}
        try:
            with transaction.atomic(using=db()):
                if not self._claimed:  # nothing of ours is written yet: none are ours
                    objects().filter(process=me, closed_at__isnull=True).update(
                        closed_at=F("last_seen_at"), close_reason=reasons.LOST
                    )
                inserted = insert_rows(pending, now)
                close_rows(finished, known, inserted)
                moved = refresh_rows(known, finished, me, now)
                if buckets:
                    write_activity(buckets, me)
        except Exception as exc:
            activity.give_back(buckets)
            with self._lock:
                self._pending = {**pending, **self._pending}
                self._finished = {**finished, **self._finished}
            self._log_failure(exc)
            return False
        with self._lock:
            self._claimed = True
            for connection_id in finished:
                self._open.pop(connection_id, None)
                self._tracked.discard(connection_id)
            self._open.update(moved)
            self._open.update(
                (c.id, OpenRow(c, pk, seen[c.id]))
                for c, pk, was_closed in inserted
                if not was_closed and c.id not in finished
            )
        if self._failing_since is not None:
            get_logger().info(
                PERSISTENCE_RECOVERED, after=round(time.monotonic() - self._failing_since, 1)
            )
            self._failing_since = None
        return True

    def _poll_stop_requests(self) -> None:
        """Stop the streams of this process whose rows ask for it (any process may ask)."""
        if not self._open:
            return
        try:
            requested = list(
                objects()
                .filter(process=current_process(), closed_at__isnull=True)
                .exclude(stop_requested="")
                .values_list("connection_id", "stop_requested")
            )
        except Exception as exc:
            self._log_failure(exc)
            return
        for connection_id, reason in requested:
            if reason not in reasons.CLOSE_REASONS:
                reason = reasons.TERMINATED
            self._registry.stop([connection_id], reason)

    def _log_failure(self, exc: BaseException) -> None:
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
        elif now - self._last_error_log < ERROR_LOG_INTERVAL:
            return
        self._last_error_log = now
        with self._lock:
            waiting = len(self._pending) + len(self._finished)
        get_logger().error(
            PERSISTENCE_ERROR,
            error=repr(exc),
            waiting=waiting,
            failing_for=round(now - self._failing_since, 1),
            exc_info=exc,
        )


def _release_connections() -> None:
    """Close this thread's connection after a flush, unless ``CONN_MAX_AGE`` keeps it."""
    try:
        close_old_connections()
    except Exception:  # a broken connection is dropped here, reopened next flush
        get_logger().warning(PERSISTENCE_ERROR, during="closing the connection", exc_info=True)


# -- one writer per process ------------------------------------------------------------

_WRITERS: weakref.WeakSet[PersistenceWriter] = weakref.WeakSet()
_EXIT_HOOK: list[Any] = []

#: The writer of this process (subscribed to the registry by ``AppConfig.ready()``).
writer = PersistenceWriter()


def _after_fork_in_child() -> None:
    for instance in list(_WRITERS):
        instance._init_state()


def _flush_at_exit() -> None:
    """Write the close of connections that ended during shutdown, but never hang the exit."""
    if os.getpid() != writer._pid or not (writer._pending or writer._finished):
        return
    thread = threading.Thread(target=writer.flush, name="flosse-persistence-exit", daemon=True)
    try:
        thread.start()
    except RuntimeError:  # Python 3.12.0 and 3.12.1 start no thread in an atexit handler
        writer.flush()  # pragma: no cover
        return  # pragma: no cover
    thread.join(EXIT_FLUSH_TIMEOUT)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
