"""Many broadcast subscribers that behave like browsers, counting what they receive.

The fault tests (``tests/reliability/test_broadcast_outages.py``,
``test_broadcast_worker_death.py``) and the soak run (``bench/soak_broadcast.py``) hold
hundreds of these at once, so each is one plain asyncio connection, no httpx. A
:class:`Follower` does what an ``EventSource`` does: it reads its stream, remembers the last
id, and when the stream ends or breaks it connects again (with a growing delay, to the
server ``route`` names) sending that id as ``Last-Event-ID``. It keeps, for the test to
judge, the data of every event in arrival order, the ``flosse-reset`` events, when each
heartbeat (``: keep-alive``) came and how often it connected.

Publishers in these scenarios (``tests.support.broadcast_publisher.Publisher``) put the
topic first in the data (``"t1:p-17"``), so that a subscriber of several topics can be
checked topic by topic against the history: ``table_history`` reads the ``database``
backend's, ``history_rows`` the connection history of a process; ``start_id`` makes the id
of the position before a topic's first event (a follower that starts from it replays
everything, so it need not be joined before the publisher starts). With ``keep=False`` a
follower only counts (the soak's thousand, for minutes).

Standard library only (the soak run imports it too); everything is bounded: connections per
follower, bytes per line, every wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from tests.support.servers import HOST
from tests.support.wire import request_bytes

RESET = "flosse-reset"
#: The settings of the servers of these scenarios, and their topics and views.
SETTINGS = "tests.reliability.settings_faults"
TOPICS = ("t1", "t2")
PATHS = tuple(
    f"/broadcast/{view}/{topics}/" for topics in ("t1", "t2", "t1,t2") for view in ("async", "sync")
)
#: Reconnection delays (seconds): doubling from the first to the last, as browsers back off.
BACKOFF = (0.05, 1.0)
#: A follower gives up after this many connections (a bound, never reached when all is well).
MAX_CONNECTIONS = 50
#: Seconds a connection may take to answer with its headers (a browser waits far longer; a
#: short one would make an overloaded server's clients reconnect, and overload it more).
CONNECT_TIMEOUT = 60.0
_MAX_LINE = 1 << 20


@dataclass(eq=False)
class Follower:
    """One subscriber; ``run`` until ``stop`` is set (see the module docstring)."""

    path: str
    topics: tuple[str, ...]
    last_id: str = ""
    #: The data of every event but resets, in arrival order.
    received: list[str] = field(default_factory=list)
    #: Per reset: how many events had arrived before it.
    resets: list[int] = field(default_factory=list)
    #: time.monotonic() of each heartbeat (the last thousand).
    heartbeats: deque[float] = field(default_factory=lambda: deque(maxlen=1000))
    connections: int = 0
    ends: list[float] = field(default_factory=list)  # when a stream ended or broke
    errors: list[str] = field(default_factory=list)
    port: int = 0
    statuses: list[int] = field(default_factory=list)
    #: Reconnect with ``?lastEventId=`` (what a page that restarts its EventSource itself
    #: sends) instead of the ``Last-Event-ID`` header.
    query: bool = False
    #: False: only count (the soak's thousand followers for minutes): ``received`` stays
    #: empty, ``tally`` counts per topic, ``disorder`` counts events that came out of the
    #: publisher's order or twice (their ``-<i>`` suffix not above the last one's). The
    #: publisher numbers its events across ``TOPICS`` in turn, so a topic's next event is
    #: known: one skipped within a life of the history is in ``gaps`` (lost); one skipped
    #: across a ``flosse-reset`` is in ``unrecoverable`` (its history was gone, and the
    #: reset told the client so).
    keep: bool = True
    tally: dict[str, int] = field(default_factory=dict)
    disorder: int = 0
    gaps: int = 0
    unrecoverable: int = 0
    #: ``error`` events (a stream that failed), neither counted nor kept as events.
    error_events: int = 0
    events: int = 0  # every event but resets
    max_connections: int = MAX_CONNECTIONS
    _last_index: dict[str, int] = field(default_factory=dict)
    _reset_since: set[str] = field(default_factory=set)  # topics with no event since a reset
    _writer: asyncio.StreamWriter | None = None
    _drop_pending: bool = False  # drop() came while connecting: drop once connected
    _allowed: asyncio.Event | None = None

    async def run(self, route: Callable[[Follower], int], stop: asyncio.Event) -> None:
        self._allowed = asyncio.Event()
        self._allowed.set()
        delay = BACKOFF[0]
        while not stop.is_set() and self.connections < self.max_connections:
            await self._allowed.wait()
            self._drop_pending = False  # a drop between two connections has happened
            self.port = route(self)
            self.connections += 1
            before = self.events + len(self.heartbeats)
            try:
                await self._follow(stop)
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")
            self.ends.append(time.monotonic())
            if stop.is_set():
                return
            got_something = self.events + len(self.heartbeats) > before
            delay = BACKOFF[0] if got_something else min(delay * 2, BACKOFF[1])
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)

    def drop(self, *, hold: bool = False) -> None:
        """Break the connection as a crashed tab or a lost network does (RST); ``hold``:
        do not reconnect before :meth:`release`."""
        if hold and self._allowed is not None:
            self._allowed.clear()
        writer = self._writer
        if writer is not None:
            rst(writer)
        else:
            self._drop_pending = True

    def release(self) -> None:
        if self._allowed is not None:
            self._allowed.set()

    async def _follow(self, stop: asyncio.Event) -> None:
        path, headers = self.path, {}
        if self.last_id and self.query and self.connections > 1:
            path += f"?lastEventId={self.last_id}"
        elif self.last_id:
            headers["Last-Event-ID"] = self.last_id
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(HOST, self.port, limit=_MAX_LINE), CONNECT_TIMEOUT
        )
        self._writer = writer
        if self._drop_pending:
            self._drop_pending = False
            rst(writer)
        try:
            writer.write(request_bytes(self.port, path, headers))
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), CONNECT_TIMEOUT)
            self.statuses.append(int(head.split(b" ", 2)[1]))
            chunked = b"transfer-encoding: chunked" in head.lower()
            stopping = asyncio.ensure_future(stop.wait())
            try:
                lines = _chunked_lines(reader) if chunked else _plain_lines(reader)
                event: dict[str, str] = {}
                async for line in _until(lines, stopping):
                    self._line(line, event)
            finally:
                stopping.cancel()
        finally:
            self._writer = None
            writer.close()
            with contextlib.suppress(OSError, asyncio.TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    def _line(self, line: str, event: dict[str, str]) -> None:
        if not line:
            if "data" in event:
                if "id" in event:
                    self.last_id = event["id"]
                if event.get("event") == RESET:
                    self.resets.append(self.events)
                    self._reset_since.update(self.topics)
                elif event.get("event") == "error":
                    self.error_events += 1
                else:
                    self._note(event["data"])
            event.clear()
        elif line.startswith(":"):
            self.heartbeats.append(time.monotonic())
        else:
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            event[name] = event[name] + "\n" + value if name in event else value

    def _note(self, data: str) -> None:
        self.events += 1
        if self.keep:
            self.received.append(data)
            return
        topic, _, name = data.partition(":")
        self.tally[topic] = self.tally.get(topic, 0) + 1
        index = int(name.rpartition("-")[2]) if name[-1:].isdigit() else -1
        last = self.last_index(topic)
        if index <= last:
            self.disorder += 1
        elif topic in TOPICS and index > last + len(TOPICS):
            skipped = (index - last) // len(TOPICS) - 1
            if topic in self._reset_since:
                self.unrecoverable += skipped
            else:
                self.gaps += skipped
        self._reset_since.discard(topic)
        self._last_index[topic] = index

    def last_index(self, topic: str) -> int:
        """The publisher's number of the last event of ``topic`` counted (``keep=False``);
        before any, that of the event before the topic's first."""
        first = TOPICS.index(topic) if topic in TOPICS else 0
        return self._last_index.get(topic, first - len(TOPICS))

    # -- what the test judges ---------------------------------------------------------------
    def datas(self, topic: str) -> list[str]:
        prefix = topic + ":"
        return [data for data in self.received if data.startswith(prefix)]

    def heartbeats_between(self, start: float, end: float) -> int:
        return sum(1 for at in self.heartbeats if start <= at <= end)

    def has(self, data: str) -> bool:
        return data in self.received


def rst(writer: asyncio.StreamWriter) -> None:
    """Close abruptly: SO_LINGER 0 makes the kernel send RST instead of FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _until(lines: AsyncIterator[str], stopping: asyncio.Future[object]) -> AsyncIterator[str]:
    """The lines of ``lines`` until ``stopping`` is done (then the stream is left)."""
    iterator = lines.__aiter__()
    while True:
        nxt = asyncio.ensure_future(iterator.__anext__())
        await asyncio.wait({nxt, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not nxt.done():
            nxt.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await nxt
            return
        try:
            yield nxt.result()
        except StopAsyncIteration:
            return


async def _plain_lines(reader: asyncio.StreamReader) -> AsyncIterator[str]:
    buffer = b""
    while chunk := await reader.read(65536):
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        for line in complete:
            yield line.rstrip(b"\r").decode("utf-8", "replace")


async def _chunked_lines(reader: asyncio.StreamReader) -> AsyncIterator[str]:
    """The lines of a chunked body, however the chunks cut them."""
    buffer = b""
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";")[0].strip() or b"0", 16)
        if size == 0:
            return
        buffer += await reader.readexactly(size)
        await reader.readexactly(2)
        *complete, buffer = buffer.split(b"\n")
        for line in complete:
            yield line.rstrip(b"\r").decode("utf-8", "replace")


async def wait_for(check: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Until ``check()`` (True), or ``timeout`` seconds (False)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(interval)
    return True


def exactly_once(received: list[str], truth: list[str]) -> tuple[int, int]:
    """(missing, duplicated) of ``received`` against ``truth`` (order aside)."""
    seen: dict[str, int] = {}
    for data in received:
        seen[data] = seen.get(data, 0) + 1
    missing = sum(1 for data in truth if data not in seen)
    duplicated = sum(count - 1 for count in seen.values() if count > 1)
    return missing, duplicated


def topics_of(path: str) -> tuple[str, ...]:
    """The topics of a test view's path ``/broadcast/<view>/<a,b>/``."""
    return tuple(path.rstrip("/").rsplit("/", 1)[1].split(","))


def spread(paths: Iterable[str], count: int) -> list[str]:
    """``count`` paths, taking ``paths`` in turn."""
    cycle = list(paths)
    return [cycle[i % len(cycle)] for i in range(count)]


def start_id(tag: str, topics: tuple[str, ...], zero: Any, fmt: Callable[[Any], str]) -> str:
    """The id of the position before the topics' first event, as a server makes it: a
    client that sends it replays everything, so it need not be joined before publishing."""
    from django_flosse.broadcasting._ids import IdFormat

    names = sorted(topics)
    return IdFormat(tag, names, fmt, lambda text: None).format(dict.fromkeys(names, zero))


def table_history(
    connect: Callable[[], Any], topics: Iterable[str]
) -> tuple[dict[str, list[str]], dict[str, list[int]]]:
    """The ``database`` backend's history (``connect()``: a DB-API connection to it): per
    topic, the data of its events and their positions, in position order."""
    events: dict[str, list[str]] = {t: [] for t in topics}
    positions: dict[str, list[int]] = {t: [] for t in topics}
    with contextlib.closing(connect()) as conn:
        cursor = conn.cursor()
        cursor.execute(
            "SELECT topic, position, body FROM django_flosse_broadcastmessage "
            "ORDER BY topic, position"
        )
        rows = cursor.fetchall()
    for topic, position, body in rows:
        if topic in events:
            data = "\n".join(line[6:] for line in body.split("\n") if line.startswith("data: "))
            events[topic].append(data)
            positions[topic].append(position)
    return events, positions


def history_rows(connect: Callable[[], Any], process: str) -> dict[str | None, int]:
    """The connection history rows of ``process`` (``host:pid``) by close reason (``None``:
    still open), read through ``connect()``."""
    with contextlib.closing(connect()) as conn:
        cursor = conn.cursor()
        cursor.execute(
            "SELECT close_reason, count(*) FROM django_flosse_streamconnection "
            "WHERE process = %s GROUP BY close_reason",
            (process,),
        )
        rows = cursor.fetchall()
    return {reason or None: count for reason, count in rows}


async def servers_for(
    factory: Callable[..., Any], env: dict[str, str], count: int = 2
) -> list[Any]:
    """``count`` uvicorn workers started side by side with ``factory`` (``LiveServer``
    arguments), on the settings in ``env``."""
    return list(
        await asyncio.gather(
            *(asyncio.to_thread(factory, "uvicorn", env=env) for _ in range(count))
        )
    )
