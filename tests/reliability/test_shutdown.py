"""Graceful shutdown and ``max_duration``: streams end by themselves, servers exit on time.

``SIGTERM`` with a few hundred endless streams open (``def`` and ``async def`` views
alike): every client gets one final frame ``event: shutdown`` with a ``retry:`` hint, the
hints differ (jitter: clients do not all reconnect at the same moment), every
``sse.connection.closed`` line says ``reason='shutdown'``, and the server exits well within
its graceful timeout. uvicorn would otherwise wait for ever (``timeout_graceful_shutdown``
defaults to none); gunicorn would wait ``--graceful-timeout`` (set to 10 s here, so a
shutdown that did not end the streams shows as a 10 s exit) and then kill its worker.

``max_duration=1``: the stream ends with reason ``timeout`` and a final frame with
``retry:``, after a duration jittered down by up to 10%.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from typing import Any

import pytest

from tests.reliability.helpers import (
    LOGGING_SETTINGS,
    RawStream,
    closed_records,
    open_many,
    showing_logs,
)
from tests.servers import LiveServer

pytestmark = [
    pytest.mark.server,
    pytest.mark.timeout(180),
    pytest.mark.django_db(transaction=True),
]

ENV = {"DJANGO_SETTINGS_MODULE": LOGGING_SETTINGS}
#: uvicorn's exit must be well under this (it would wait for ever without the handler).
UVICORN_EXIT_BOUND = 5.0
GUNICORN_GRACEFUL = 10
#: gunicorn's worker lingers up to 2 s on kept-alive connections (gthread's
#: STOP_KEEPALIVE_LINGER) after the streams ended; the master waits for it.
GUNICORN_EXIT_BOUND = 8.0
RETRY_RANGE = range(1000, 2001)  # lifecycle.RECONNECT_AFTER_MS, jittered up to 2x

SHUTDOWN_CASES = [
    pytest.param("uvicorn", 100, 100, id="uvicorn-200-streams"),
    pytest.param("gunicorn", 40, 40, id="gunicorn-gthread-80-streams"),
    pytest.param("daphne", 50, 50, id="daphne-100-streams"),
]


def check_final_frame(stream: RawStream, reason: str) -> int:
    """The stream ended with exactly one final frame naming ``reason``; returns its retry."""
    events = stream.events()
    assert events, bytes(stream.data[:500])
    final = events[-1]
    assert final.get("event") == reason, events[-3:]
    assert json.loads(final["data"]) == {"reason": reason}, final
    assert "retry" in final, final
    retry = int(final["retry"])
    assert retry in RETRY_RANGE, final
    assert [e.get("event") for e in events].count(reason) == 1, events[-3:]
    # The response is complete (chunked terminator) rather than cut off.
    assert stream.data.endswith(b"0\r\n\r\n"), bytes(stream.data[-200:])
    return retry


@pytest.mark.parametrize(("kind", "n_async", "n_sync"), SHUTDOWN_CASES)
def test_sigterm_ends_every_stream_and_the_server_exits(
    live_server_factory: Any, figure: Any, kind: str, n_async: int, n_sync: int
) -> None:
    n = n_async + n_sync
    extra = ("--graceful-timeout", str(GUNICORN_GRACEFUL)) if kind == "gunicorn" else ()
    server: LiveServer = live_server_factory(kind, env=ENV, extra_args=extra, threads=n + 20)
    with showing_logs(server, tail=80):

        async def run() -> tuple[list[RawStream], float, float]:
            streams = await open_many(server.port, "/rel/endless/?every=0.5", n_async)
            streams += await open_many(server.port, "/rel/sync-endless/?every=0.5", n_sync)
            sent = time.monotonic()
            server.send_signal(signal.SIGTERM)
            ended = await asyncio.gather(*(s.wait_complete(20) for s in streams))
            assert all(ended), f"{ended.count(False)} streams still open 20 s after SIGTERM"
            last = time.monotonic() - sent
            await asyncio.gather(*(s.wait_eof(20) for s in streams))  # the server closes them
            return streams, sent, last

        streams, sent, last_eof = asyncio.run(run())
        server.wait(GUNICORN_GRACEFUL + 10)
        exited = time.monotonic() - sent

        retries = [check_final_frame(s, "shutdown") for s in streams]
        closed = closed_records(server, "rel.endless") + closed_records(server, "rel.sync_endless")
        assert len(closed) == n, f"{len(closed)} closed lines for {n} streams"
        assert {r["reason"] for r in closed} == {"shutdown"}, {r["reason"] for r in closed}
        distinct = len(set(retries))
        figure(
            f"{kind}: {n} streams, SIGTERM -> every response complete (final frame) "
            f"within {last_eof:.2f} s, process exited after {exited:.2f} s; retry hints "
            f"{min(retries)}-{max(retries)} ms, {distinct} distinct"
        )
        assert distinct >= n // 2, f"retry hints are not jittered: {sorted(set(retries))}"
        bound = UVICORN_EXIT_BOUND if kind == "uvicorn" else GUNICORN_EXIT_BOUND
        assert exited < bound, f"{kind} exited {exited:.2f} s after SIGTERM"
        assert "Traceback" not in server.logs()


@pytest.mark.parametrize("kind", ["uvicorn", "gunicorn", "daphne"])
def test_max_duration_ends_streams_with_timeout(
    live_server_factory: Any, figure: Any, kind: str
) -> None:
    n = 10  # per view: async and sync
    server: LiveServer = live_server_factory(kind, env=ENV, threads=2 * n + 8)
    with showing_logs(server, tail=80):

        async def run() -> list[RawStream]:
            streams = await open_many(server.port, "/rel/max-duration/", n)
            streams += await open_many(server.port, "/rel/sync-max-duration/", n)
            ended = await asyncio.gather(*(s.wait_complete(10) for s in streams))
            assert all(ended), f"{ended.count(False)} streams outlived max_duration by 9 s"
            for stream in streams:
                stream.close()
            return streams

        started = time.monotonic()
        streams = asyncio.run(run())
        took = time.monotonic() - started
        retries = [check_final_frame(s, "timeout") for s in streams]
        deadline = time.monotonic() + 10
        closed: list[dict[str, str]] = []
        while len(closed) < 2 * n and time.monotonic() < deadline:
            closed = closed_records(server, "rel.max_duration") + closed_records(
                server, "rel.sync_max_duration"
            )
            time.sleep(0.05)
        assert len(closed) == 2 * n, closed
        assert {r["reason"] for r in closed} == {"timeout"}, closed
        durations = sorted(float(r["duration"]) for r in closed)
        figure(
            f"{kind}: max_duration=1 -> {2 * n} streams ended 'timeout' after "
            f"{durations[0]:.3f}-{durations[-1]:.3f} s ({len(set(durations))} distinct), "
            f"retry hints {min(retries)}-{max(retries)} ms; all done in {took:.2f} s"
        )
        # Jittered down by up to 10%: between 0.9 s and 1 s, plus the time to notice.
        assert durations[0] >= 0.85, durations
        assert durations[-1] < 1.6, durations
        assert durations[-1] - durations[0] >= 0.01, f"durations not jittered: {durations}"
        assert len(set(retries)) > 1, retries
