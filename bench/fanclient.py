"""The fan-out workloads' subscribers: one process holding thousands of idle event streams.

``fanout.py`` starts one or more of these (``python bench/fanclient.py``) and drives each
through its stdin and stdout, one JSON object per line:

    {"cmd": "open", "port": P, "path": "/fan", "count": N}   -> {"opened": n, "failed": f}
    {"cmd": "collect", "events": E, "timeout": S}            -> the tally (below)
    {"cmd": "close"}                                         -> {"closed": n}, then exits

Every stream is read by ``loadgen.StreamReader`` (chunked encoding undone); its payload is
scanned for the benchmark's data lines, ``data: {"i": <index>, "t": <ns>}``, where ``t`` is
the server's ``time.monotonic_ns()`` when it published event ``i``: CLOCK_MONOTONIC is one
clock for every process of the host, so ``receive - t`` is the delivery time. Any other
event (a peer's padding, keep-alives, ``stream-open``) is ignored. Per stream and event the
count of copies received is kept (a ``bytearray``: loss is a 0, a duplicate more than 1),
and per event the latest receive time over every stream of this process.

Sockets close with RST (SO_LINGER 0): tens of thousands of connections per run would
otherwise leave as many ports in TIME_WAIT.
"""

from __future__ import annotations

import asyncio
import json
import re
import resource
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import loadgen

#: The benchmark's broadcast data line (every peer sends it, whatever else it sends).
DATA_LINE = re.compile(rb'data: \{"i": (\d+), "t": (\d+)\}\n')

#: Events a run publishes at most (the counters are sized for it).
MAX_EVENTS = 1024

#: Connections opened at once by one process (uvicorn's listen backlog is 2048).
OPEN_BATCH = 100


class Tally:
    """What this process received: copies per (stream, event), last receive per event."""

    def __init__(self) -> None:
        self.published_ns = [0] * MAX_EVENTS  # the server's t of each event
        self.last_ns = [0] * MAX_EVENTS  # the latest receive time of each event
        self.first_ns = [0] * MAX_EVENTS  # the earliest receive time of each event


class FanReader(loadgen.StreamReader):
    """One subscriber: counts the copies of each event it receives."""

    def __init__(self, path: str, tally: Tally) -> None:
        super().__init__(path)
        self.tally = tally
        self.head: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.copies = bytearray(MAX_EVENTS)
        self.received = 0
        self._tail = b""  # an event cut by the end of the last read

    def _parse_head(self, head: bytes) -> None:
        super()._parse_head(head)
        if not self.head.done():
            self.head.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if not self.head.done():
            self.head.set_result(None)

    def _payload(self, data: bytes) -> None:
        now = time.monotonic_ns()
        if self._tail:
            data = self._tail + data
        cut = data.rfind(b"\n\n") + 2
        self._tail = data[cut:] if cut < len(data) else b""
        tally, copies = self.tally, self.copies
        for index_text, stamp_text in DATA_LINE.findall(data, 0, cut):
            index = int(index_text)
            if index >= MAX_EVENTS:
                continue
            if copies[index] < 255:
                copies[index] += 1
            self.received += 1
            if not tally.published_ns[index]:
                tally.published_ns[index] = int(stamp_text)
                tally.first_ns[index] = now
            if now > tally.last_ns[index]:
                tally.last_ns[index] = now


class Subscribers:
    def __init__(self) -> None:
        self.tally = Tally()
        self.readers: list[FanReader] = []
        self.transports: list[asyncio.Transport] = []

    async def open(self, port: int, path: str, count: int, timeout: float) -> dict[str, Any]:
        """Connect ``count`` streams, ``OPEN_BATCH`` at a time, each batch waiting (bounded)
        for its response heads: a server busy accepting is never sent more at once than
        its listen backlog holds (the excess would wait for TCP's retransmissions)."""
        deadline = time.monotonic() + timeout
        errors: dict[str, int] = {}
        for start in range(0, count, OPEN_BATCH):
            size = min(OPEN_BATCH, count - start)
            opened = await asyncio.gather(
                *(self._connect(port, path) for _ in range(size)), return_exceptions=True
            )
            heads = []
            for result in opened:
                if isinstance(result, BaseException):
                    errors[type(result).__name__] = errors.get(type(result).__name__, 0) + 1
                else:
                    heads.append(result.head)
            left = deadline - time.monotonic()
            if heads and left > 0:
                await asyncio.wait(heads, timeout=left)
            if time.monotonic() > deadline:
                break
        ok = sum(1 for r in self.readers if r.status == 200)
        return {"opened": ok, "failed": count - ok, "errors": errors,
                "no_head": sum(1 for r in self.readers if not r.status)}  # fmt: skip

    async def _connect(self, port: int, path: str) -> FanReader:
        reader = FanReader(path, self.tally)
        transport, _ = await loadgen.open_stream(port, path, rst=True, reader=reader)
        self.readers.append(reader)
        self.transports.append(transport)
        return reader

    async def collect(self, events: int, timeout: float) -> dict[str, Any]:
        """Wait until every stream has ``events`` events (or ``timeout``), then the tally."""
        expected = len(self.readers) * events
        deadline = time.monotonic() + timeout
        quiet_since, last_total = time.monotonic(), -1
        timed_out = True
        while time.monotonic() < deadline:
            total = sum(r.received for r in self.readers)
            if total >= expected:
                timed_out = False
                break
            if total != last_total:
                quiet_since, last_total = time.monotonic(), total
            elif time.monotonic() - quiet_since > max(5.0, timeout / 6):
                timed_out = False
                break  # nothing arrived for a while: the rest is lost
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)  # duplicates trailing the last expected copy
        lost = duplicates = 0
        lost_by_event = [0] * events
        dup_by_event = [0] * events
        subscribers_short = subscribers_dup = ended = 0
        for reader in self.readers:
            row = reader.copies
            short = dup = False
            for index in range(events):
                n = row[index]
                if n == 0:
                    lost += 1
                    lost_by_event[index] += 1
                    short = True
                elif n > 1:
                    duplicates += n - 1
                    dup_by_event[index] += n - 1
                    dup = True
            subscribers_short += short
            subscribers_dup += dup
            ended += reader.done.done()
        tally = self.tally
        return {
            "subscribers": len(self.readers),
            "received": sum(r.received for r in self.readers),
            "lost": lost,
            "duplicates": duplicates,
            "subscribers_with_loss": subscribers_short,
            "subscribers_with_duplicates": subscribers_dup,
            "streams_ended": ended,
            "timed_out": timed_out,  # still receiving when the time was up
            "lost_by_event": lost_by_event,
            "duplicates_by_event": dup_by_event,
            "published_ns": tally.published_ns[:events],
            "first_ns": tally.first_ns[:events],
            "last_ns": tally.last_ns[:events],
        }

    def close(self) -> int:
        for transport in self.transports:
            transport.abort()
        closed = len(self.transports)
        self.transports.clear()
        return closed


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def serve() -> None:
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    subscribers = Subscribers()
    while True:
        line = await stdin.readline()
        if not line:
            subscribers.close()
            return
        command = json.loads(line)
        if command["cmd"] == "open":
            answer = await subscribers.open(
                command["port"], command["path"], command["count"], command.get("timeout", 60.0)
            )
        elif command["cmd"] == "collect":
            answer = await subscribers.collect(command["events"], command["timeout"])
        else:
            answer = {"closed": subscribers.close()}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()
        if command["cmd"] == "close":
            return


def main() -> None:
    raise_fd_limit()
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve())
    else:
        uvloop.run(serve())


if __name__ == "__main__":
    main()
