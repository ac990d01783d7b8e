"""The ``redis`` backend: Redis Streams, one per topic, through redis-py's asyncio client.

Every topic is a stream (key ``flosse:topic:<topic>``); a position is the entry id Redis
gives an event, as an ``(ms, seq)`` tuple, ordered like the stream. Redis 7 or later.

**One loop thread per process.** Every Redis command of this process runs on one asyncio
loop in a daemon thread, on one ``redis.asyncio`` client (a client belongs to the loop that
made it; the callers' loops can be short-lived, ``async_to_sync`` makes one per call, and a
client per loop would leak its connections), whose pool holds at most ``MAX_CONNECTIONS``.
``publish`` waits for the loop in the calling thread, ``apublish`` awaits it; both cost two
thread hops, not a connection. On that loop, the reader is the only code that changes the
:class:`Fanout` and its positions (joins, leaves and deliveries run one at a time there,
each under one lock): that is what makes ``join`` exact. A join whose topics the reader
follows already needs nothing from Redis: it takes its cut on the calling thread, under
that lock, without the two hops.

**The reader** ``XREAD BLOCK``s on the streams of the topics this process's subscribers
need, from its own position in each; a topic new to the process starts at the stream's last
id at join time (``(0, 0)`` when the stream does not exist yet). When a join brings a new
topic, the blocked read is cancelled and issued again with the new stream. redis-py closes
the connection of a cancelled command, so this costs one reconnect per new topic (well
under a millisecond on a LAN); the alternatives are worse: a short block timeout delays a
new topic's first events by up to that timeout and polls when idle, and ``CLIENT UNBLOCK``
from another connection can reach Redis before the read it means to unblock. Cancelling is
safe because reading a stream has no side effect: the read is simply made again.

**The epoch.** A Redis restarted without persistence (or ``FLUSHALL``) has lost every
stream, and new ids may even repeat old ones. The key ``flosse:epoch`` holds a short random
value, set by whichever process first finds it missing; ids carry it in their tag
(``r<epoch>``), so ids of an earlier life no longer parse and the client gets
``flosse-reset``. The reader reads the key with every ``XREAD`` (same round trip, in one
pipeline); when it changed, the subscribers of this process are closed (their streams end,
the clients reconnect with an id of the old life and get ``flosse-reset``), because what
they were following is gone.

**Publishing**: one ``MULTI`` per call (several drafts in order, atomic), ``XADD ... MAXLEN
~ BROADCAST_HISTORY`` (an approximate trim keeps at least that many), then per topic
``XTRIM MINID ~`` for ``BROADCAST_HISTORY_SECONDS`` (Redis takes one of MAXLEN and MINID
per XADD) and ``EXPIRE`` of the same length, so the stream of a topic nobody publishes to
any more (a per-user topic) goes away. Commands are not retried: a retry after a timeout
could publish twice. A failure raises.

**Outages**: the reader reconnects with backoff and logs ``sse.broadcast.backend_error``
once per outage (and ``recovered_after`` once it is over, see ``_outage``); subscribers
stay registered and resume from the reader's positions when Redis is back (if Redis kept
its data; otherwise the epoch changed, see above).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import math
import re
import secrets
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from django.core.exceptions import ImproperlyConfigured

from ...conf import Config
from ...observing.log import BROADCAST_BACKEND_ERROR, get_logger
from .._messages import Draft, Message
from ._loop import LoopThread, cancel_surely
from ._outage import BACKOFF, Outage
from .base import (
    KEEP_PAGES_SECONDS,
    PAGE_SIZE,
    Backend,
    Fanout,
    KeptPages,
    Page,
    Subscriber,
    done,
    join_at_once,
)

__all__ = ["RedisBackend"]

Position = tuple[int, int]
T = TypeVar("T")

KEY_PREFIX = "flosse:topic:"
EPOCH_KEY = "flosse:epoch"
#: Milliseconds one XREAD blocks: how long a FLUSHALL may go unnoticed by an idle reader.
BLOCK_MS = 2000
#: Seconds a command may take before it fails (longer than BLOCK_MS); also how long a
#: command waits for a free connection of the pool.
COMMAND_TIMEOUT = 10.0
#: Connections to Redis per process at most: the reader's blocked XREAD, and the others
#: shared by publishes, joins and history reads.
MAX_CONNECTIONS = 16
#: Seconds between two sweeps of closed subscribers from quiet topics.
SWEEP_SECONDS = 5.0
#: Seconds ``close()`` waits for the loop thread.
CLOSE_TIMEOUT = 10.0

_ID = re.compile(r"([0-9]{1,20})-([0-9]{1,20})\Z")
_MAX = 2**64 - 1


def _parse_id(text: str | bytes | None) -> Position | None:
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    match = _ID.match(text) if text else None
    if match is None:
        return None
    ms, seq = int(match[1]), int(match[2])
    return (ms, seq) if ms <= _MAX and seq <= _MAX else None


def _format_id(position: Position) -> str:
    return f"{position[0]}-{position[1]}"


def _key(topic: str) -> str:
    return KEY_PREFIX + topic


def _entry(topic: str, position: Position, fields: dict[bytes, bytes]) -> Message:
    return Message(topic, position, fields[b"b"], float(fields[b"t"]))


def _redacted(url: str) -> str:
    """``url`` without its password (it goes into logs and error messages)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[2]}"))


def _complete(info: dict[str, Any] | None, after: Position) -> bool:
    """Whether the stream still holds every entry that was ever added after ``after``.

    Trimming removes the oldest entries and Redis 7 records the largest id it removed
    (``max-deleted-entry-id``): if that is past ``after``, an entry after ``after`` is gone.
    A stream that vanished (lost by Redis, or expired: idle for ``BROADCAST_HISTORY_SECONDS``)
    cannot place any position but zero; one that was made again starts empty of deletions,
    but its first entry is past ``after`` although ``after`` came from this topic (every
    position but zero was an entry of the stream): that is a new life too.
    """
    if info is None:
        return after == (0, 0)
    first = info.get("first-entry")
    first_id = _parse_id(first[0]) if first else None
    max_deleted = _parse_id(info.get("max-deleted-entry-id"))
    if max_deleted is None:  # Redis 6: only when the first entry is at or before ``after``
        last = _parse_id(info.get("last-generated-id")) or (0, 0)
        return last <= after or (first_id is not None and first_id <= after)
    if max_deleted > after:
        return False
    if after != (0, 0) and max_deleted == (0, 0):
        return first_id is not None and first_id <= after
    return True


def _import_redis() -> Any:
    try:
        import redis.asyncio
        import redis.asyncio.retry
        import redis.backoff
    except ImportError as exc:
        raise ImproperlyConfigured(
            "FLOSSE['BROADCAST_BACKEND'] = 'redis' needs redis-py: pip install django-flosse[redis]"
        ) from exc
    return redis


class RedisBackend(Backend):
    name = "redis"
    zero = (0, 0)

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self._redis = _import_redis()
        self._where = _redacted(config.broadcast_redis_url)
        self._thread = LoopThread(
            "flosse-broadcast-redis", setup=self._setup, main=self._run, cleanup=self._cleanup
        )
        self._epoch: str | None = None
        # Whether ``_epoch`` was read from Redis since its last failure: a Redis back from
        # an outage may have lost its data, and nothing may be placed by the old positions
        # (a join at once, say) before the epoch is read again.
        self._epoch_checked = False
        # Shared history reads in flight, by (topic, after).
        self._reads_lock = threading.Lock()
        self._reads: dict[tuple[str, Position], concurrent.futures.Future[Page]] = {}
        self._kept = KeptPages()  # pages read lately, for the next resume at their position
        # The rest belongs to the loop thread. It changes these three under the lock; a
        # join at once (on the caller's thread) reads them and adds its subscriber under it.
        self._fanout_lock = threading.Lock()
        self._fanout = Fanout()
        self._members: dict[Subscriber, None] = {}
        self._positions: dict[str, Position] = {}
        self._client: Any = None
        self._reading: asyncio.Future[Any] | None = None
        self._wake: asyncio.Event | None = None
        self._stopping = False
        self._outage = Outage("reader", backend=self.name, url=self._where)

    # -- ids -----------------------------------------------------------------------------
    @property
    def tag(self) -> str:
        epoch = self._epoch
        if epoch is None:
            epoch = self._wait(self._submit(self._known_epoch), "reach")
        return "r" + epoch

    def known_tag(self) -> str | None:
        # A process whose first subscriber comes during an outage has no epoch yet: its
        # subscriptions learn it from their join, which waits for Redis.
        epoch = self._epoch
        return None if epoch is None else "r" + epoch

    def format_position(self, position: Any) -> str:
        return _format_id(position)

    def parse_position(self, text: str) -> Any:
        return _parse_id(text) if len(text) <= 41 else None

    # -- publishing ----------------------------------------------------------------------
    def publish(self, drafts: Sequence[Draft], *, independent: bool = False) -> None:
        if drafts:
            self._wait(self._submit(lambda: self._add(drafts)), "publish to")

    async def apublish(self, drafts: Sequence[Draft]) -> None:
        if not drafts:
            return
        try:
            await asyncio.wrap_future(self._submit(lambda: self._add(drafts)))
        except (self._redis.ConnectionError, self._redis.TimeoutError, OSError) as exc:
            raise self._failure(exc, "publish to") from exc

    async def _add(self, drafts: Sequence[Draft]) -> None:
        config = self.config
        seconds = config.broadcast_history_seconds
        oldest = _format_id((max(0, int((time.time() - seconds) * 1000)), 0))
        pipe = self._client.pipeline(transaction=True)
        keys: dict[str, None] = {}
        for draft in drafts:
            key = _key(draft.topic)
            fields = {"b": draft.body, "t": repr(draft.published_at)}
            pipe.xadd(key, fields, maxlen=config.broadcast_history, approximate=True)
            keys[key] = None
        for key in keys:
            pipe.xtrim(key, minid=oldest, approximate=True)
            pipe.expire(key, max(1, math.ceil(seconds)))
        await pipe.execute()

    # -- subscribing ---------------------------------------------------------------------
    def join(self, subscriber: Subscriber) -> concurrent.futures.Future[dict[str, Any]]:
        cut = self._join_at_once(subscriber)
        if cut is not None:
            return done(cut)
        return self._submit(lambda: self._join(subscriber))

    def _join_at_once(self, subscriber: Subscriber) -> dict[str, Any] | None:
        """Join on the calling thread when the reader follows every topic of ``subscriber``
        already (the join then asks Redis nothing); ``None`` otherwise.

        Why: through the loop thread a join is a hop there and a hop back to the caller's
        event loop, and while that loop sends a reconnect storm's replays the hop back took
        about 10 ms (a new client's first event 10 to 37 times later than on an idle server).
        """
        positions = self._positions

        def can_join() -> bool:
            return (
                not self._stopping
                and self._epoch_checked
                and all(topic in positions for topic in subscriber.topics)
            )

        return join_at_once(
            self._fanout_lock, self._fanout, self._members, positions, subscriber, can_join
        )

    async def _join(self, subscriber: Subscriber) -> dict[str, Any]:
        return await self._when_reachable(lambda: self._join_now(subscriber), subscriber)

    async def _join_now(self, subscriber: Subscriber) -> dict[str, Any]:
        if not self._epoch_checked:
            await self._known_epoch()
        heads: dict[str, Position] = {}
        while True:  # a topic may be dropped by the reader while we wait for the others
            missing = [t for t in subscriber.topics if t not in self._positions and t not in heads]
            if not missing:
                break
            found = await self._heads(missing)
            if found is None:  # Redis lost its data: the positions read so far too
                heads.clear()
                continue
            heads.update(found)
        # No await from here on: the cut and the registration happen between two deliveries.
        new = False
        with self._fanout_lock:
            for topic in subscriber.topics:
                if topic not in self._positions:
                    self._positions[topic] = heads[topic]
                    new = True
            self._fanout.add(subscriber)
            self._members[subscriber] = None
        if new:
            self._interrupt()
        return {topic: self._positions[topic] for topic in subscriber.topics}

    async def _heads(self, topics: list[str]) -> dict[str, Position] | None:
        """The last id of each topic's stream, ``(0, 0)`` for a stream that does not exist;
        ``None`` when the epoch changed (read in the same round trip: a reader without
        topics does not look at Redis, and would not have seen it restart empty)."""
        pipe = self._client.pipeline(transaction=False)
        pipe.get(EPOCH_KEY)
        for topic in topics:
            pipe.xinfo_stream(_key(topic))
        epoch, *replies = await pipe.execute(raise_on_error=False)
        if isinstance(epoch, BaseException):
            raise epoch
        if epoch is None or epoch.decode() != self._epoch:
            await self._known_epoch()
            return None
        heads = {}
        for topic, reply in zip(topics, replies, strict=True):
            heads[topic] = self._head(reply)
        return heads

    def _head(self, reply: Any) -> Position:
        if isinstance(reply, self._redis.ResponseError) and "no such key" in str(reply):
            return (0, 0)
        if isinstance(reply, BaseException):
            raise reply
        return _parse_id(reply["last-generated-id"]) or (0, 0)

    def leave(self, subscriber: Subscriber) -> None:
        self._thread.call_soon(self._forget, subscriber)

    def _forget(self, subscriber: Subscriber) -> None:
        with self._fanout_lock:
            self._fanout.remove(subscriber)
            self._members.pop(subscriber, None)

    def subscribers(self, topic: str) -> int:
        return self._fanout.subscribers(topic)

    # -- the history -----------------------------------------------------------------------
    def read(self, topic: str, after: Any, upto: Any) -> concurrent.futures.Future[Page]:
        kept = self._kept.get(topic, after, upto)
        if kept is not None:
            return done(kept)
        key = (topic, after)
        with self._reads_lock:
            future = self._reads.get(key)
            if future is not None:
                return future
            future = self._reads[key] = self._submit(
                lambda: self._when_reachable(lambda: self._read(topic, after))
            )

        def forget(done: concurrent.futures.Future[Page]) -> None:
            with self._reads_lock:
                if self._reads.get(key) is done:
                    del self._reads[key]

        future.add_done_callback(forget)
        return future

    async def _read(self, topic: str, after: Position) -> Page:
        key = _key(topic)
        pipe = self._client.pipeline(transaction=True)  # both answers from one instant
        pipe.xinfo_stream(key)
        pipe.xrange(key, min="(" + _format_id(after), max="+", count=PAGE_SIZE)
        info, entries = await pipe.execute(raise_on_error=False)
        if isinstance(info, self._redis.ResponseError) and "no such key" in str(info):
            info = None
        for reply in (info, entries):
            if isinstance(reply, BaseException):
                raise reply
        messages = [_entry(topic, _parse_id(eid) or (0, 0), fields) for eid, fields in entries]
        page = Page(messages, _complete(info, after))
        self._kept.keep(topic, after, page)
        return page

    async def _when_reachable(
        self, attempt: Callable[[], Coroutine[Any, Any, T]], subscriber: Subscriber | None = None
    ) -> T:
        """``attempt()``, again and again while Redis cannot be reached: a join or a history
        read waits out an outage as a live subscriber does (its stream sends heartbeats
        meanwhile) instead of ending the stream with an error, and its client does not
        reconnect into the outage. Each retry reads the epoch first: Redis may be back
        empty (what the subscriber followed is then gone: it is closed, see
        ``_known_epoch``). Gives up when the subscriber is gone or the backend closes."""
        failures = 0
        while True:
            try:
                if failures:
                    await self._known_epoch()
                return await attempt()
            except (self._redis.ConnectionError, self._redis.TimeoutError, OSError):
                self._epoch_checked = False
                if self._stopping or (subscriber is not None and subscriber.closed):
                    raise
                await asyncio.sleep(BACKOFF[min(failures, len(BACKOFF) - 1)])
                failures += 1

    # -- the loop thread -------------------------------------------------------------------
    def _submit(
        self, make: Callable[[], Coroutine[Any, Any, Any]]
    ) -> concurrent.futures.Future[Any]:
        return self._thread.submit(make)

    def _setup(self) -> None:
        """On the loop thread, before anything runs there: the client is bound to it."""
        redis = self._redis
        # A bounded pool: a thousand clients joining at once wait their turn for one of
        # MAX_CONNECTIONS connections, instead of opening (and then keeping) one each.
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            self.config.broadcast_redis_url,
            max_connections=MAX_CONNECTIONS,
            timeout=COMMAND_TIMEOUT,
            socket_timeout=COMMAND_TIMEOUT,
            socket_connect_timeout=COMMAND_TIMEOUT,
            retry=redis.asyncio.retry.Retry(redis.backoff.NoBackoff(), 0),
        )
        self._client = redis.asyncio.Redis(connection_pool=pool)
        self._client.auto_close_connection_pool = True  # aclose() closes it (from_pool())
        self._wake = asyncio.Event()

    async def _cleanup(self) -> None:
        with self._fanout_lock:  # _stopping is set: no join at once adds one after this
            members = list(self._members)
            self._members.clear()
        for subscriber in members:
            subscriber.close()  # their streams end; the clients reconnect to a new backend
        await self._client.aclose()

    def close(self) -> None:
        self._thread.close(self._stop, CLOSE_TIMEOUT)

    def _stop(self) -> None:
        self._stopping = True
        assert self._wake is not None
        self._wake.set()
        self._interrupt()

    def _interrupt(self) -> None:
        """Make the reader issue its read again (a new topic) or look at ``_stopping``."""
        reading = self._reading
        if reading is not None:
            cancel_surely(reading)  # a plain cancel may be dropped before Python 3.12
        assert self._wake is not None
        self._wake.set()

    async def _run(self) -> None:
        """The reader (see the module docstring)."""
        assert self._wake is not None
        swept = time.monotonic()
        while not self._stopping:
            if time.monotonic() - swept > SWEEP_SECONDS:
                self._sweep()
                swept = time.monotonic()
            self._kept.expire()
            topics = self._topics()
            if not topics:
                await self._pause(KEEP_PAGES_SECONDS)  # then expire what is kept
                continue
            pipe = self._client.pipeline(transaction=False)
            pipe.get(EPOCH_KEY)
            pipe.xread(
                {_key(t): _format_id(self._positions[t]) for t in topics},
                count=PAGE_SIZE,
                block=BLOCK_MS,
            )
            reading = self._reading = asyncio.ensure_future(pipe.execute())
            try:
                await asyncio.wait({reading})
            finally:
                self._reading = None
            if reading.cancelled():
                continue  # a join brought a topic, or close()
            try:
                epoch, reply = reading.result()
                if epoch is None or epoch.decode() != self._epoch:
                    await self._known_epoch()  # made again when missing; drops a past life
                    continue
                self._deliver(reply)
            except Exception as exc:  # Redis down, or anything else: never end the reader
                with self._fanout_lock:
                    self._epoch_checked = False
                await self._pause(self._outage.failed(exc))
                continue
            self._outage.ok()

    def _topics(self) -> list[str]:
        """The topics to read: those some subscriber needs (others are forgotten, so a
        later join starts them at the stream's last id, not at a stale position)."""
        with self._fanout_lock:
            topics = self._fanout.topics()
            if len(topics) != len(self._positions):
                wanted = set(topics)
                for topic in [t for t in self._positions if t not in wanted]:
                    del self._positions[topic]
        return topics

    def _deliver(self, reply: Any) -> None:
        with self._fanout_lock:  # a join at once sees the new positions and the events, or neither
            self._epoch_checked = True  # read in the same round trip
            self._deliver_locked(reply)

    def _deliver_locked(self, reply: Any) -> None:
        streams = reply.items() if isinstance(reply, dict) else (reply or ())
        messages = []
        positions = self._positions
        for key, entries in streams:
            topic = key.decode()[len(KEY_PREFIX) :]
            position = positions.get(topic)
            if position is None:
                continue  # nobody waits for it any more
            for entry_id, fields in entries:
                at = _parse_id(entry_id)
                if at is None or at <= position:
                    continue  # read before by a read that was cancelled and made again
                messages.append(_entry(topic, at, fields))
                position = at
            positions[topic] = position
        if messages:
            self._fanout.deliver(messages)

    async def _known_epoch(self) -> str:
        """The epoch in Redis (set now if missing); a new one drops this process's
        subscribers, positions and kept pages: what they followed is gone."""
        pipe = self._client.pipeline(transaction=True)
        pipe.set(EPOCH_KEY, secrets.token_hex(4), nx=True)
        pipe.get(EPOCH_KEY)
        epoch: str = (await pipe.execute())[1].decode()
        lost = self._epoch is not None and epoch != self._epoch
        with self._fanout_lock:
            members = list(self._members) if lost else []
            if lost:
                for subscriber in members:
                    self._fanout.remove(subscriber)
                self._members.clear()
                self._positions.clear()
                self._kept.clear()
            self._epoch = epoch
            self._epoch_checked = True
        if lost:
            get_logger().warning(
                BROADCAST_BACKEND_ERROR,
                backend=self.name,
                url=self._where,
                error="Redis lost its data (restarted without persistence, or flushed): "
                "subscribers get flosse-reset",
            )
            for subscriber in members:
                subscriber.close()
        return epoch

    async def _pause(self, seconds: float) -> None:
        assert self._wake is not None
        if self._stopping:
            return
        self._wake.clear()
        with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    def _sweep(self) -> None:
        with self._fanout_lock:
            self._fanout.sweep()
            for subscriber in [s for s in self._members if s.closed]:
                del self._members[subscriber]

    # -- errors ------------------------------------------------------------------------------
    def _wait(self, future: concurrent.futures.Future[Any], what: str) -> Any:
        try:
            return future.result()
        except (self._redis.ConnectionError, self._redis.TimeoutError, OSError) as exc:
            raise self._failure(exc, what) from exc

    def _failure(self, exc: BaseException, what: str) -> Exception:
        error: Exception = self._redis.ConnectionError(
            f"django-flosse could not {what} Redis at {self._where} "
            f"(FLOSSE['BROADCAST_REDIS_URL']): {exc}"
        )
        return error
