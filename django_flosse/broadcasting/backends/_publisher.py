"""The database backend's ``apublish()``: one thread that stores on a connection it keeps.

Each async publish used to run on some executor thread that opened a connection, stored,
committed and closed it again: about 12 ms a publish on PostgreSQL, most of it the new
connection, which made a burst of ``abroadcast()`` calls publisher-bound (benchmark F2).
:class:`Publisher` is one thread per backend (per process), fed by a queue:

- **The connection is kept** while publishes come, and closed by the thread itself
  ``IDLE_SECONDS`` after the last one (the thread ends then; the next publish starts
  another). Django's settings keep their meaning, a batch (below) being the "request":
  ``CONN_MAX_AGE`` > 0 caps the connection's age, ``CONN_HEALTH_CHECKS`` checks it before a
  batch reuses it, and a connection whose errors made it unusable is closed. With
  ``CONN_MAX_AGE = 0`` (Django's default: one connection per request) a burst of publishes
  counts as one request: the idle time ends it.
- **Group commit**: the calls queued while the thread was busy (at most ``MAX_BATCH``) are
  stored in one transaction (on PostgreSQL one statement): one commit (one disk flush) and
  one notification per topic for the lot. Each topic's positions follow the call order;
  the store locks the topic rows in sorted order, so that two processes' batches never
  wait for each other in a cycle.
- **Failures reach their own caller.** A batch the database refuses for another reason than
  its connection (a draft PostgreSQL cannot store, such as text with a NUL character) is
  stored again call by call: only the bad call raises. A connection error fails every call
  of its batch with that error (nothing of it was published, unless the connection broke
  while committing: its outcome is unknown then, and never retried), and it is closed:
  the next publish opens a new one (PostgreSQL back after a restart). A kept connection
  the server ended while it was idle (a restart, an idle timeout) is replaced without
  failing the batch: a new connection per publish never showed that failure, a kept one
  must not either. On PostgreSQL a batch is one statement in autocommit (``_pgsql``), whose
  sending is its commit: the dead session is found before, without a round trip. On other
  databases the batch is tried once more if nothing of it was sent for commit.
- ``close()`` refuses new calls; the thread stores what was queued, closes its connection
  (from its own thread, as Django wants) and ends.
"""

from __future__ import annotations

import concurrent.futures
import selectors
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from django.db import InterfaceError, OperationalError, connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper

from .._messages import Draft

__all__ = ["IDLE_SECONDS", "MAX_BATCH", "Publisher"]

#: Seconds without a publish after which the thread closes its connection and ends.
IDLE_SECONDS = 5.0
#: Calls stored in one transaction at most (a longer batch would hold its row locks longer).
MAX_BATCH = 100
#: The thread's name (thread dumps, tests).
THREAD_NAME = "flosse-broadcast-publisher"

#: The errors of a connection rather than of a draft: the whole batch fails with them.
CONNECTION_ERRORS = (OperationalError, InterfaceError)


@dataclass(frozen=True, slots=True)
class _Call:
    drafts: Sequence[Draft]
    future: concurrent.futures.Future[None]


class Publisher:
    """Stores the calls of :meth:`submit` on database ``alias``: ``insert(drafts)`` runs
    inside a transaction the publisher opens, or on PostgreSQL in autocommit (it must be one
    statement there: its own transaction). ``closed()`` is the error once closed."""

    def __init__(
        self,
        alias: str,
        insert: Callable[[Sequence[Draft]], None],
        closed: Callable[[], Exception],
    ) -> None:
        self.alias = alias
        self._insert = insert
        self._closed_error = closed
        self._lock = threading.Lock()
        self._queued = threading.Condition(self._lock)
        self._calls: deque[_Call] = deque()
        self._taker: threading.Thread | None = None  # the thread that takes calls
        self._threads: set[threading.Thread] = set()  # started and not yet ended
        self._closed = False

    def submit(self, drafts: Sequence[Draft]) -> concurrent.futures.Future[None]:
        """Queue ``drafts`` (one call): the future is done when they are committed, or has
        the error that kept them out. Cancelling it before the thread takes the call
        leaves it unpublished."""
        future: concurrent.futures.Future[None] = concurrent.futures.Future()
        with self._lock:
            if self._closed:
                raise self._closed_error()
            self._calls.append(_Call(drafts, future))
            if self._taker is None:
                self._taker = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
                self._threads.add(self._taker)
                self._taker.start()
            else:
                self._queued.notify()
        return future

    def close(self, timeout: float) -> None:
        """Refuse new calls; wait up to ``timeout`` seconds for the queued ones to be
        stored and the thread to close its connection and end."""
        with self._lock:
            self._closed = True
            threads = list(self._threads)  # one that went idle may still be closing
            self._queued.notify()
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(timeout)

    # -- the thread ------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while calls := self._next_batch():
                self._serve(calls)
        finally:
            connections[self.alias].close()
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _next_batch(self) -> list[_Call]:
        """The calls queued (waiting up to ``IDLE_SECONDS`` for one), those cancelled
        meanwhile left out; none when the thread must end (idle, or closed and drained)."""
        while True:
            with self._lock:
                self._queued.wait_for(lambda: self._calls or self._closed, IDLE_SECONDS)
                if not self._calls:
                    self._taker = None  # the next submit starts a new thread
                    return []
                taken = [self._calls.popleft() for _ in range(min(MAX_BATCH, len(self._calls)))]
            running = [call for call in taken if call.future.set_running_or_notify_cancel()]
            if running:
                return running

    def _serve(self, calls: list[_Call]) -> None:
        try:
            self._store([draft for call in calls for draft in call.drafts])
        except Exception as exc:
            if len(calls) > 1 and not isinstance(exc, CONNECTION_ERRORS):
                for call in calls:  # one bad draft must not take the others down
                    self._serve([call])
                return
            for call in calls:
                call.future.set_exception(exc)
        else:
            for call in calls:
                call.future.set_result(None)

    def _store(self, drafts: list[Draft]) -> None:
        connection = connections[self.alias]
        _start_of_request(connection)
        if connection.vendor == "postgresql":
            self._store_in_one_statement(connection, drafts)
            return
        for retry in (True, False):
            kept = connection.connection  # None: this attempt opens one
            committing = False
            try:
                with transaction.atomic(using=self.alias):
                    self._insert(drafts)
                    committing = True
                return
            except CONNECTION_ERRORS:
                # A failed rollback makes Django drop the connection and open a new one
                # on the way out; one that is still the broken one is closed here.
                if connection.connection is kept:
                    connection.close()
                # Nothing was sent for commit, so nothing was stored: a kept connection
                # that died while idle gets one more try. A new one that fails, or a failed
                # commit (its outcome unknown), is the caller's error.
                if committing or kept is None or not retry:
                    raise

    def _store_in_one_statement(self, connection: BaseDatabaseWrapper, drafts: list[Draft]) -> None:
        """PostgreSQL: ``insert`` is one statement in autocommit (see ``_pgsql``), so sending
        it is committing it, and a connection error leaves its outcome unknown: the caller's
        error, never retried. A kept session the server ended while idle is found before
        sending, without a round trip: its socket has something to read (the server's
        goodbye, or its end) where an idle session has nothing."""
        if connection.connection is not None and _has_input(connection.connection):
            connection.close()  # the next query opens a new one
        try:
            self._insert(drafts)
        except CONNECTION_ERRORS:
            connection.close()
            raise


def _has_input(raw: Any) -> bool:
    """Whether the idle database session ``raw`` has something to read (or is gone)."""
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(raw.fileno(), selectors.EVENT_READ)
            return bool(selector.select(0))
    except (OSError, ValueError):  # a closed socket
        return True


def _start_of_request(connection: BaseDatabaseWrapper) -> None:
    """What Django does to a persistent connection when a request starts (see the module
    docstring for ``CONN_MAX_AGE = 0``)."""
    if connection.connection is None:
        return
    if connection.settings_dict["CONN_MAX_AGE"] == 0:
        connection.close_at = None  # not "past its age" at once: the idle time ends it
    connection.close_if_unusable_or_obsolete()
