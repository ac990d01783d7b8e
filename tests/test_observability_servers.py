"""Metrics as a real server reports them, scraped from ``/flosse/metrics/`` and parsed with
``prometheus_client.parser``.

* uvicorn: a scripted scenario (streams that complete, that the client aborts, whose producer
  raises, that a connection limit refuses) leaves every sample exactly right, and the bytes
  counted for the completed streams are the bytes their clients received.
* gunicorn with 2 workers and ``PROMETHEUS_MULTIPROC_DIR``: one scrape, whichever worker
  answers it, adds up the streams both workers served.

Each test starts its own server, so the samples start from zero.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from django_flosse.testing import parse_events
from tests.support.observe import Samples, by_label, scrape, value
from tests.support.servers import LiveServer

pytestmark = [pytest.mark.server, pytest.mark.timeout(180)]

CLIENT_TIMEOUT = httpx.Timeout(10.0)
#: How long to wait for cancellations to reach the registry and the scrape (bounded).
SETTLE = 15.0
METRICS = "/flosse/metrics/"
GUNICORN_CONFIG = Path(__file__).with_name("gunicorn_multiproc.py")


def wait_for(
    server: LiveServer, done: Callable[[Samples], bool], what: str, timeout: float = SETTLE
) -> Samples:
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(server)
        if done(samples):
            return samples
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout} s\n{server.logs()[-4000:]}")
        time.sleep(0.1)


# ------------------------------------------------------------------------- clients


def read_whole_stream(base: str, path: str) -> bytes:
    """GET a finite stream and return every body byte exactly as received."""
    with httpx.Client(timeout=CLIENT_TIMEOUT) as client, client.stream("GET", base + path) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert "content-encoding" not in r.headers  # raw bytes are the bytes sent
        return b"".join(r.iter_raw())


def read_then_abort(base: str, path: str) -> int:
    """GET an endless stream, read until the first event arrived, then hang up."""
    received = b""
    with httpx.Client(timeout=CLIENT_TIMEOUT) as client, client.stream("GET", base + path) as r:
        assert r.status_code == 200
        for chunk in r.iter_raw():
            received += chunk
            if b"\n\n" in received:
                break
    # Leaving both blocks closes the unfinished response's connection: the client is gone.
    return len(received)


# ------------------------------------------------------------------------ uvicorn

N_COMPLETE = 4  # per flavour (sync and async views)
M_ABORT = 3
K_FAIL = 2
L_REJECT = 5
EVENTS_PER_STREAM = 5

STREAMS = {
    # flavour: (completing, endless, failing)
    "async": ("obs.async_count", "obs.async_endless", "obs.async_fails"),
    "sync": ("obs.count", "obs.endless", "obs.fails"),
}
PATHS = {
    "async": ("/obs/async-count/", "/obs/async-endless/", "/obs/async-fails/"),
    "sync": ("/obs/count/", "/obs/endless/", "/obs/fails/"),
}


def next_event(chunks: Iterator[bytes]) -> bytes:
    """The next chunk that carries an event. Keep-alive comments may come first: on a busy
    machine the producer's sleep can outlast the heartbeat, and the stream is streaming all
    the same (each read is bounded by the client's timeout)."""
    for chunk in chunks:
        if b"data:" in chunk:
            return chunk
    raise AssertionError("the stream ended")


def test_uvicorn_scenario_leaves_exact_metrics(
    live_server_factory: Callable[..., LiveServer],
) -> None:
    server = live_server_factory("uvicorn")
    base = server.url
    received_bytes: dict[str, int] = defaultdict(int)

    with ThreadPoolExecutor(max_workers=8) as pool:
        jobs = []
        for flavour, (complete, endless, fails) in PATHS.items():
            done_name = STREAMS[flavour][0]
            for _ in range(N_COMPLETE):
                jobs.append(
                    (
                        done_name,
                        pool.submit(read_whole_stream, base, f"{complete}?n={EVENTS_PER_STREAM}"),
                    )
                )
            for _ in range(M_ABORT):
                jobs.append(("aborted", pool.submit(read_then_abort, base, endless)))
            for _ in range(K_FAIL):
                jobs.append(("failed", pool.submit(read_whole_stream, base, fails)))
        for name, job in jobs:
            result = job.result(timeout=60)
            if isinstance(result, bytes):
                if name == "failed":
                    assert [e.event for e in parse_events(result)] == ["message", "error"]
                else:
                    assert len(parse_events(result)) == EVENTS_PER_STREAM
                    received_bytes[name] += len(result)

    # L requests refused while one client holds the only place of obs.held.
    with (
        httpx.Client(timeout=CLIENT_TIMEOUT) as holder,
        holder.stream("GET", base + "/obs/held/") as held,
    ):
        assert held.status_code == 200
        # Keep the iterator referenced: a collected one would close the connection.
        chunks = held.iter_raw()
        assert b"data:" in next_event(chunks)  # registered and streaming
        with httpx.Client(timeout=CLIENT_TIMEOUT) as other:
            for _ in range(L_REJECT):
                refused = other.get(base + "/obs/held/")
                assert refused.status_code == 503
                assert refused.headers["retry-after"] == "5"
        during = scrape(server)
        assert value(during, "flosse_connections_active", stream="obs.held") == 1
        assert b"data:" in next_event(chunks)  # still streaming after the refusals

    samples = wait_for(
        server,
        lambda s: not by_label(s, "flosse_connections_active", "stream"),
        "every connection closed (flosse_connections_active back to 0)",
    )

    opened = by_label(samples, "flosse_connections_opened_total", "stream")
    expected_opened = {"obs.held": 1}
    for complete, endless, fails in STREAMS.values():
        expected_opened |= {complete: N_COMPLETE, endless: M_ABORT, fails: K_FAIL}
    assert opened == expected_opened
    assert sum(opened.values()) == 2 * (N_COMPLETE + M_ABORT + K_FAIL) + 1

    for complete, endless, fails in STREAMS.values():
        assert by_label(samples, "flosse_connections_closed_total", "reason", stream=complete) == {
            "completed": N_COMPLETE
        }
        assert by_label(samples, "flosse_connections_closed_total", "reason", stream=endless) == {
            "cancelled": M_ABORT
        }
        assert by_label(samples, "flosse_connections_closed_total", "reason", stream=fails) == {
            "error": K_FAIL
        }
        assert value(samples, "flosse_events_sent_total", stream=complete) == (
            N_COMPLETE * EVENTS_PER_STREAM
        )
        # Every byte the server was handed for the completed streams reached their clients.
        assert (
            value(samples, "flosse_sent_bytes_total", stream=complete) == received_bytes[complete]
        )
        for name in (complete, endless, fails):
            assert (
                value(samples, "flosse_connection_duration_seconds_count", stream=name)
                == (expected_opened[name])
            )

    assert by_label(samples, "flosse_connections_closed_total", "reason", stream="obs.held") == {
        "cancelled": 1
    }
    rejected = {
        (dict(labels)["stream"], dict(labels)["reason"]): v
        for (name, labels), v in samples.items()
        if name == "flosse_connections_rejected_total" and v
    }
    assert rejected == {("obs.held", "stream_limit"): L_REJECT}
    # The producers that raised were logged once each; nothing else failed a request.
    logs = server.logs()
    assert logs.count("event='sse.stream.error'") == 2 * K_FAIL, logs
    assert "Exception in ASGI application" not in logs, logs


def test_uvicorn_metrics_refused_through_a_proxy(
    live_server_factory: Callable[..., LiveServer],
) -> None:
    server = live_server_factory("uvicorn")
    forwarded = httpx.get(
        server.url + METRICS, headers={"X-Forwarded-For": "203.0.113.5"}, timeout=CLIENT_TIMEOUT
    )
    assert forwarded.status_code == 403
    assert httpx.get(server.url + METRICS, timeout=CLIENT_TIMEOUT).status_code == 200


# ----------------------------------------------------------- gunicorn multiprocess

STREAMS_PER_ROUND = 10
MAX_ROUNDS = 12
PID_EVENTS = 3


def read_pid_stream(base: str) -> tuple[int, int]:
    """(the pid of the worker that served the stream, the bytes received)."""
    body = read_whole_stream(base, f"/obs/pid-stream/?n={PID_EVENTS}&every=0.15")
    events = parse_events(body)
    assert len(events) == PID_EVENTS
    pids = {json.loads(e.data)["pid"] for e in events}
    assert len(pids) == 1
    return pids.pop(), len(body)


def test_gunicorn_two_workers_scrape_aggregates_both(
    live_server_factory: Callable[..., LiveServer], tmp_path: Path
) -> None:
    multiproc_dir = tmp_path / "prometheus"
    multiproc_dir.mkdir()
    server = live_server_factory(
        "gunicorn",
        workers=2,
        threads=4,
        env={"PROMETHEUS_MULTIPROC_DIR": str(multiproc_dir)},
        extra_args=("-c", str(GUNICORN_CONFIG)),
    )

    served: dict[int, int] = defaultdict(int)
    total_bytes = 0
    rounds = 0
    # Concurrent streams that each last ~0.3 s, until both workers have served some.
    with ThreadPoolExecutor(max_workers=STREAMS_PER_ROUND) as pool:
        while len(served) < 2 or rounds < 2:
            assert rounds < MAX_ROUNDS, (
                f"only worker(s) {sorted(served)} served streams in {rounds} rounds\n"
                + server.logs()[-4000:]
            )
            futures = [pool.submit(read_pid_stream, server.url) for _ in range(STREAMS_PER_ROUND)]
            for future in futures:
                pid, size = future.result(timeout=60)
                served[pid] += 1
                total_bytes += size
            rounds += 1
    total = sum(served.values())
    assert len(served) == 2 and server.pid not in served  # the workers, not the master

    def aggregated(samples: Samples) -> bool:
        return (
            value(
                samples,
                "flosse_connections_closed_total",
                stream="obs.pid_stream",
                reason="completed",
            )
            == total
        )

    # Several scrapes: whichever worker answers, it reports both workers' streams.
    for _ in range(6):
        samples = wait_for(server, aggregated, f"the scrape counting all {total} streams")
        stream = {"stream": "obs.pid_stream"}
        assert value(samples, "flosse_connections_opened_total", **stream) == total
        assert value(samples, "flosse_connections_active", **stream) == 0
        assert value(samples, "flosse_events_sent_total", **stream) == total * PID_EVENTS
        assert value(samples, "flosse_sent_bytes_total", **stream) == total_bytes
        assert value(samples, "flosse_connection_duration_seconds_count", **stream) == total

    # Both workers wrote their own sample files.
    assert len(list(multiproc_dir.glob("counter_*.db"))) >= 2


def _zero_series(samples: Samples, stream: str) -> dict[str, float | None]:
    found = {}
    for reason in ("completed", "cancelled", "error", "lost"):
        key = (
            "flosse_connections_closed_total",
            frozenset({("stream", stream), ("reason", reason)}),
        )
        found[f"closed {reason}"] = samples.get(key)
    for reason in ("forbidden", "stream_limit"):
        key = (
            "flosse_connections_rejected_total",
            frozenset({("stream", stream), ("reason", reason)}),
        )
        found[f"rejected {reason}"] = samples.get(key)
    return found


@pytest.mark.parametrize("multiprocess", [False, True], ids=["uvicorn", "gunicorn-2-workers"])
def test_the_first_scrape_has_every_series_at_zero(
    live_server_factory: Callable[..., LiveServer], tmp_path: Path, multiprocess: bool
) -> None:
    """Before any connection, in single-process and multiprocess mode: Prometheus must see
    the zeros, or increase() misses the first error after every restart."""
    if multiprocess:
        multiproc_dir = tmp_path / "prometheus"
        multiproc_dir.mkdir()
        server = live_server_factory(
            "gunicorn",
            workers=2,
            threads=2,
            env={"PROMETHEUS_MULTIPROC_DIR": str(multiproc_dir)},
            extra_args=("-c", str(GUNICORN_CONFIG)),
        )
    else:
        server = live_server_factory("uvicorn")
    found = _zero_series(scrape(server), "obs.fails")
    assert found == dict.fromkeys(found, 0.0)
