"""What a stream left behind: log records, metric samples and a server's own state report.

- Logs of a real server: the servers run ``tests.settings_server``, whose LOGGING config
  prints the ``django_flosse`` logger's records with structlog's key=value renderer::

      INFO django_flosse event='sse.connection.closed' connection_id='…' stream='…' reason='…'

  ``flosse_records`` parses them out of ``LiveServer.logs()``; the helpers after it find one
  connection's records, waiting for them (bounded: the server logs a close after the client
  has seen the stream end). ``stdlib_records`` is the in-process equivalent, from ``caplog``.
- Metrics: ``sample`` reads prometheus_client's registry of this process (check differences
  before/after: it lives for the whole session); ``scrape`` reads a server's metrics view.
- ``state``: the ``/rel/state/`` report of ``tests.views.rel_state`` (active connections,
  ``finally`` blocks run, open history rows, RSS, Python objects).

pytest and prometheus_client are imported inside the functions that need them: the soak run
imports this module from ``bench/.venv``.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from tests.support.servers import LiveServer
from tests.support.wire import get_json

if TYPE_CHECKING:
    import logging

    import pytest

#: How long to wait for a log line that is not itself the thing measured.
SETTLE = 8.0
METRICS_PATH = "/flosse/metrics/"

# --------------------------------------------------------------------------- server logs

_PAIR = re.compile(r"(\w+)=('(?:[^'\\]|\\.)*'|\S+)")


def flosse_records(server: LiveServer) -> list[dict[str, str]]:
    """The ``sse.*`` log records of the server, as ``{key: value}`` (values unquoted)."""
    records = []
    for line in server.logs().splitlines():
        if " django_flosse event='sse." not in line:
            continue
        pairs = _PAIR.findall(line.split(" django_flosse ", 1)[1])
        records.append({k: v[1:-1] if v.startswith("'") else v for k, v in pairs})
    return records


def closed_records(server: LiveServer, stream: str | None = None) -> list[dict[str, str]]:
    return [
        r
        for r in flosse_records(server)
        if r.get("event") == "sse.connection.closed" and (stream is None or r["stream"] == stream)
    ]


def connection_ids(
    server: LiveServer, stream: str, event: str = "sse.connection.opened"
) -> set[str]:
    return {
        r["connection_id"]
        for r in flosse_records(server)
        if r.get("event") == event and r.get("stream") == stream
    }


def new_connection(server: LiveServer, stream: str, before: set[str]) -> str:
    """The id of the one connection of ``stream`` opened since ``before`` was taken."""
    deadline = time.monotonic() + SETTLE
    while True:
        new = connection_ids(server, stream) - before
        if len(new) == 1:
            return new.pop()
        assert len(new) <= 1, f"expected one new {stream} connection, got {new}"
        assert time.monotonic() < deadline, f"no sse.connection.opened for {stream} in the log"
        time.sleep(0.02)


def wait_closed(server: LiveServer, connection_id: str, timeout: float = SETTLE) -> dict[str, str]:
    """The ``sse.connection.closed`` record of one connection (waits for it, bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        for r in flosse_records(server):
            if (
                r.get("event") == "sse.connection.closed"
                and r.get("connection_id") == connection_id
            ):
                return r
        assert time.monotonic() < deadline, f"connection {connection_id} never logged closed"
        time.sleep(0.02)


def assert_all_closed(server: LiveServer, timeout: float = SETTLE) -> None:
    """Every connection the server logged as opened was logged as closed (bounded wait)."""
    deadline = time.monotonic() + timeout
    while True:
        records = flosse_records(server)
        opened = {r["connection_id"] for r in records if r.get("event") == "sse.connection.opened"}
        closed = {r["connection_id"] for r in records if r.get("event") == "sse.connection.closed"}
        if opened <= closed:
            return
        assert time.monotonic() < deadline, (
            f"connections never closed on {server!r}: {sorted(opened - closed)}\n{server.logs()}"
        )
        time.sleep(0.05)


@contextlib.contextmanager
def showing_logs(*servers: LiveServer, tail: int = 200) -> Iterator[None]:
    """Print the servers' logs (their last ``tail`` lines) if the block fails (pytest shows
    them with the failure)."""
    try:
        yield
    except BaseException:
        for server in servers:
            lines = server.logs().splitlines()
            print("\n".join([*lines[:3], "...", *lines[-tail:]]))
        raise


def stdlib_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The records of the stdlib logger ``django_flosse`` that ``caplog`` captured."""
    return [r for r in caplog.records if r.name == "django_flosse"]


# --------------------------------------------------------------------------- metrics

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def sample(name: str, **labels: str) -> float:
    """The current value of one sample of this process (0 when it was never touched)."""
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels) or 0.0


def scrape(server: LiveServer, timeout: float = 10.0) -> Samples:
    """Every sample the server's metrics view serves, by (name, labels)."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    response = httpx.get(server.url + METRICS_PATH, timeout=timeout)
    assert response.status_code == 200, response.text
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample of a scrape, by its exact labels (0 when absent)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def by_label(samples: Samples, name: str, key: str, **labels: str) -> dict[str, float]:
    """``{label value: sample value}`` of every sample of ``name`` matching ``labels``."""
    result: dict[str, float] = {}
    for (sample_name, sample_labels), v in samples.items():
        found = dict(sample_labels)
        if sample_name == name and all(found.get(k) == w for k, w in labels.items()):
            result[found[key]] = v
    return {k: v for k, v in result.items() if v}


def active_gauge(server: LiveServer, stream: str) -> float:
    """``flosse_connections_active`` of one stream, as the server's metrics view says."""
    return value(scrape(server), "flosse_connections_active", stream=stream)


# --------------------------------------------------------------------------- server state


def state(server: LiveServer, gc: bool = False) -> dict[str, Any]:
    """The server's ``/rel/state/?rows=1`` report (``gc``: with a Python object count)."""
    result: dict[str, Any] = get_json(server, "/rel/state/?rows=1" + ("&gc=1" if gc else ""))
    return result


def wait_until(check: Callable[[], bool], timeout: float, interval: float = 0.05) -> float | None:
    """Seconds until ``check()`` was true, or None at the deadline (bounded)."""
    start = time.monotonic()
    while True:
        if check():
            return time.monotonic() - start
        if time.monotonic() - start >= timeout:
            return None
        time.sleep(interval)
