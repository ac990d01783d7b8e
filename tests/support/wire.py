"""Raw HTTP clients for real servers, and the parsing of what they receive.

httpx needs a few milliseconds and a lot of memory per stream; a thousand streams need
plain sockets. :class:`RawStream` is one HTTP/1.1 ``GET`` on an asyncio connection whose
reader task keeps draining (and keeping) what the server sends, so the test decides exactly
how and when the connection ends: :meth:`RawStream.rst` closes it with ``SO_LINGER`` 0 (the
kernel sends RST, no goodbye), as a browser tab that crashes or a phone that loses its
network would. ``raw_open`` / ``raw_read_until`` do the same on a blocking socket,
``stuck_socket`` is a client that never reads, and ``raw_request`` sends exactly the bytes
a test gives (hostile headers included) and reads the whole answer.

The parsing here is for bytes off the wire (chunked encoding, complete SSE blocks as
dicts); for responses of the test client use ``django_flosse.testing``.

Everything is bounded: every wait has a deadline and every loop a count. Standard library
only: the soak run imports this module from ``bench/.venv``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import struct
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.support.servers import HOST, LiveServer

# --------------------------------------------------------------------------- raw clients


def request_bytes(port: int, path: str, headers: dict[str, str] | None = None) -> bytes:
    """An HTTP/1.1 ``GET`` of an event stream, as a browser's EventSource sends it."""
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {HOST}:{port}",
        "Accept: text/event-stream",
        "Cache-Control: no-cache",
    ]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


@dataclass(eq=False)
class RawStream:
    """One streaming GET on an asyncio connection, drained by a task of its own."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    data: bytearray = field(default_factory=bytearray)
    eof: bool = False
    eof_at: float | None = None
    error: str | None = None
    _task: asyncio.Task[None] | None = None
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    async def open(cls, port: int, path: str, headers: dict[str, str] | None = None) -> RawStream:
        reader, writer = await asyncio.open_connection(HOST, port, limit=1 << 20)
        writer.write(request_bytes(port, path, headers))
        stream = cls(reader, writer)
        stream._task = asyncio.create_task(stream._drain())
        return stream

    async def _drain(self) -> None:
        try:
            while True:
                chunk = await self.reader.read(65536)
                if not chunk:
                    break
                self.data += chunk
                self._arrived.set()
        except (ConnectionError, OSError) as exc:
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.eof = True
            self.eof_at = time.monotonic()
            self._arrived.set()
            self.writer.close()  # the server is done with it (or we aborted it)

    async def wait_for(self, needle: bytes, timeout: float) -> bool:
        """Wait (bounded) until ``needle`` arrived; False at the deadline or at EOF."""
        deadline = time.monotonic() + timeout
        while needle not in self.data:
            if self.eof:
                return needle in self.data
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._arrived.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)
        return True

    async def wait_complete(self, timeout: float) -> bool:
        """Wait (bounded) until the chunked response ended (its ``0`` chunk arrived).

        The connection itself may stay open afterwards (HTTP/1.1 keep-alive)."""
        return await self.wait_for(b"\r\n0\r\n\r\n", timeout)

    async def wait_eof(self, timeout: float) -> bool:
        if self._task is None:
            return True
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        return self.eof

    def rst(self) -> None:
        """Close abruptly: SO_LINGER 0 makes the kernel send RST instead of FIN."""
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()
        if self._task is not None:
            self._task.cancel()

    def close(self) -> None:
        """Close politely (FIN), e.g. at the end of a test."""
        self.writer.close()
        if self._task is not None:
            self._task.cancel()

    def body(self) -> bytes:
        return response_body(bytes(self.data))

    def events(self) -> list[dict[str, str]]:
        return parse_events(self.body())


async def open_many(
    port: int,
    path: Callable[[int], str] | str,
    n: int,
    *,
    first: bytes = b"data: ",
    timeout: float = 60.0,
    concurrency: int = 100,
) -> list[RawStream]:
    """Open ``n`` streams (at most ``concurrency`` connecting at once) and wait until each
    has received ``first``; raises AssertionError naming how many did not."""
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> RawStream:
        async with gate:
            stream = await RawStream.open(port, path(i) if callable(path) else path)
            await stream.wait_for(first, timeout)  # inside the gate: no flood of accepts
            return stream

    results = await asyncio.wait_for(
        asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True), timeout
    )
    streams = [r for r in results if isinstance(r, RawStream)]
    errors = [r for r in results if not isinstance(r, RawStream)]
    missing = [s for s in streams if first not in s.data]
    if errors or missing:
        for s in streams:
            s.rst()
        raise AssertionError(
            f"{len(errors)} connections failed and {len(missing)} got no {first!r} of {n}: "
            f"{errors[:3]!r} {[bytes(s.data[:300]) for s in missing[:3]]!r}"
        )
    return streams


def stuck_socket(port: int, path: str, rcvbuf: int = 4096) -> socket.socket:
    """A client that sends its request and then never reads: a tiny receive buffer, and
    nobody calling ``recv``. The server's writes pile up until its flow control stops."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(5)
    sock.connect((HOST, port))
    sock.sendall(request_bytes(port, path))
    return sock


def raw_open(port: int, path: str, headers: dict[str, str] | None = None) -> socket.socket:
    """Send a GET on a plain socket (so the test decides exactly how it is closed)."""
    sock = socket.create_connection((HOST, port), timeout=5)
    sock.sendall(request_bytes(port, path, headers))
    return sock


def raw_read_until(sock: socket.socket, needle: bytes, timeout: float) -> bytes:
    """Read (bounded in time) until ``needle`` was received; return everything read."""
    deadline = time.monotonic() + timeout
    buf = b""
    while needle not in buf:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"{needle!r} not received within {timeout} s; got {buf!r}")
        sock.settimeout(remaining)
        data = sock.recv(65536)
        if not data:
            raise ConnectionError(f"the server closed the connection; got {buf!r}")
        buf += data
    return buf


def rst_close(sock: socket.socket) -> None:
    """Close abruptly: SO_LINGER 0 makes the kernel send RST instead of FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def raw_request(server: LiveServer, path: str, headers: bytes = b"") -> tuple[int, bytes]:
    """Send exactly these bytes (HTTP/1.0: the body ends when the server closes).

    Returns the status and the body (dechunked: uvicorn's httptools protocol answers even
    HTTP/1.0 with chunked encoding).
    """
    request = b"GET " + path.encode() + b" HTTP/1.0\r\nHost: " + HOST.encode() + b"\r\n"
    with socket.create_connection((HOST, server.port), timeout=10) as sock:
        sock.sendall(request + headers + b"\r\n")
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
            if len(received) > 10_000_000:
                raise AssertionError("the response never ends")
    status = int(received.split(b" ", 2)[1])
    return status, response_body(received)


def get_json(server: LiveServer, path: str, timeout: float = 10.0) -> Any:
    with urllib.request.urlopen(server.url + path, timeout=timeout) as response:
        return json.loads(response.read())


# --------------------------------------------------------------------------- parsing


def dechunk(raw: bytes) -> bytes:
    """The payload of a chunked body (a truncated last chunk is kept as far as it goes)."""
    out = bytearray()
    pos = 0
    for _ in range(10_000_000):  # bounded: every turn consumes at least one line
        end = raw.find(b"\r\n", pos)
        if end < 0:
            break
        size = int(raw[pos:end].split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += raw[end + 2 : end + 2 + size]
        pos = end + 2 + size + 2
    return bytes(out)


def response_body(raw: bytes) -> bytes:
    """The body of a whole HTTP/1.x response (dechunked if it was chunked)."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        return b""
    if re.search(rb"(?im)^transfer-encoding:\s*chunked", head):
        return dechunk(body)
    return body


def parse_events(body: bytes) -> list[dict[str, str]]:
    """Complete SSE blocks as {field: value} (``data`` lines joined); comments skipped."""
    events = []
    text = body.decode("utf-8", "replace").replace("\r\n", "\n")
    blocks = text.split("\n\n")
    for block in blocks[:-1]:  # the last one is incomplete (or empty)
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            fields[name] = fields[name] + "\n" + value if name in fields else value
        if fields:
            events.append(fields)
    return events
