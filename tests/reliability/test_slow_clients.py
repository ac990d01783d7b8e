"""Slow and stuck clients: one client that stops reading must cost only its own stream.

A stuck client sends its request and never reads (a 4 kB receive buffer, no ``recv``) a
stream that produces 4 kB events as fast as it can. On uvicorn the server's flow control
stops that stream's sends; meanwhile another stream keeps its pace (20 events/s), a new
stream gets its first event at once, and the server's RSS stays flat (the stuck stream's
data is not queued without bound). With ``send_timeout=2`` the stuck stream ends with
reason ``timeout`` a few seconds later. Under gunicorn gthread a stuck write blocks one
thread: another stream served by the same worker keeps streaming.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tests.support.observe import closed_records, showing_logs, wait_until
from tests.support.processes import rss_mb
from tests.support.servers import LOGGING_SETTINGS, LiveServer
from tests.support.wire import RawStream, get_json, rst_close, stuck_socket

pytestmark = [
    pytest.mark.server,
    pytest.mark.timeout(180),
    pytest.mark.django_db(transaction=True),
]

ENV = {"DJANGO_SETTINGS_MODULE": LOGGING_SETTINGS}
PACE_PATH = "/rel/endless/?every=0.05"  # 20 events/s
EXPECTED_RATE = 20.0
#: On a busy 2-core machine the other stream must keep at least this share of its pace.
MIN_RATE = 0.7 * EXPECTED_RATE
FIRST_EVENT_BOUND = 1.0


def bytes_sent(server: LiveServer, stream: str) -> int:
    value: int = get_json(server, "/rel/state/")["bytes_by_stream"].get(stream, 0)
    return value


def wait_blocked(server: LiveServer, stream: str, timeout: float = 15.0) -> int:
    """Wait until the stream's byte count stops moving (the client's buffers are full)."""
    deadline = time.monotonic() + timeout
    last = -1
    while time.monotonic() < deadline:
        now = bytes_sent(server, stream)
        if now == last and now > 0:
            return now
        last = now
        time.sleep(0.5)
    raise AssertionError(f"{stream} never stopped sending: {last} bytes")


async def pace(server: LiveServer, seconds: float) -> tuple[float, float]:
    """(first-event latency, events/s) of a new PACE_PATH stream read for ``seconds``."""
    started = time.monotonic()
    stream = await RawStream.open(server.port, PACE_PATH)
    try:
        assert await stream.wait_for(b"data: ", 5), bytes(stream.data)
        first = time.monotonic() - started
        t0, n0 = time.monotonic(), len(stream.events())
        await asyncio.sleep(seconds)
        rate = (len(stream.events()) - n0) / (time.monotonic() - t0)
        return first, rate
    finally:
        stream.rst()


def test_stuck_client_costs_only_its_own_stream_on_uvicorn(
    live_server_factory: Any, figure: Any
) -> None:
    server: LiveServer = live_server_factory("uvicorn", env=ENV)
    with showing_logs(server, tail=60):
        first_alone, rate_alone = asyncio.run(pace(server, 2.0))
        rss_before = rss_mb(server.pid)
        sock = stuck_socket(server.port, "/rel/flood/")
        try:
            held = wait_blocked(server, "rel.flood")
            samples = [rss_mb(server.pid)]

            async def measure() -> tuple[float, float]:
                task = asyncio.create_task(pace(server, 4.0))
                for _ in range(16):  # RSS every 0.25 s while the other stream runs
                    await asyncio.sleep(0.25)
                    samples.append(rss_mb(server.pid))
                return await task

            first, rate = asyncio.run(measure())
            assert get_json(server, "/rel/state/")["active_by_stream"].get("rel.flood") == 1
            figure(
                f"uvicorn: stuck client held at {held / 1024:.0f} kB sent; other stream "
                f"{rate:.1f} events/s (alone {rate_alone:.1f}), first event "
                f"{first * 1000:.0f} ms (alone {first_alone * 1000:.0f} ms); RSS before "
                f"{rss_before:.1f} MB, while stuck {min(samples):.1f}-{max(samples):.1f} MB"
            )
            assert rate >= MIN_RATE, f"other stream slowed to {rate:.1f} events/s"
            assert first < FIRST_EVENT_BOUND, f"first event after {first:.2f} s"
            # Flat: the stuck stream's data is not queued in the server without bound.
            assert max(samples) - samples[0] < 5.0, samples
            assert max(samples) - rss_before < 20.0, (rss_before, samples)
            assert bytes_sent(server, "rel.flood") - held < 256 * 1024
        finally:
            rst_close(sock)
        # When the stuck client finally goes away, its stream ends as cancelled.
        assert wait_until(lambda: bool(closed_records(server, "rel.flood")), 10) is not None
        assert closed_records(server, "rel.flood")[-1]["reason"] == "cancelled"
        assert get_json(server, "/rel/state/")["finally"].get("rel.flood") == 1


def test_send_timeout_ends_a_stuck_stream(live_server_factory: Any, figure: Any) -> None:
    server: LiveServer = live_server_factory("uvicorn", env=ENV)
    with showing_logs(server, tail=60):
        started = time.monotonic()
        sock = stuck_socket(server.port, "/rel/flood-timeout/")
        try:
            took = wait_until(lambda: bool(closed_records(server, "rel.flood_timeout")), 15)
            assert took is not None, "the stuck stream never ended"
            took = time.monotonic() - started
            record = closed_records(server, "rel.flood_timeout")[-1]
            figure(
                f"uvicorn: send_timeout=2 -> stuck stream ended '{record['reason']}' "
                f"{took:.2f} s after the request ({record['bytes']} bytes sent)"
            )
            assert record["reason"] == "timeout", record
            # Blocked within a fraction of a second, then 2 s plus at most one check period.
            assert took < 2 * 3, f"ended after {took:.2f} s"
            ran = wait_until(
                lambda: get_json(server, "/rel/state/")["finally"].get("rel.flood_timeout") == 1,
                5,
            )
            assert ran is not None, "the producer's finally did not run"
            assert get_json(server, "/rel/state/")["active"] == 0
        finally:
            rst_close(sock)


def test_stuck_client_ties_up_only_its_thread_on_gunicorn(
    live_server_factory: Any, figure: Any
) -> None:
    server: LiveServer = live_server_factory("gunicorn", env=ENV, threads=4, workers=1)
    with showing_logs(server, tail=60):
        sock = stuck_socket(server.port, "/rel/sync-flood/")
        try:
            held = wait_blocked(server, "rel.sync_flood")
            first, rate = asyncio.run(pace(server, 3.0))
            state = get_json(server, "/rel/state/")
            figure(
                f"gunicorn gthread: stuck client blocks its thread at {held / 1024:.0f} kB "
                f"sent; another stream on the same worker: first event "
                f"{first * 1000:.0f} ms, {rate:.1f} events/s"
            )
            assert state["active_by_stream"].get("rel.sync_flood") == 1, state
            assert first < FIRST_EVENT_BOUND, f"first event after {first:.2f} s"
            assert rate >= MIN_RATE, f"other stream at {rate:.1f} events/s"
        finally:
            rst_close(sock)
        # The blocked write fails once the client is gone: the stream ends, cancelled.
        assert wait_until(lambda: bool(closed_records(server, "rel.sync_flood")), 10) is not None
        assert closed_records(server, "rel.sync_flood")[-1]["reason"] == "cancelled"
