"""Helpers for the broadcast tests: a PostgreSQL alias, SSE readers of real servers (the
in-process subscriber thread is ``tests.support.subscribing.Reader``).

- ``pg_alias``: adds a Django database alias (``"pg"``) for the cluster of
  ``tests/support/postgres.py`` to the running test process, and removes it afterwards.
- ``SSEReader``: one SSE stream of a real server read in a thread (httpx), its events
  parsed; ``last_id`` is what a reconnecting browser would send back.
- ``stamped_stream``: an asyncio SSE reader that measures publish-to-receive lags.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx

from tests.support.observe import wait_until
from tests.support.servers import HOST

WAIT = 30.0  # seconds any single condition may take on a loaded machine


@contextlib.contextmanager
def pg_alias(cluster: Any, alias: str = "pg") -> Iterator[str]:
    """A database alias of this process for ``cluster`` (the tables are migrated)."""
    from django.db import connections

    env = cluster.env()
    configured = connections.configure_settings(
        {
            "default": dict(connections.settings["default"]),
            alias: {
                "ENGINE": "django.db.backends.postgresql",
                "HOST": env["FLOSSE_PG_HOST"],
                "PORT": env["FLOSSE_PG_PORT"],
                "NAME": env["FLOSSE_PG_NAME"],
                "USER": env["FLOSSE_PG_USER"],
            },
        }
    )
    connections.settings[alias] = configured[alias]
    try:
        yield alias
    finally:
        connections[alias].close()
        del connections[alias]
        del connections.settings[alias]


def parse_sse(lines: list[str]) -> list[dict[str, str]]:
    """The events of some SSE lines (comments skipped; data lines joined)."""
    events, current = [], {}  # type: ignore[var-annotated]
    for line in lines:
        if not line:
            if current:
                events.append(current)
            current = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            current[name] = current[name] + "\n" + value if name in current else value
    return events


class SSEReader(threading.Thread):
    """An SSE stream read in a thread; ``events`` are its complete events so far."""

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(name=f"sse {url}", daemon=True)
        self.url = url
        self.headers = headers or {}
        self.lines: list[str] = []
        self.status: int | None = None
        self.error: BaseException | None = None
        self.ended = threading.Event()
        self._leave = threading.Event()

    def run(self) -> None:
        try:
            timeout = httpx.Timeout(10.0, read=60.0)
            with (
                httpx.Client(timeout=timeout) as client,
                client.stream("GET", self.url, headers=self.headers) as response,
            ):
                self.status = response.status_code
                for line in response.iter_lines():
                    self.lines.append(line)
                    if self._leave.is_set():
                        return
        except (httpx.HTTPError, OSError) as exc:
            self.error = exc
        finally:
            self.ended.set()

    @property
    def events(self) -> list[dict[str, str]]:
        complete = list(self.lines)
        while complete and complete[-1] != "":
            complete.pop()  # an event is complete at its blank line
        return [e for e in parse_sse(complete) if "data" in e]

    def data(self, event: str | None = None) -> list[str]:
        return [e["data"] for e in self.events if event is None or e.get("event") == event]

    @property
    def last_id(self) -> str:
        ids = [e["id"] for e in self.events if "id" in e]
        return ids[-1] if ids else ""

    def started(self, timeout: float = WAIT) -> bool:
        """The response headers arrived (the view runs; it subscribes right after)."""
        return (
            wait_until(lambda: self.status is not None or self.ended.is_set(), timeout) is not None
        )

    def leave(self) -> None:
        self._leave.set()
        self.join(15)


async def stamped_stream(
    port: int, path: str, joined: list[bool], count: int, lags: list[float], timeout: float
) -> list[str]:
    """Read one SSE stream until ``count`` stamped events came (data ``<name> <time.time()
    at publish>``), appending each one's publish-to-receive lag to ``lags``. A warm-up
    event (data ``warm...``) appends True to ``joined``: the subscriber has joined."""
    reader, writer = await asyncio.open_connection(HOST, port)
    # HTTP/1.0: the body is the stream itself, no chunk framing between the lines.
    writer.write(f"GET {path} HTTP/1.0\r\nHost: {HOST}:{port}\r\n\r\n".encode())
    names: list[str] = []
    warm = False

    async def read() -> None:
        nonlocal warm
        while len(names) < count:
            line = await reader.readline()
            if not line:
                break
            if not line.startswith(b"data: "):
                continue
            if line.startswith(b"data: warm"):
                if not warm:
                    warm = True
                    joined.append(True)
                continue
            name, stamp = line[6:].split()
            lags.append(time.time() - float(stamp))
            names.append(name.decode())

    try:
        await asyncio.wait_for(read(), timeout)  # not asyncio.timeout(): Python 3.10
    finally:
        writer.close()
    return names
