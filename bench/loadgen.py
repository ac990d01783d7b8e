"""The benchmark's client: a minimal HTTP/1.1 reader of event streams on raw asyncio sockets.

httpx (or any full client) costs more per event than the fastest servers spend, so the
client would be what is measured. This reader does only what a count needs: it reads the
status line and headers, undoes chunked transfer encoding, counts event terminators
(``\\n\\n``, also across chunk boundaries) and notes the time of the first one. Every wait
has a deadline: nothing here can hang the run.
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import struct
import time
from collections.abc import Awaitable
from typing import Any

HOST = "127.0.0.1"

#: SO_LINGER on, zero seconds: close() sends RST instead of FIN (a client that vanished).
RST_ON_CLOSE = struct.pack("ii", 1, 0)


def request_bytes(path: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nAccept: text/event-stream\r\n"
        "Connection: close\r\n\r\n"
    ).encode("ascii")


class StreamReader(asyncio.Protocol):
    """Reads one response, counting events. ``done`` resolves at its end (or EOF)."""

    def __init__(
        self,
        path: str,
        *,
        keep_body: bool = False,
    ) -> None:
        self.request = request_bytes(path)
        loop = asyncio.get_running_loop()
        self.done: asyncio.Future[None] = loop.create_future()
        self.first: asyncio.Future[None] = loop.create_future()  # the first event arrived
        self.transport: asyncio.Transport | None = None
        self.status = 0
        self.headers: dict[str, str] = {}
        self.events = 0
        self.bytes = 0
        self.t_start = time.perf_counter()  # before connect: set again by whoever connects
        self.t_first: float | None = None
        self.t_end: float | None = None
        self.complete = False  # saw the final chunk (not just EOF)
        self.body: bytearray | None = bytearray() if keep_body else None
        self._in_head = True
        self._chunked = False
        self._pending = b""  # an incomplete head or chunk-size line
        self._remaining = 0  # payload bytes left in the current chunk
        self._skip = 0  # CRLF bytes after a chunk's payload still to skip
        self._last_lf = False  # did the payload so far end with "\n"?

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            data = self._pending + data
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self._pending = data[-65536:]
                return
            self._parse_head(data[:end])
            data = data[end + 4 :]
            self._pending = b""
            self._in_head = False
            if not data:
                return
        if self._chunked:
            self._feed_chunked(data)
        else:
            self._payload(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish()

    # -- parsing ---------------------------------------------------------------------------
    def _parse_head(self, head: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        self.status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()
        self._chunked = "chunked" in self.headers.get("transfer-encoding", "").lower()

    def _feed_chunked(self, data: bytes) -> None:
        if self._pending:
            data = self._pending + data
            self._pending = b""
        pos, size = 0, len(data)
        while pos < size:
            if self._remaining:
                take = min(self._remaining, size - pos)
                self._payload(data[pos : pos + take])
                pos += take
                self._remaining -= take
                if not self._remaining:
                    self._skip = 2
            elif self._skip:
                step = min(self._skip, size - pos)
                pos += step
                self._skip -= step
            else:
                end = data.find(b"\r\n", pos)
                if end < 0:
                    self._pending = data[pos:]
                    return
                chunk_size = int(data[pos:end].split(b";", 1)[0], 16)
                pos = end + 2
                if chunk_size == 0:
                    self.complete = True
                    self._finish()
                    return
                self._remaining = chunk_size

    def _payload(self, data: bytes) -> None:
        self.bytes += len(data)
        if self.body is not None:
            self.body += data
        found = data.count(b"\n\n")
        if self._last_lf and data[:1] == b"\n" and data[:2] != b"\n\n":
            found += 1  # a terminator split between two chunks
        self._last_lf = data.endswith(b"\n") and not data.endswith(b"\n\n")
        if found:
            if self.t_first is None:
                self.t_first = time.perf_counter()
                self.first.set_result(None)
            self.events += found

    def _finish(self) -> None:
        if self.t_end is None:
            self.t_end = time.perf_counter()
        if not self.done.done():
            self.done.set_result(None)
        if not self.first.done():
            self.first.set_result(None)  # wake waiters: check t_first
        if self.transport is not None:
            self.transport.close()

    # -- use -------------------------------------------------------------------------------
    @property
    def ttfe(self) -> float | None:
        """Seconds from just before connecting to the first complete event."""
        return None if self.t_first is None else self.t_first - self.t_start


async def open_stream(
    port: int, path: str, *, rst: bool = False, reader: StreamReader | None = None, **kwargs: Any
) -> tuple[asyncio.Transport, StreamReader]:
    """Connect and send the request; the reader (a new ``StreamReader`` unless one is
    given) counts what comes back."""
    loop = asyncio.get_running_loop()
    if reader is None:
        reader = StreamReader(path, **kwargs)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rst:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RST_ON_CLOSE)
    sock.setblocking(False)
    reader.t_start = time.perf_counter()
    try:
        await loop.sock_connect(sock, (HOST, port))
        transport, _ = await loop.create_connection(lambda: reader, sock=sock)
    except BaseException:
        sock.close()
        raise
    return transport, reader  # type: ignore[return-value]


async def read_stream(port: int, path: str, timeout: float, **kwargs: Any) -> StreamReader:
    """Read one whole stream (until its final chunk or EOF), within ``timeout`` seconds."""
    transport, reader = await open_stream(port, path, **kwargs)
    try:
        await asyncio.wait_for(asyncio.shield(reader.done), timeout)
    finally:
        transport.abort()
    return reader


def new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()  # type: ignore[no-any-return]


def run_async(coro: Awaitable[Any]) -> Any:
    """Run ``coro`` on a fresh event loop (uvloop when installed), closed afterwards."""
    loop = new_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


# -- workloads ---------------------------------------------------------------------------------


async def throughput(
    port: int, path: str, streams: int, events: int, timeout: float
) -> dict[str, Any]:
    """``streams`` concurrent streams of ``events`` events each; aggregate events per second."""
    started = time.perf_counter()
    readers = await asyncio.wait_for(
        asyncio.gather(*(read_stream(port, f"{path}?n={events}", timeout) for _ in range(streams))),
        timeout,
    )
    elapsed = max(r.t_end or started for r in readers) - started
    received = sum(r.events for r in readers)
    complete = all(r.complete and r.events == events for r in readers)
    return {
        "streams": streams,
        "events_per_stream": events,
        "events": received,
        "bytes": sum(r.bytes for r in readers),
        "seconds": elapsed,
        "events_per_s": received / elapsed if elapsed > 0 else 0.0,
        "complete": complete,
    }


async def first_event_times(port: int, path: str, count: int, timeout: float) -> list[float]:
    """Time to first event of ``count`` one-event streams, one after the other (seconds)."""
    times: list[float] = []
    for _ in range(count):
        reader = await read_stream(port, f"{path}?n=1", timeout)
        if reader.ttfe is None:
            raise RuntimeError(f"a stream ended without an event (status {reader.status})")
        times.append(reader.ttfe)
    return times


def summarize_times(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    p99 = ordered[min(len(ordered) - 1, max(0, round(0.99 * len(ordered)) - 1))]
    return {
        "count": len(ordered),
        "median_ms": statistics.median(ordered) * 1e3,
        "p99_ms": p99 * 1e3,
        "min_ms": ordered[0] * 1e3,
        "max_ms": ordered[-1] * 1e3,
    }


def summarize_runs(runs: list[dict[str, Any]], cpu: float) -> dict[str, Any]:
    """Several throughput runs of one server as one figure: the best run's events/s, and the
    server's CPU (``cpu`` seconds, summed over every run) per event.

    The best run, not the median: other load on a shared machine only ever slows a run
    down. Server CPU seconds per event barely depend on that load, so they are reported
    too (the CPU clock ticks every 10 ms, hence the sum).
    """
    received = sum(run["events"] for run in runs)
    best = dict(max(runs, key=lambda run: run["events_per_s"]))
    rates = sorted(run["events_per_s"] for run in runs)
    best.update(
        runs_events_per_s=[round(rate) for rate in rates],
        median_events_per_s=rates[len(rates) // 2],
        complete=all(run["complete"] for run in runs),
        server_cpu_s=round(cpu, 3),
        server_cpu_s_per_100k=cpu * 100_000 / received if received else None,
        events_per_cpu_s=received / cpu if cpu else None,
    )
    return best


class IdleConnections:
    """Many streams held open after their first event, then dropped all at once with RST."""

    def __init__(self) -> None:
        self.transports: list[asyncio.Transport] = []

    async def open(self, port: int, path: str, count: int, timeout: float, batch: int = 100) -> int:
        """Open ``count`` streams, ``batch`` at a time; returns how many got their event."""
        deadline = time.monotonic() + timeout
        got_first = 0
        for start in range(0, count, batch):
            size = min(batch, count - start)
            opened = await asyncio.gather(
                *(open_stream(port, f"{path}?n=1&idle=1", rst=True) for _ in range(size)),
                return_exceptions=True,
            )
            waits = []
            for result in opened:
                if isinstance(result, BaseException):
                    continue
                transport, reader = result
                self.transports.append(transport)
                waits.append(reader)
            if waits:
                left = max(0.0, deadline - time.monotonic())
                await asyncio.wait([r.first for r in waits], timeout=left)
            got_first += sum(r.t_first is not None for r in waits)
            if time.monotonic() >= deadline:
                break
        return got_first

    def drop(self) -> None:
        """Reset every connection now (SO_LINGER 0 was set before connecting)."""
        for transport in self.transports:
            transport.abort()
        self.transports.clear()


async def fetch(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """A small GET (``/active``, the metrics page): status and body."""
    reader = await read_stream(port, path, timeout, keep_body=True)
    assert reader.body is not None
    return reader.status, bytes(reader.body)


def drain(port: int, path: str, seconds: float) -> int:
    """Read a stream as fast as possible for ``seconds`` and discard it (the flood's client).

    Runs in its own process (``run.py --drain``) so that the measuring client's event loop
    is not the one busy reading the flood. Prints ``started`` once the first bytes arrived.
    """
    deadline = time.monotonic() + seconds
    total = 0
    buf = bytearray(1 << 18)
    with socket.create_connection((HOST, port), timeout=5) as sock:
        sock.settimeout(1.0)
        sock.sendall(request_bytes(path))
        announced = False
        while time.monotonic() < deadline:
            try:
                got = sock.recv_into(buf)
            except TimeoutError:
                continue
            if not got:
                break
            total += got
            if not announced:
                print("started", flush=True)
                announced = True
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RST_ON_CLOSE)
    return total
