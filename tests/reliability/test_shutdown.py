"""Graceful shutdown and ``max_duration``: streams end by themselves, servers exit on time.

``SIGTERM`` with a few hundred endless streams open (``def`` and ``async def`` views
alike): every client gets one final frame ``event: shutdown`` with a ``retry:`` hint, the
hints differ (jitter: clients do not all reconnect at the same moment), every
``sse.connection.closed`` line says ``reason='shutdown'``, and the server exits well within
its graceful timeout. uvicorn would otherwise wait for ever (``timeout_graceful_shutdown``
defaults to none); gunicorn would wait ``--graceful-timeout`` (set to 10 s here, so a
shutdown that did not end the streams shows as a 10 s exit) and then kill its worker. The
same on daphne, on hypercorn serving in its main process (``--workers 0``) and on granian's
ASGI interface (its worker process runs the loop on its main thread, and chains our handler
in front of its own on the first stream).

Where our handler cannot run, the test pins down what the server does instead (see
docs/servers.md): hypercorn with worker processes (its default, ``--workers 1``) never
signals them (the master sets a multiprocessing event), so the worker waits
``--graceful-timeout`` and then cancels the streams (reason ``cancelled``, no final frame);
granian's WSGI worker sets its own handler after Django is loaded, on a main thread where no
stream ever runs, so it waits for the endless responses until the master kills it after
``--workers-kill-timeout`` (no final frame, no closed record).

Two ``SIGTERM`` signals back to back while connections open and close at a high rate (each open
and close takes the registry's lock on the server's loop, where the signal handler runs):
the server still exits within its grace, run after run. On granian the second one goes to
the worker, where our handler runs, as a process manager that signals the whole group does
(systemd's default): granian's parent sets a ``threading.Event`` from a Python signal
handler, and a second signal that comes while that handler holds the Event's lock runs the
handler again inside it, which deadlocks the parent (granian 2.8.9, every Python; failed
a whole-suite run once on 3.10, see docs/servers.md).

``max_duration=1``: the stream ends with reason ``timeout`` and a final frame with
``retry:``, after a duration jittered down by up to 10%.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from tests.support.observe import closed_records, showing_logs
from tests.support.servers import HOST, KINDS, LOGGING_SETTINGS, LiveServer
from tests.support.wire import RawStream, open_many, request_bytes

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

#: Churn: client threads opening and closing short streams, for at most this long.
CHURN_CLIENTS = 4
CHURN_SECONDS = 6.0
#: Streams opened and closed before the signals, so the churn is in full swing.
CHURN_BEFORE_SIGNALS = 40
#: The exit needs the streams' final frames (FINAL_FRAMES_GRACE, 1 s, at most) and the
#: server's own shutdown; a handler deadlocked on the registry's lock never exits.
DOUBLE_SIGTERM_EXIT_GRACE = 10.0

#: How each kind is started here: hypercorn serves in its main process (``--workers 0``),
#: where its own handler runs and ours is chained in front of it.
SERVER_OPTIONS: dict[str, dict[str, Any]] = {"hypercorn": {"workers": 0}}

SHUTDOWN_CASES = [
    pytest.param("uvicorn", 100, 100, id="uvicorn-200-streams"),
    pytest.param("gunicorn", 40, 40, id="gunicorn-gthread-80-streams"),
    pytest.param("daphne", 50, 50, id="daphne-100-streams"),
    pytest.param("hypercorn", 50, 50, id="hypercorn-w0-100-streams"),
    pytest.param("granian-asgi", 50, 50, id="granian-asgi-100-streams"),
]

#: The servers that cut the streams instead: (kind, workers, the option that bounds the wait).
#: Neither would ever exit without that option's timeout: the streams are endless.
CUT_GRACE = 2
CUT_CASES = [
    pytest.param("hypercorn", 1, ("--graceful-timeout", str(CUT_GRACE)), id="hypercorn-w1"),
    pytest.param("granian-wsgi", 1, ("--workers-kill-timeout", str(CUT_GRACE)), id="granian-wsgi"),
]
CUT_STREAMS = 10  # per view: async and sync
#: From Python 3.12.1 ``asyncio.Server.wait_closed()`` waits until every connection is
#: closed, and hypercorn's worker awaits it before its graceful timeout even starts
#: (hypercorn/asyncio/run.py, ``worker_serve``): with a stream open it never exits.
HYPERCORN_WORKER_WAITS_FOR_EVER = sys.version_info >= (3, 12, 1)


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
    server: LiveServer = live_server_factory(
        kind, env=ENV, extra_args=extra, threads=n + 20, **SERVER_OPTIONS.get(kind, {})
    )
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
        bound = GUNICORN_EXIT_BOUND if kind == "gunicorn" else UVICORN_EXIT_BOUND
        assert exited < bound, f"{kind} exited {exited:.2f} s after SIGTERM"
        assert "Traceback" not in without_interpreter_noise(server.logs())


@pytest.mark.parametrize(("kind", "workers", "extra"), CUT_CASES)
def test_sigterm_where_our_handler_cannot_run_the_server_cuts_the_streams_after_its_timeout(
    live_server_factory: Any, figure: Any, kind: str, workers: int, extra: tuple[str, ...]
) -> None:
    n = 2 * CUT_STREAMS
    server: LiveServer = live_server_factory(
        kind, env=ENV, extra_args=extra, workers=workers, threads=n + 8
    )
    if kind == "hypercorn" and HYPERCORN_WORKER_WAITS_FOR_EVER:
        hypercorn_waits_for_ever(server, figure)
        return
    with showing_logs(server, tail=80):

        async def run() -> tuple[list[RawStream], list[int], float]:
            streams = await open_many(server.port, "/rel/endless/?every=0.5", CUT_STREAMS)
            streams += await open_many(server.port, "/rel/sync-endless/?every=0.5", CUT_STREAMS)
            held = [len(s.data) for s in streams]
            sent = time.monotonic()
            server.send_signal(signal.SIGTERM)
            ended = await asyncio.gather(*(s.wait_eof(CUT_GRACE + 15) for s in streams))
            assert all(ended), f"{ended.count(False)} streams still open after the timeout"
            return streams, held, sent

        streams, held, sent = asyncio.run(run())
        server.wait(CUT_GRACE + 15)
        exited = time.monotonic() - sent

        for stream, before in zip(streams, held, strict=True):
            # The streams went on after the signal (nothing asked them to stop), and were
            # cut: no final frame, no end of the chunked response.
            assert b"event: tick" in stream.data[before:], bytes(stream.data[-300:])
            assert b"event: shutdown" not in stream.data, bytes(stream.data[-300:])
            assert not stream.data.endswith(b"0\r\n\r\n"), bytes(stream.data[-200:])
        closed = closed_records(server, "rel.endless") + closed_records(server, "rel.sync_endless")
        if kind == "hypercorn":
            # The worker's asyncio.Runner cancels what is left once the grace is over.
            assert len(closed) == n, f"{len(closed)} closed lines for {n} streams"
            assert {r["reason"] for r in closed} == {"cancelled"}, closed
        else:
            assert closed == [], closed  # granian's master SIGKILLs the worker
        figure(
            f"{kind} ({' '.join(extra)}): SIGTERM -> {n} streams went on, then were cut "
            f"without a final frame; {len(closed)} closed lines; exited after {exited:.2f} s"
        )
        # It waited for the streams until its timeout: they never end by themselves.
        assert exited >= CUT_GRACE, exited
        assert exited < CUT_GRACE + GUNICORN_EXIT_BOUND, exited


def hypercorn_waits_for_ever(server: LiveServer, figure: Any) -> None:
    """Python 3.12.1+: past its graceful timeout, hypercorn's worker still serves the streams
    (the stop is then up to whoever sends SIGKILL: the process manager)."""
    with showing_logs(server, tail=80):

        async def run() -> None:
            streams = await open_many(server.port, "/rel/endless/?every=0.5", CUT_STREAMS)
            streams += await open_many(server.port, "/rel/sync-endless/?every=0.5", CUT_STREAMS)
            sent = time.monotonic()
            server.send_signal(signal.SIGTERM)
            await asyncio.sleep(max(0.0, sent + CUT_GRACE + 1 - time.monotonic()))
            held = [len(s.data) for s in streams]
            # Every stream still gets events after the grace is over: nothing was cut.
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not all(
                b"event: tick" in s.data[h:] for s, h in zip(streams, held, strict=True)
            ):
                await asyncio.sleep(0.05)
            late = [b"event: tick" in s.data[h:] for s, h in zip(streams, held, strict=True)]
            assert all(late), f"{late.count(False)} streams cut after the grace"
            assert not any(s.eof for s in streams)
            assert server.returncode is None
            for stream in streams:
                stream.rst()

        asyncio.run(run())
    figure(
        f"hypercorn --workers 1 on Python {sys.version_info[0]}.{sys.version_info[1]}: SIGTERM "
        f"-> still streaming {CUT_GRACE + 1} s later, past --graceful-timeout {CUT_GRACE}"
    )


@pytest.mark.parametrize("kind", KINDS)
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


class Churn:
    """Client threads that open a stream, read its first bytes and close it, again and
    again, until stopped (bounded by CHURN_SECONDS). Errors are expected once the server
    stops: they only end that round."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.rounds = 0
        self._stop = threading.Event()
        self._deadline = time.monotonic() + CHURN_SECONDS
        self._threads = [threading.Thread(target=self._run) for _ in range(CHURN_CLIENTS)]

    def __enter__(self) -> Churn:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(CHURN_SECONDS + 5)

    def _run(self) -> None:
        request = request_bytes(self.port, "/rel/endless/?every=0.5")
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            try:
                with socket.create_connection((HOST, self.port), timeout=1) as sock:
                    sock.sendall(request)
                    if sock.recv(4096):
                        self.rounds += 1
            except OSError:
                time.sleep(0.01)


def read_to_eof(sock: socket.socket) -> bytes:
    """What the server sent until it closed the connection (bounded by the timeout)."""
    data = bytearray()
    while chunk := sock.recv(65536):
        data += chunk
    return bytes(data)


# CPython 3.13.0's asyncio: a transport collected after its server has closed raises in
# Server._wakeup, and the interpreter prints it as "Exception ignored in ... __del__" while
# the server exits (seen with hypercorn). Neither django-flosse nor the server is in it.
_ASYNCIO_3130_WAKEUP = re.compile(
    r"Exception ignored in: <function _SelectorTransport\.__del__ at 0x[0-9a-f]+>\n"
    r"Traceback \(most recent call last\):\n"
    r"(?:  File \"[^\n]*/asyncio/[^\n]*\n(?:    [^\n]*\n)*)+"
    r"TypeError: 'NoneType' object is not iterable\n"
)
# CPython before 3.11.8 and 3.12.2 (gh-113538): asyncio.start_server's done callback calls
# task.exception() on a connection's task, which raises if the task was cancelled, and the
# loop logs that as "Exception in callback ...". hypercorn's connection tasks are cancelled
# when it exits, so a connection still open then (the churn's) prints it.
_ASYNCIO_GH113538 = re.compile(
    r"Exception in callback StreamReaderProtocol\.connection_made\.<locals>\.callback\([^\n]*\n"
    r"handle: <Handle StreamReaderProtocol\.connection_made\.<locals>\.callback\([^\n]*\n"
    r"Traceback \(most recent call last\):\n"
    r"  File \"[^\n]*/asyncio/events\.py\", line \d+, in _run\n(?:    [^\n]*\n)+"
    r"  File \"[^\n]*/asyncio/streams\.py\", line \d+, in callback\n"
    r"    exc = task\.exception\(\)\n(?:    [^\n]*\n)*"
    r"(?:  File \"[^\n]*\n(?:    [^\n]*\n)*)*"
    r"asyncio\.exceptions\.CancelledError\n"
)


def _interpreter_bugs() -> list[re.Pattern[str]]:
    """The interpreter bugs above that this Python has."""
    version = sys.version_info[:3]
    bugs = []
    if version == (3, 13, 0):
        bugs.append(_ASYNCIO_3130_WAKEUP)
    if (3, 11, 0) <= version < (3, 11, 8) or (3, 12, 0) <= version < (3, 12, 2):
        bugs.append(_ASYNCIO_GH113538)
    return bugs


def without_interpreter_noise(logs: str) -> str:
    """The server's log without the interpreter bugs above (on the versions that have them)."""
    for bug in _interpreter_bugs():
        logs = bug.sub("", logs)
    return logs


_NOISE_3130 = (
    "Exception ignored in: <function _SelectorTransport.__del__ at 0x7f5db804e840>\n"
    "Traceback (most recent call last):\n"
    '  File "/py/lib/python3.13/asyncio/selector_events.py", line 872, in __del__\n'
    "    self._server._detach(self)\n"
    '  File "/py/lib/python3.13/asyncio/base_events.py", line 309, in _wakeup\n'
    "    for waiter in waiters:\n"
    "TypeError: 'NoneType' object is not iterable\n"
)
_NOISE_GH113538 = (
    "Exception in callback StreamReaderProtocol.connection_made.<locals>.callback(<Task cancell"
    "...o/run.py:105>>) at /py/lib/python3.11/asyncio/streams.py:248\n"
    "handle: <Handle StreamReaderProtocol.connection_made.<locals>.callback(<Task cancell...o/ru"
    "n.py:105>>) at /py/lib/python3.11/asyncio/streams.py:248>\n"
    "Traceback (most recent call last):\n"
    '  File "/py/lib/python3.11/asyncio/events.py", line 80, in _run\n'
    "    self._context.run(self._callback, *self._args)\n"
    '  File "/py/lib/python3.11/asyncio/streams.py", line 249, in callback\n'
    "    exc = task.exception()\n"
    "          ^^^^^^^^^^^^^^^^\n"
    '  File "/venv/lib/python3.11/site-packages/hypercorn/asyncio/run.py", line 109, in _serv'
    "er_callback\n"
    "    await TCPServer(app, loop, config, context, lifespan_state, reader, writer)\n"
    '  File "/py/lib/python3.11/asyncio/taskgroups.py", line 110, in __aexit__\n'
    "    await self._on_completed_fut\n"
    "asyncio.exceptions.CancelledError\n"
)


@pytest.mark.parametrize(
    ("noise", "bug"),
    [(_NOISE_3130, _ASYNCIO_3130_WAKEUP), (_NOISE_GH113538, _ASYNCIO_GH113538)],
    ids=["3.13.0", "gh-113538"],
)
def test_without_interpreter_noise_keeps_everything_else(noise: str, bug: re.Pattern[str]) -> None:
    assert bug.fullmatch(noise)  # the pattern knows the bug's traceback, on every Python
    ours = 'Traceback (most recent call last):\n  File "/app/views.py", line 3\nValueError: x\n'
    # Our own CancelledError traceback is not the interpreter's.
    cancelled = ours.replace("ValueError: x", "asyncio.exceptions.CancelledError")
    cleaned = without_interpreter_noise(noise + ours + noise + cancelled)
    if bug in _interpreter_bugs():
        assert cleaned == ours + cancelled
    else:  # a Python without the bug keeps even that traceback
        assert cleaned == noise + ours + noise + cancelled


def _double_sigterm_targets(kind: str, pid: int) -> tuple[int, int]:
    """Where the two SIGTERMs go: the server twice, but on granian the parent and then its
    worker (see the module docstring: two to granian's parent can deadlock it)."""
    if not kind.startswith("granian"):
        return pid, pid
    with open(f"/proc/{pid}/task/{pid}/children") as children:
        (worker,) = (int(child) for child in children.read().split())
    return pid, worker


@pytest.mark.parametrize("run", range(3))
@pytest.mark.parametrize("kind", ["uvicorn", "daphne", "hypercorn", "granian-asgi"])
def test_two_sigterms_back_to_back_during_churn_the_server_exits(
    live_server_factory: Any, figure: Any, kind: str, run: int
) -> None:
    server: LiveServer = live_server_factory(kind, env=ENV, **SERVER_OPTIONS.get(kind, {}))
    with contextlib.ExitStack() as closing:
        with showing_logs(server, tail=80), Churn(server.port) as churn:
            deadline = time.monotonic() + CHURN_SECONDS / 2
            while churn.rounds < CHURN_BEFORE_SIGNALS and time.monotonic() < deadline:
                time.sleep(0.01)
            assert churn.rounds >= CHURN_BEFORE_SIGNALS, f"only {churn.rounds} streams opened"
            watcher = closing.enter_context(socket.create_connection((HOST, server.port), 5))
            watcher.sendall(request_bytes(server.port, "/rel/endless/?every=0.5"))
            assert watcher.recv(4096)
            # Processes we started (the worker is the server's child), within µs.
            first, second = _double_sigterm_targets(kind, server.pid)
            sent = time.monotonic()
            os.kill(first, signal.SIGTERM)
            os.kill(second, signal.SIGTERM)
            try:
                server.wait(DOUBLE_SIGTERM_EXIT_GRACE)
            except subprocess.TimeoutExpired:
                pytest.fail(
                    f"{kind} still running {DOUBLE_SIGTERM_EXIT_GRACE} s after two SIGTERMs"
                )
            exited = time.monotonic() - sent
        received = read_to_eof(watcher)
    assert b"event: shutdown" in received, received[-300:]
    assert "Traceback" not in without_interpreter_noise(server.logs())
    figure(
        f"{kind} run {run}: two SIGTERMs{'' if first == second else ' (parent, worker)'} "
        f"during churn ({churn.rounds} streams opened and "
        f"closed), process exited after {exited:.2f} s"
    )
