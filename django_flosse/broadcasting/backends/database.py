"""The ``database`` backend (the default): the history in the project's own database.

**Publishing** (any process: a view, a Celery task, ``manage.py``) runs one transaction per
call on ``BROADCAST_DATABASE`` (``broadcast()``: the caller's connection; ``abroadcast()``:
the connection the publisher thread keeps, which may group the calls queued meanwhile into
one transaction, see ``_publisher``): per event, it increments the topic's row in
``BroadcastTopic``, reads the new position back and inserts the event into
``BroadcastMessage``. The UPDATE comes first on purpose: it takes the row lock
(PostgreSQL) or the database's write lock (SQLite) before the position is read, so two
publishers of one topic are serialised and their positions commit in position order. A
reader that has seen position 12 can therefore never miss a late 11, which a plain
auto-increment id would allow (ids are handed out at insert, transactions commit in any
order). On PostgreSQL the same work is one statement (``_pgsql``: one round trip, its own
transaction in autocommit), which also runs ``pg_notify`` (see ``_pglisten``).

**Reading** is one thread per process, started by the first subscriber. It is the only
thread that touches the fan-out, and it serves requests (join, leave, read) and deliveries
one after the other, which is what makes ``join`` exact (see ``base``). Each round it:

1. answers joins: it first catches up on the subscriber's topics (so that the cut is not
   behind any id a process gave out before), a topic it does not track yet starts at its
   row's position (0 when it has none); the cut is where the reader has delivered up to.
   A join that needs no query (its topics tracked, the reader at or past where the client
   stands: the common case) does not wait for a round: it takes its cut on the calling
   thread, under the lock the reader holds while it hands events to the fan-out;
2. answers history reads, one query per (topic, position) however many subscribers of this
   process asked for it, and keeps each page a few seconds for the next subscriber at its
   position (``base.KeptPages``): a reconnect storm after a deploy costs one read per
   position, not thousands;
3. polls: the positions of the topics it tracks (the rung ones only, between two full polls
   every ``BROADCAST_POLL_INTERVAL``), and for those that moved, the new events in order,
   handed to the fan-out.

What rings it: a publish in this process (at once), a PostgreSQL notification (at once), or
the poll interval (every other database, and PostgreSQL's safety net for a missed
notification). A database error costs a log line per outage and a retry with a growing
delay; the subscribers stay, and catch up from where the reader was.

**Trimming**: when a topic's position reaches a multiple of ``TRIM_EVERY``, the publish also
deletes that topic's events older than its last ``BROADCAST_HISTORY``, and every event
older than ``BROADCAST_HISTORY_SECONDS`` (on PostgreSQL outside a transaction: after the
publish committed, a failure logged and left to the next trim). Topic rows are kept for
ever: a position is never reused, so an old id can never name a different event.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

from django.db import NotSupportedError, connections

from ...conf import Config
from ...observing.log import BROADCAST_BACKEND_ERROR, get_logger
from .._messages import Draft, Message
from ._outage import Outage
from ._pglisten import Listener, listen_params
from ._publisher import Publisher
from ._store import TRIM_EVERY, insert, models, store, store_and_close
from .base import PAGE_SIZE, Backend, Fanout, KeptPages, Page, Subscriber, done, join_at_once

__all__ = ["TRIM_EVERY", "DatabaseBackend"]

#: Topics per query when the reader reads positions.
TOPICS_PER_QUERY = 500
#: Seconds ``close()`` waits for each thread.
STOP_TIMEOUT = 5.0


class DatabaseBackend(Backend):
    name = "database"
    zero = 0

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.alias = config.broadcast_database
        self._publisher = Publisher(self.alias, lambda d: insert(self.alias, d, config), _closed)
        self._lock = threading.Lock()  # the requests below, and starting the threads
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._joins: list[tuple[Subscriber, concurrent.futures.Future[dict[str, Any]]]] = []
        self._leaves: list[Subscriber] = []
        self._reads: dict[tuple[str, int], concurrent.futures.Future[Page]] = {}
        self._kept = KeptPages()  # pages read lately, for the next resume at their position
        self._rung: set[str] = set()
        self._rung_all = False
        self._thread: threading.Thread | None = None
        self._listener: Listener | None = None
        # Changed by the reader thread only, under this lock; a join at once reads them and
        # adds its subscriber under it too (see join()).
        self._fanout_lock = threading.Lock()
        self._fanout = Fanout()
        self._members: dict[Subscriber, None] = {}  # every subscriber joined and not left
        self._positions: dict[str, int] = {}  # delivered up to, per tracked topic
        self._last_full_poll = 0.0

    # -- ids ---------------------------------------------------------------------------
    @property
    def tag(self) -> str:
        return "d"

    def format_position(self, position: Any) -> str:
        return str(position)

    def parse_position(self, text: str) -> Any:
        # isdigit() alone takes "²" (int() refuses it) and Arabic-Indic digits (int() reads them).
        return int(text) if text.isascii() and text.isdigit() and len(text) <= 18 else None

    # -- publishing ----------------------------------------------------------------------
    def publish(self, drafts: Sequence[Draft], *, independent: bool = False) -> None:
        if not drafts:
            return
        if independent:
            self._publish_independently(drafts)
        else:
            store(self.alias, drafts, self.config)
        self._ring(draft.topic for draft in drafts)

    async def apublish(self, drafts: Sequence[Draft]) -> None:
        """Stored by the publisher thread, on the connection it keeps (see ``_publisher``)."""
        if not drafts:
            return
        await asyncio.wrap_future(self._publisher.submit(drafts))
        self._ring(draft.topic for draft in drafts)

    def _publish_independently(self, drafts: Sequence[Draft]) -> None:
        """Publish outside the caller's transaction: on a connection of its own, which a
        thread of its own gets from Django (the caller's thread already has one)."""
        caller = connections[self.alias]
        if caller.vendor == "sqlite" and caller.in_atomic_block:
            # SQLite has one writer: a second connection would wait for the caller's
            # transaction, which waits for this call (until the busy timeout, then fails).
            raise NotSupportedError(
                "broadcast(..., on_commit=False) cannot publish from inside atomic() on "
                "SQLite: the transaction holds (or may take) the only write lock. Publish "
                "on commit (the default), after the block, or use PostgreSQL."
            )
        failure: list[BaseException] = []

        def run() -> None:
            try:
                store_and_close(self.alias, drafts, self.config)
            except BaseException as exc:
                failure.append(exc)

        thread = threading.Thread(target=run, name="flosse-broadcast-publish")
        thread.start()
        thread.join()
        if failure:
            raise failure[0]

    # -- requests to the reader ------------------------------------------------------------
    def join(self, subscriber: Subscriber) -> concurrent.futures.Future[dict[str, Any]]:
        cut = self._join_at_once(subscriber)
        if cut is not None:
            return done(cut)
        future: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()
        with self._lock:
            if self._stop.is_set():
                future.set_exception(_closed())
                return future
            self._joins.append((subscriber, future))
            self._start()
        self._wake.set()
        return future

    def _join_at_once(self, subscriber: Subscriber) -> dict[str, Any] | None:
        """Join on the calling thread when the reader needs no query for the cut: it tracks
        every topic of ``subscriber`` and has delivered each at least up to where the client
        stands (a round catches up first only so that the cut is not behind the client's
        id). ``None`` otherwise: the reader serves the join.

        Why: a join through the reader is a thread hop each way, and the hop back waits
        for the caller's event loop. While that loop sends a reconnect storm's replays it
        took about 10 ms, and a new client got its first event 10 to 37 times later than
        on an idle server.
        """
        positions, stands = self._positions, subscriber.resumes_at or {}

        def can_join() -> bool:
            return not self._stop.is_set() and all(
                topic in positions and stands.get(topic, self.zero) <= positions[topic]
                for topic in subscriber.topics
            )

        return join_at_once(
            self._fanout_lock, self._fanout, self._members, positions, subscriber, can_join
        )

    def leave(self, subscriber: Subscriber) -> None:
        with self._lock:
            self._leaves.append(subscriber)  # served at the next round: no need to wake

    def read(self, topic: str, after: Any, upto: Any) -> concurrent.futures.Future[Page]:
        kept = self._kept.get(topic, after, upto)
        if kept is not None:
            return done(kept)
        with self._lock:
            if self._stop.is_set():
                failed: concurrent.futures.Future[Page] = concurrent.futures.Future()
                failed.set_exception(_closed())
                return failed
            future = self._reads.get((topic, after))
            if future is None:  # the same future for every subscriber at this position
                future = self._reads[topic, after] = concurrent.futures.Future()
            self._start()
        self._wake.set()
        return future

    def _ring(self, topics: Iterable[str | None]) -> None:
        """Something happened to ``topics`` (``None``: maybe to any): look now."""
        with self._lock:
            if self._thread is None:
                return  # no subscriber in this process
            for topic in topics:
                if topic is None:
                    self._rung_all = True
                else:
                    self._rung.add(topic)
        self._wake.set()

    def _start(self) -> None:
        """Start the reader (and the listener on PostgreSQL); called under the lock."""
        if self._thread is not None or self._stop.is_set():
            return
        self._thread = threading.Thread(target=self._run, name="flosse-broadcast-reader")
        self._thread.daemon = True
        self._thread.start()

    def close(self) -> None:
        with self._lock:
            self._stop.set()
            thread = self._thread
        self._wake.set()
        self._publisher.close(STOP_TIMEOUT)
        if thread is not None and thread is not threading.current_thread():
            thread.join(STOP_TIMEOUT)

    # -- the reader thread -----------------------------------------------------------------
    def _run(self) -> None:
        outage = Outage("reader")
        try:
            self._listen()
            while not self._stop.is_set():
                try:
                    queried = self._round()
                except Exception as exc:  # the subscribers stay; the next round goes on
                    with contextlib.suppress(Exception):
                        connections[self.alias].close()  # a broken one is opened anew
                    self._stop.wait(outage.failed(exc))
                    continue
                if queried:  # a round with nothing to ask proves nothing about the database
                    outage.ok()
                self._wake.wait(self.config.broadcast_poll_interval)
                self._wake.clear()
        finally:
            self._shut_down()

    def _listen(self) -> None:
        connection = connections[self.alias]
        if connection.vendor != "postgresql":
            return
        try:
            import psycopg

            version = tuple(int(part) for part in psycopg.__version__.split(".")[:2])
        except (ImportError, ValueError):
            version = (0, 0)
        if version < (3, 2):  # notifies(timeout=...) came with 3.2
            get_logger().warning(
                BROADCAST_BACKEND_ERROR,
                part="listener",
                error="LISTEN needs psycopg 3.2 or later; polling only",
            )
            return
        conninfo, params = listen_params(connection, self.config.broadcast_listen_url)
        self._listener = Listener(conninfo, params, lambda topic: self._ring((topic,)))

    def _shut_down(self) -> None:
        if self._listener is not None:
            self._listener.close(STOP_TIMEOUT)
        with self._lock:
            joins, self._joins = self._joins, []
            reads, self._reads = self._reads, {}
        for _subscriber, joined in joins:
            joined.set_exception(_closed())
        for future in reads.values():
            future.set_exception(_closed())
        with self._fanout_lock:  # after it, no join at once adds a member (_stop is set)
            members = list(self._members)
        for subscriber in [*members, *(s for s, _ in joins)]:
            subscriber.close()  # their streams end instead of waiting for ever
        connections[self.alias].close()

    def _round(self) -> bool:
        """One round (see the module docstring); whether it asked the database anything."""
        with self._lock:
            joins, self._joins = self._joins, []
            leaves, self._leaves = self._leaves, []
            reads = dict(self._reads)
            rung, self._rung = self._rung, set()
            rung_all, self._rung_all = self._rung_all, False
        try:
            self._serve_leaves(leaves)
            self._serve_joins(joins)
        except BaseException:
            with self._lock:  # answered at the next round
                self._joins[:0] = [(s, f) for s, f in joins if not f.done()]
            raise
        self._serve_reads(reads)
        now = time.monotonic()
        self._kept.expire()
        if rung_all or now - self._last_full_poll >= self.config.broadcast_poll_interval:
            self._last_full_poll = now
            with self._fanout_lock:
                self._fanout.sweep()
                self._forget_closed()
            polled = list(self._positions)
        else:
            polled = [topic for topic in rung if topic in self._positions]
        self._poll(polled)
        return bool(joins or reads or polled)

    def _serve_leaves(self, leaves: list[Subscriber]) -> None:
        if not leaves:
            return
        with self._fanout_lock:
            for subscriber in leaves:
                self._fanout.remove(subscriber)
                self._members.pop(subscriber, None)
            self._forget_closed()

    def _forget_closed(self) -> None:
        """Under ``_fanout_lock``."""
        for subscriber in [s for s in self._members if s.closed]:
            self._fanout.remove(subscriber)
            del self._members[subscriber]
        needed = set(self._fanout.topics())
        for topic in [t for t in self._positions if t not in needed]:
            del self._positions[topic]

    def _serve_joins(self, joins: list[tuple[Subscriber, Any]]) -> None:
        wanted = {t for subscriber, _ in joins for t in subscriber.topics}
        # Catch up on the tracked ones first: the cut must not be behind an id that another
        # process has already given out (a client reconnecting to this process with it
        # would look ahead of the history and get a reset).
        self._poll(sorted(wanted & self._positions.keys()))
        new = wanted - self._positions.keys()
        heads = self._heads(sorted(new)) if new else {}
        with self._fanout_lock:
            for topic in new:
                self._positions[topic] = heads.get(topic, 0)
            for subscriber, _future in joins:
                self._fanout.add(subscriber)
                self._members[subscriber] = None
        for subscriber, future in joins:
            future.set_result({topic: self._positions[topic] for topic in subscriber.topics})

    def _serve_reads(self, reads: dict[tuple[str, int], concurrent.futures.Future[Page]]) -> None:
        for (topic, after), future in reads.items():
            page = self._read(topic, after)
            self._kept.keep(topic, after, page)
            with self._lock:
                del self._reads[topic, after]  # a later read at this position asks again
            future.set_result(page)

    def _read(self, topic: str, after: int) -> Page:
        messages = self._messages(topic, after, PAGE_SIZE)
        if messages and messages[0].position == after + 1:
            return Page(messages, complete=True)
        if messages:  # positions have no holes: the ones before were trimmed
            return Page((), complete=False)
        # Nothing after it: complete if the topic has not moved past it. If it has (a
        # publish since the first query), read once more.
        if self._heads([topic]).get(topic, 0) <= after:
            return Page((), complete=True)
        messages = self._messages(topic, after, PAGE_SIZE)
        complete = bool(messages) and messages[0].position == after + 1
        return Page(messages if complete else (), complete)

    def _poll(self, topics: list[str]) -> None:
        """Hand the new events of ``topics`` to the fan-out, in order."""
        for start in range(0, len(topics), TOPICS_PER_QUERY):
            heads = self._heads(topics[start : start + TOPICS_PER_QUERY])
            for topic, head in heads.items():
                while self._positions.get(topic, head) < head:
                    after = self._positions[topic]
                    messages = self._messages(topic, after, PAGE_SIZE)
                    if not messages:
                        break  # trimmed meanwhile; caught at the next poll
                    with self._fanout_lock:  # a join at once sees both or neither
                        if messages[0].position != after + 1:
                            self._lost(topic)
                        self._fanout.deliver(messages)
                        self._positions[topic] = messages[-1].position

    def _lost(self, topic: str) -> None:
        """Events of ``topic`` were trimmed before this reader saw them: its subscribers
        catch up from the history, as if their queues had overflowed (they get a reset).
        Under ``_fanout_lock``."""
        dropped = []
        for subscriber in self._members:
            if topic in subscriber.topics and not subscriber.overflowed:
                subscriber.overflowed = True
                self._fanout.remove(subscriber)
                dropped.append(subscriber)
        Fanout.wake(dropped)

    # -- queries (reader thread) -------------------------------------------------------------
    def _heads(self, topics: list[str]) -> dict[str, int]:
        topic_model, _ = models()
        rows = topic_model.objects.using(self.alias).filter(topic__in=topics)
        return dict(rows.values_list("topic", "position"))

    def _messages(self, topic: str, after: int, limit: int) -> list[Message]:
        _, message_model = models()
        rows = (
            message_model.objects.using(self.alias)
            .filter(topic=topic, position__gt=after)
            .order_by("position")
            .values_list("position", "body", "published_at")[:limit]
        )
        return [Message(topic, position, body.encode(), at) for position, body, at in rows]

    def subscribers(self, topic: str) -> int:
        """Subscribers of ``topic`` in this process (approximate: read without the reader)."""
        return self._fanout.subscribers(topic)


def _closed() -> RuntimeError:
    return RuntimeError("this broadcast backend was closed (the settings changed)")
