"""End to end: real uvicorn, daphne, hypercorn and granian (ASGI) and gunicorn gthread and
granian (WSGI) servers, real SSE clients.

Every combination of view (``def`` / ``async def``) and server is checked for what only a real
server shows: the first event of an endless stream arrives at once, events arrive one by one,
a client that goes away gets its view's ``finally`` run promptly (and the close reason is
``cancelled``), heartbeats flow while the producer is idle, headers and GZip behave, errors
reach the client as one generic frame, and Django's "must consume ... iterators" warning
(a stream buffered whole) never shows up in any server's log.

The servers run ``tests.settings_server`` (``tests.settings`` plus a ``LOGGING`` config that
prints the ``django_flosse`` logger's INFO records to stderr, where ``LiveServer.logs()``
reads them) or ``tests.settings_gzip`` (the same with ``GZipMiddleware``). They come from the
module's ``server_pool``: started on first use and shared by the tests of this module.

Run with ``-s`` to see the measured first-event and cleanup times (a table at the end).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import time
import urllib.parse
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from httpx_sse import EventSource, connect_sse

from django_flosse.testing import parse_events
from tests.support.observe import (
    SETTLE,
    assert_all_closed,
    connection_ids,
    flosse_records,
    new_connection,
    showing_logs,
    wait_closed,
)
from tests.support.processes import settled_thread_count, thread_count
from tests.support.servers import KINDS as SERVER_KINDS
from tests.support.servers import LOGGING_SETTINGS, LiveServer, ServerPool
from tests.support.wire import raw_open, raw_read_until, rst_close

pytestmark = [pytest.mark.server, pytest.mark.timeout(120)]

GZIP_SETTINGS = "tests.settings_gzip"

KINDS = SERVER_KINDS
#: The ASGI servers whose disconnect cancels the producer at its await (checked here).
ASGI_CANCELS = ("uvicorn", "hypercorn", "granian-asgi", "daphne")
FLAVOURS = ("sync", "async")
COMBOS = [
    pytest.param(flavour, kind, id=f"{flavour}-{kind}") for kind in KINDS for flavour in FLAVOURS
]

ENDLESS = {"sync": "/sync/endless/", "async": "/async/endless/"}
ENDLESS_NAME = {"sync": "tests.views.sync_endless", "async": "tests.views.async_endless"}

#: An endless view's first event must arrive this soon after the request (a local server).
FIRST_EVENT_BOUND = 1.0
#: A view's ``finally`` must run this soon after the client disconnects. The sync view under
#: a WSGI server learns of the disconnect only when a write fails (its heartbeat is 1 s).
CLEANUP_BOUND = {("sync", "gunicorn"): 3.0, ("sync", "granian-wsgi"): 3.0}
DEFAULT_CLEANUP_BOUND = 2.0
#: Django's warning when it buffers a streaming response whole.
MUST_CONSUME = "must consume"

CLIENT_TIMEOUT = httpx.Timeout(5.0)

#: (what, combination, seconds), printed as a table when the module's servers stop.
TIMINGS: list[tuple[str, str, float]] = []


# --------------------------------------------------------------------------- servers


@pytest.fixture(scope="module")
def servers(server_pool: ServerPool) -> Iterator[ServerPool]:
    try:
        yield server_pool
        # Module teardown: every connection any server opened was closed (nothing left
        # running), and no server ever buffered a stream whole.
        for server in server_pool.shared():
            assert_all_closed(server)
            assert MUST_CONSUME not in server.logs(), server.logs()
    finally:
        print_timings()


@pytest.fixture(autouse=True)
def _no_buffering_warning(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test: no new "must consume ... iterators" warning in any server's log."""
    if "servers" not in request.fixturenames:
        yield
        return
    pool: ServerPool = request.getfixturevalue("servers")
    seen = {id(server): server.logs().count(MUST_CONSUME) for server in pool.shared()}
    yield
    for server in pool.shared():
        logs = server.logs()
        assert logs.count(MUST_CONSUME) == seen.get(id(server), 0), (
            f"Django buffered a stream whole (a server logged {MUST_CONSUME!r}):\n{logs}"
        )


def record(what: str, combo: str, seconds: float) -> None:
    TIMINGS.append((what, combo, seconds))
    print(f"\n[timing] {what:<34} {combo:<22} {seconds * 1000:8.1f} ms")


def print_timings() -> None:
    if not TIMINGS:
        return
    print("\n\nMeasured times (ms)")
    print(f"{'what':<34} {'combination':<22} {'ms':>8}")
    for what, combo, seconds in TIMINGS:
        print(f"{what:<34} {combo:<22} {seconds * 1000:8.1f}")


# --------------------------------------------------------------------------- clients


def query(path: str, **params: object) -> str:
    return f"{path}?{urllib.parse.urlencode(params)}" if params else path


def wait_for_marker(marker: Path, since: float, timeout: float) -> tuple[float | None, str]:
    """Poll until the view wrote ``marker``, at most until ``since + timeout``.

    Returns the seconds from ``since`` (a ``time.monotonic()``) to seeing it, or ``None``,
    and the marker's content.
    """
    deadline = since + timeout
    while True:
        with contextlib.suppress(FileNotFoundError):
            text = marker.read_text()
            if text:
                return time.monotonic() - since, text
        if time.monotonic() >= deadline:
            return None, ""
        time.sleep(0.01)


def intervals(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


# --------------------------------------------------------------------------- 1. first event


@pytest.mark.parametrize(("flavour", "kind"), COMBOS)
def test_first_event_at_once_then_one_by_one(
    servers: ServerPool, tmp_path: Path, flavour: str, kind: str
) -> None:
    server = servers.get(kind, LOGGING_SETTINGS)
    combo = f"{flavour}-{kind}"
    marker = tmp_path / "marker"
    before = connection_ids(server, ENDLESS_NAME[flavour])
    with showing_logs(server):
        arrivals: list[float] = []
        items: list[tuple[str, object]] = []
        with httpx.Client(timeout=CLIENT_TIMEOUT) as client:
            start = time.monotonic()
            url = server.url + query(ENDLESS[flavour], every=0.1, marker=marker)
            with connect_sse(client, "GET", url) as source:
                assert source.response.status_code == 200
                for sse in source.iter_sse():
                    arrivals.append(time.monotonic() - start)
                    items.append((sse.event, json.loads(sse.data)))
                    if len(items) == 5 or time.monotonic() - start > 10:
                        break
                closed_at = time.monotonic()  # leaving the block closes the response
        # Closing the client closed the connection (FIN) in the middle of the stream.
        cleanup, text = wait_for_marker(marker, closed_at, SETTLE)

        record("first event", combo, arrivals[0])
        assert arrivals[0] < FIRST_EVENT_BOUND, f"first event after {arrivals[0]:.3f} s"
        assert items == [("tick", {"i": i}) for i in range(5)]
        # Produced 0.1 s apart, they arrive spread out, each soon after the previous one
        # (a buffered stream would deliver nothing, or everything at once).
        gaps = intervals(arrivals)
        assert arrivals[-1] - arrivals[0] >= 0.25, f"events arrived in a burst: {arrivals}"
        assert max(gaps) < 1.0, f"an event was held back: gaps {gaps}"

        assert cleanup is not None, "the view's finally did not run after the client closed"
        record("finally after client close (FIN)", combo, cleanup)
        assert text == "closed"
        closed = wait_closed(server, new_connection(server, ENDLESS_NAME[flavour], before))
        assert closed["reason"] == "cancelled", closed


# --------------------------------------------------------------------------- 2. disconnect

DISCONNECTS = [
    *(
        pytest.param(flavour, kind, 0.1, id=f"{flavour}-{kind}")
        for kind in KINDS
        for flavour in FLAVOURS
    ),
    # An async producer idle in a long await: the ASGI servers cancel it at once; the WSGI
    # ones (gunicorn, granian) learn of the disconnect from the next heartbeat write (1 s)
    # and then cancel it.
    *(pytest.param("async", kind, 30, id=f"async-{kind}-idle") for kind in KINDS),
]


@pytest.mark.parametrize(("flavour", "kind", "every"), DISCONNECTS)
def test_abrupt_disconnect_runs_finally(
    servers: ServerPool, tmp_path: Path, flavour: str, kind: str, every: float
) -> None:
    server = servers.get(kind, LOGGING_SETTINGS)
    combo = f"{flavour}-{kind}" + ("-idle" if every > 1 else "")
    marker = tmp_path / "marker"
    stream = ENDLESS_NAME[flavour]
    before = connection_ids(server, stream)
    with showing_logs(server):
        sock = raw_open(server.port, query(ENDLESS[flavour], every=every, marker=marker))
        try:
            raw_read_until(sock, b'data: {"i": 0}\n\n', timeout=5)
        finally:
            disconnected_at = time.monotonic()
            rst_close(sock)
        bound = CLEANUP_BOUND.get((flavour, kind), DEFAULT_CLEANUP_BOUND)
        cleanup, text = wait_for_marker(marker, disconnected_at, bound)
        assert cleanup is not None, f"the view's finally did not run within {bound} s of a RST"
        record("finally after RST", combo, cleanup)
        assert text == "closed"
        closed = wait_closed(server, new_connection(server, stream, before))
        assert closed["reason"] == "cancelled", closed
        assert int(closed["events"]) >= 1, closed


# --------------------------------------------------------------------------- 3. swallowed cancel


@pytest.mark.parametrize("kind", KINDS)
def test_swallowed_cancellation_ends_as_cancelled(
    servers: ServerPool, tmp_path: Path, kind: str
) -> None:
    """A generator that catches CancelledError and returns is cancelled, not completed."""
    server = servers.get(kind, LOGGING_SETTINGS)
    marker = tmp_path / "marker"
    stream = "tests.views.async_swallows_cancel"
    before = connection_ids(server, stream)
    with showing_logs(server):
        sock = raw_open(server.port, query("/async/swallows/", marker=marker))
        try:
            raw_read_until(sock, b'data: {"i": 0}\n\n', timeout=5)
        finally:
            disconnected_at = time.monotonic()
            rst_close(sock)
        closed = wait_closed(server, new_connection(server, stream, before))
        assert closed["reason"] == "cancelled", closed
        if kind in ASGI_CANCELS:
            # Under ASGI the producer gets CancelledError at its await and swallows it.
            cleanup, text = wait_for_marker(marker, disconnected_at, DEFAULT_CLEANUP_BOUND)
            assert cleanup is not None, "the generator never saw CancelledError"
            record("swallowed CancelledError", f"async-{kind}", cleanup)
            assert text == "swallowed"
        # Under WSGI the server closes the response after a failed write: the generator is
        # closed at its yield (GeneratorExit), never cancelled, so it writes no marker; the
        # reason is cancelled all the same.


# --------------------------------------------------------------------------- 4. heartbeats


def read_lines(response: httpx.Response, until: int, deadline: float) -> list[tuple[float, str]]:
    """(arrival time, line) pairs until ``until`` keep-alives after ``data: first``, or the end."""
    start = time.monotonic()
    lines: list[tuple[float, str]] = []
    keepalives = 0
    for line in response.iter_lines():
        lines.append((time.monotonic() - start, line))
        if line == ": keep-alive":
            keepalives += 1
            if keepalives == until:
                break
        assert time.monotonic() < deadline, f"still reading at the deadline: {lines}"
    return lines


@pytest.mark.parametrize(("flavour", "kind"), COMBOS)
def test_heartbeats_while_idle(servers: ServerPool, flavour: str, kind: str) -> None:
    server = servers.get(kind, LOGGING_SETTINGS)
    name = f"tests.views.{flavour}_idle"
    before = connection_ids(server, name)
    # The sync producer sleeps 2 s between its two events; the async one sleeps for an hour.
    path = "/sync/idle/?sleep=2" if flavour == "sync" else "/async/idle/"
    with showing_logs(server), httpx.Client(timeout=CLIENT_TIMEOUT) as client:
        with client.stream("GET", server.url + path) as response:
            assert response.status_code == 200
            # Sync: read to the end (the late event must come). Async: three keep-alives.
            lines = read_lines(
                response, until=10**6 if flavour == "sync" else 3, deadline=time.monotonic() + 10
            )
        text = [line for _, line in lines]
        assert text[:2] == ["data: first", ""], lines
        keepalive_times = [t for t, line in lines if line == ": keep-alive"]
        # heartbeat=0.2 s: a 2 s idle producer is covered by several comments, not just one.
        assert len(keepalive_times) >= 3, lines
        assert all(gap < 1.0 for gap in intervals(keepalive_times)), lines
        closed = wait_closed(server, new_connection(server, name, before))
        if flavour == "sync":
            # Heartbeats never cancel the pending step: the late event still arrives, and the
            # stream ends normally after it.
            late = [t for t, line in lines if line == "data: late"]
            assert late, lines
            assert keepalive_times[0] < late[0], lines
            assert [line for line in text if line.startswith("data:")] == [
                "data: first",
                "data: late",
            ]
            assert closed["reason"] == "completed", closed
        else:
            assert closed["reason"] == "cancelled", closed


# --------------------------------------------------------------------------- 5. headers


@pytest.mark.parametrize(("flavour", "kind"), COMBOS)
def test_headers(servers: ServerPool, flavour: str, kind: str) -> None:
    server = servers.get(kind, LOGGING_SETTINGS)
    with showing_logs(server), httpx.Client(timeout=CLIENT_TIMEOUT) as client:
        response = client.get(f"{server.url}/{flavour}/count/?n=2")
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert response.headers["cache-control"] == "no-cache, no-transform"
        assert response.headers["x-accel-buffering"] == "no"
        assert "content-length" not in response.headers, response.headers
        assert "content-encoding" not in response.headers, response.headers
        assert response.text == 'event: tick\ndata: {"i": 0}\n\nevent: tick\ndata: {"i": 1}\n\n'


# --------------------------------------------------------------------------- 6. gzip


@pytest.mark.parametrize(("flavour", "kind"), COMBOS)
def test_gzip_stays_incremental(
    servers: ServerPool, tmp_path: Path, flavour: str, kind: str
) -> None:
    server = servers.get(kind, GZIP_SETTINGS)
    combo = f"{flavour}-{kind}"
    marker = tmp_path / "marker"
    stream = ENDLESS_NAME[flavour]
    before = connection_ids(server, stream)
    with showing_logs(server), httpx.Client(timeout=CLIENT_TIMEOUT) as client:
        url = server.url + query(ENDLESS[flavour], every=0.1, marker=marker)
        start = time.monotonic()
        arrivals: dict[int, float] = {}
        with client.stream("GET", url, headers={"Accept-Encoding": "gzip"}) as response:
            assert response.status_code == 200
            assert response.headers["content-encoding"] == "gzip"
            assert "accept-encoding" in response.headers.get("vary", "").lower()
            assert "content-length" not in response.headers
            assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
            inflate = zlib.decompressobj(wbits=31)
            text = b""
            for raw in response.iter_raw():
                text += inflate.decompress(raw)
                for i in range(3):
                    if i not in arrivals and f'data: {{"i": {i}}}\n\n'.encode() in text:
                        arrivals[i] = time.monotonic() - start
                if len(arrivals) == 3 or time.monotonic() - start > 10:
                    break
            disconnected_at = time.monotonic()
        record("first event through gzip", combo, arrivals[0])
        assert arrivals[0] < FIRST_EVENT_BOUND, f"first gzip event after {arrivals[0]:.3f} s"
        assert sorted(arrivals) == [0, 1, 2], text
        assert arrivals[2] - arrivals[0] >= 0.15, f"events arrived in a burst: {arrivals}"
        # The same events as without gzip (a keep-alive comment may come between them when
        # the machine stalls the producer past its 1 s heartbeat: seen under heavy load).
        events = [(event.event, event.data) for event in parse_events(text)]
        assert events[:2] == [("tick", '{"i": 0}'), ("tick", '{"i": 1}')], text
        assert text.replace(b": keep-alive\n\n", b"").startswith(
            b'event: tick\ndata: {"i": 0}\n\nevent: tick\ndata: {"i": 1}\n\n'
        ), text
        cleanup, _ = wait_for_marker(marker, disconnected_at, SETTLE)
        assert cleanup is not None
        closed = wait_closed(server, new_connection(server, stream, before))
        assert closed["reason"] == "cancelled", closed


@pytest.mark.parametrize(("flavour", "kind"), COMBOS)
def test_gzip_complete_stream(servers: ServerPool, flavour: str, kind: str) -> None:
    """A finished stream is one valid gzip member holding exactly the frames."""
    server = servers.get(kind, GZIP_SETTINGS)
    with showing_logs(server), httpx.Client(timeout=CLIENT_TIMEOUT) as client:
        with client.stream(
            "GET", f"{server.url}/{flavour}/count/?n=3", headers={"Accept-Encoding": "gzip"}
        ) as response:
            assert response.headers["content-encoding"] == "gzip"
            raw = b"".join(response.iter_raw())
        inflate = zlib.decompressobj(wbits=31)
        text = inflate.decompress(raw)
        assert inflate.eof and not inflate.unused_data
        assert text == b"".join(b'event: tick\ndata: {"i": %d}\n\n' % i for i in range(3))


# --------------------------------------------------------------------------- 7. errors


@pytest.mark.parametrize(("flavour", "kind"), COMBOS)
def test_error_frame(servers: ServerPool, flavour: str, kind: str) -> None:
    server = servers.get(kind, LOGGING_SETTINGS)
    name = f"tests.views.{flavour}_fails"
    before = connection_ids(server, name)
    with showing_logs(server), httpx.Client(timeout=CLIENT_TIMEOUT) as client:
        start = time.monotonic()
        with client.stream("GET", f"{server.url}/{flavour}/fails/") as response:
            body = response.read()  # the response ends: no hang (the read timeout is 5 s)
            events = list(EventSource(response).iter_sse())
        assert time.monotonic() - start < 5
        assert b"secret internal detail" not in body
        assert b"secret.py" not in body
        assert [(e.event, e.data) for e in events[:1]] == [("message", "before")], body
        assert len(events) == 2, body
        assert events[1].event == "error"
        payload = json.loads(events[1].data)
        assert set(payload) == {"message", "error_id"}, payload
        assert re.fullmatch(r"[0-9a-f]{8}", payload["error_id"]), payload
        assert "secret" not in payload["message"]
        # The log has the traceback under the same error id.
        connection_id = new_connection(server, name, before)
        closed = wait_closed(server, connection_id)
        assert closed["reason"] == "error", closed
        errors = [
            r
            for r in flosse_records(server)
            if r.get("event") == "sse.stream.error" and r.get("connection_id") == connection_id
        ]
        assert [r["error_id"] for r in errors] == [payload["error_id"]]
        assert "RuntimeError: secret internal detail" in server.logs()


# --------------------------------------------------------------------------- 8. Last-Event-ID


@pytest.mark.parametrize(("flavour", "kind"), COMBOS)
def test_resume_after_last_event_id(servers: ServerPool, flavour: str, kind: str) -> None:
    server = servers.get(kind, LOGGING_SETTINGS)
    path = "/resume/" if flavour == "sync" else "/async/resume/"
    with showing_logs(server), httpx.Client(timeout=CLIENT_TIMEOUT) as client:
        with connect_sse(
            client, "GET", server.url + path, headers={"Last-Event-ID": "4"}
        ) as source:
            events = list(source.iter_sse())
        assert [(e.event, e.id, json.loads(e.data)) for e in events] == [
            ("tick", str(i), {"i": i}) for i in (5, 6, 7)
        ]
        with connect_sse(client, "GET", server.url + path) as source:
            assert [e.id for e in source.iter_sse()] == ["0", "1", "2"]


# --------------------------------------------------------------------------- asyncio loop


def test_uvicorn_with_the_asyncio_loop(servers: ServerPool, tmp_path: Path) -> None:
    """The other tests run uvicorn on uvloop; the stream hand-drives the producer's futures,
    so check the plain asyncio loop too: first event, one by one, RST cleanup, and a
    swallowed cancellation."""
    server = servers.get("uvicorn", LOGGING_SETTINGS, loop="asyncio")
    with showing_logs(server):
        for flavour in FLAVOURS:
            marker = tmp_path / f"{flavour}-endless"
            before = connection_ids(server, ENDLESS_NAME[flavour])
            start = time.monotonic()
            sock = raw_open(server.port, query(ENDLESS[flavour], every=0.1, marker=marker))
            try:
                raw_read_until(sock, b'data: {"i": 0}\n\n', timeout=5)
                first_at = time.monotonic() - start
                raw_read_until(sock, b'data: {"i": 2}\n\n', timeout=5)
            finally:
                disconnected_at = time.monotonic()
                rst_close(sock)
            record("first event (asyncio loop)", f"{flavour}-uvicorn", first_at)
            assert first_at < FIRST_EVENT_BOUND
            cleanup, text = wait_for_marker(marker, disconnected_at, DEFAULT_CLEANUP_BOUND)
            assert cleanup is not None and text == "closed"
            record("finally after RST (asyncio loop)", f"{flavour}-uvicorn", cleanup)
            closed = wait_closed(server, new_connection(server, ENDLESS_NAME[flavour], before))
            assert closed["reason"] == "cancelled", closed

        marker = tmp_path / "swallows"
        stream = "tests.views.async_swallows_cancel"
        before = connection_ids(server, stream)
        sock = raw_open(server.port, query("/async/swallows/", marker=marker))
        try:
            raw_read_until(sock, b'data: {"i": 0}\n\n', timeout=5)
        finally:
            disconnected_at = time.monotonic()
            rst_close(sock)
        cleanup, text = wait_for_marker(marker, disconnected_at, DEFAULT_CLEANUP_BOUND)
        assert (cleanup is not None, text) == (True, "swallowed")
        closed = wait_closed(server, new_connection(server, stream, before))
        assert closed["reason"] == "cancelled", closed


# --------------------------------------------------------------------------- 10. threads


def run_streams(
    server: LiveServer, tmp_path: Path, flavour: str, round_: str, n: int, pid: int
) -> tuple[int, float]:
    """Open ``n`` endless streams at once, then RST them all; (threads while open, cleanup)."""
    markers = [tmp_path / f"{round_}-{i}" for i in range(n)]
    socks = [raw_open(server.port, query(ENDLESS[flavour], every=0.1, marker=m)) for m in markers]
    try:
        for sock in socks:
            raw_read_until(sock, b'data: {"i": 0}\n\n', timeout=5)
        during = thread_count(pid)
    finally:
        disconnected_at = time.monotonic()
        for sock in socks:
            rst_close(sock)
    cleanups = [wait_for_marker(m, disconnected_at, SETTLE)[0] for m in markers]
    assert None not in cleanups, f"finally did not run for every stream: {cleanups}"
    return during, max(c for c in cleanups if c is not None)


@pytest.mark.parametrize(("flavour", "kind"), COMBOS)
def test_no_thread_left_behind(
    servers: ServerPool, tmp_path: Path, flavour: str, kind: str
) -> None:
    """After disconnects, the process serving the streams is back to its thread count.

    A sync generator runs in a thread of its own (on both servers); an async one under
    gunicorn runs on an event loop of its own. Nothing of either may outlive the stream.
    """
    server = servers.get(kind, LOGGING_SETTINGS)
    combo = f"{flavour}-{kind}"
    n = 4
    with showing_logs(server), httpx.Client(timeout=CLIENT_TIMEOUT) as client:
        pid = client.get(server.url + "/pid/").json()["pid"]  # gunicorn: the worker
        # Warm-up: the same load once, so pools the server keeps (gunicorn's gthread
        # threads, asyncio's default executor, asgiref's) have grown to their size before
        # the baseline is taken.
        run_streams(server, tmp_path, flavour, "warm-up", n, pid)
        baseline = settled_thread_count(pid)
        during, cleanup = run_streams(server, tmp_path, flavour, "measured", n, pid)
        record(f"finally of {n} streams after RST", combo, cleanup)
        if flavour == "sync":
            # Each open stream runs its generator in a thread of its own.
            assert during >= baseline + n, (baseline, during)
        disconnected_at = time.monotonic()
        deadline = disconnected_at + 5
        now = thread_count(pid)
        while now > baseline and time.monotonic() < deadline:
            time.sleep(0.05)
            now = thread_count(pid)
        print(f"\n[threads] {combo}: baseline {baseline}, with {n} streams {during}, after {now}")
        # A thread leaked per stream would leave baseline + 4.
        assert now <= baseline + 1, f"threads: baseline {baseline}, during {during}, after {now}"
        record("threads back after the finally", combo, time.monotonic() - disconnected_at)
