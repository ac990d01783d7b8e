"""Every view the tests use, through real servers, the test client and direct calls.

Routed in ``tests/urls.py``. Grouped by the test files that use them; a view that two files
need is defined once, in the first group.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from asgiref.sync import sync_to_async
from django.contrib.auth.models import User
from django.http import HttpRequest
from django.views import View

from django_flosse import SSEEvent, sse_stream
from django_flosse.permissions import BaseSSEPermission, IsAuthenticated

#: The views of ``IsAuthenticated`` and other permission checks that got as far as their
#: body, by name (test_decorators.py clears it before each test: a 403 must start nothing).
STARTED: list[str] = []

#: What the failing views raise: it must reach the log, never a client (DEBUG off).
FAILURE = "secret internal detail /srv/app/secret.py"


def _mark(request: HttpRequest, what: str) -> None:
    """Record cleanup in a file named by the query string (tests in another process read it)."""
    marker = request.GET.get("marker")
    if marker:
        Path(marker).write_text(what)


@sse_stream(heartbeat=None)
def sync_count(request: HttpRequest) -> Iterator[Any]:
    for i in range(int(request.GET.get("n", "3"))):
        yield ("tick", {"i": i})


@sse_stream(heartbeat=None)
async def async_count(request: HttpRequest) -> AsyncIterator[Any]:
    for i in range(int(request.GET.get("n", "3"))):
        yield ("tick", {"i": i})


@sse_stream(heartbeat=1)
def sync_endless(request: HttpRequest) -> Iterator[Any]:
    try:
        for i in itertools.count():
            yield ("tick", {"i": i})
            time.sleep(float(request.GET.get("every", "0.1")))
    finally:
        _mark(request, "closed")


@sse_stream(heartbeat=1)
async def async_endless(request: HttpRequest) -> AsyncIterator[Any]:
    try:
        for i in itertools.count():
            yield ("tick", {"i": i})
            await asyncio.sleep(float(request.GET.get("every", "0.1")))
    finally:
        _mark(request, "closed")


@sse_stream(heartbeat=1)
async def async_swallows_cancel(request: HttpRequest) -> AsyncIterator[Any]:
    """Catches CancelledError and returns, as 0.2.0's docs told users was fine."""
    try:
        for i in itertools.count():
            yield ("tick", {"i": i})
            await asyncio.sleep(0.1)
    except asyncio.CancelledError:
        _mark(request, "swallowed")
        return


@sse_stream(heartbeat=0.2)
async def async_idle(request: HttpRequest) -> AsyncIterator[Any]:
    yield "first"
    await asyncio.sleep(3600)
    yield "never"


@sse_stream(heartbeat=0.2)
def sync_idle(request: HttpRequest) -> Iterator[Any]:
    yield "first"
    time.sleep(float(request.GET.get("sleep", "1")))
    yield "late"


@sse_stream(retry=2500, name="custom.name")
def with_retry(request: HttpRequest) -> Iterator[Any]:
    yield "hello"


@sse_stream
def sync_fails(request: HttpRequest) -> Iterator[Any]:
    yield "before"
    raise RuntimeError(FAILURE)


@sse_stream
async def async_fails(request: HttpRequest) -> AsyncIterator[Any]:
    yield "before"
    raise RuntimeError(FAILURE)


@sse_stream
def sync_bad_yield(request: HttpRequest) -> Iterator[Any]:
    """Yields ``bytes``, which no yield style accepts."""
    yield "before"
    yield b"raw bytes"
    yield "after"


@sse_stream
async def async_bad_yield(request: HttpRequest) -> AsyncIterator[Any]:
    """Yields a dict with a key that is not an SSE field."""
    yield "before"
    yield {"data": "x", "colour": "red"}
    yield "after"


@sse_stream(permission_classes=[IsAuthenticated])
async def async_private(request: HttpRequest) -> AsyncIterator[Any]:
    STARTED.append("async_private")
    yield f"hello {request.user.get_username()}"


@sse_stream(permission_classes=[IsAuthenticated])
def sync_private(request: HttpRequest) -> Iterator[Any]:
    STARTED.append("sync_private")
    yield f"hello {request.user.get_username()}"


@sse_stream
def resume(request: HttpRequest) -> Iterator[Any]:
    """Resumes after the Last-Event-ID the browser sends when it reconnects."""
    last = request.headers.get("Last-Event-ID", "")
    start = int(last) + 1 if last.isdigit() else 0
    for i in range(start, start + 3):
        yield SSEEvent(data={"i": i}, event="tick", id=i)


class CountView(View):
    @sse_stream
    def get(self, request: HttpRequest) -> Iterator[Any]:
        yield ("tick", {"view": type(self).__name__, "method": request.method})


class AsyncCountView(View):
    @sse_stream(permission_classes=[IsAuthenticated])
    async def get(self, request: HttpRequest) -> AsyncIterator[Any]:
        yield ("tick", {"view": type(self).__name__})


def dashboard_cost(request: HttpRequest) -> Any:
    """What this server's dashboard state has cost so far, and the process's CPU."""
    from django.http import JsonResponse

    from django_flosse.observing._dashboard import board

    times = os.times()
    return JsonResponse({
        "computations": board.computations,
        "feed_cpu": board.cpu_seconds,
        "process_cpu": times.user + times.system,
    })  # fmt: skip


def pid_view(request: HttpRequest) -> Any:
    from django.http import JsonResponse

    return JsonResponse({"pid": os.getpid()})


@sse_stream
async def async_resume(request: HttpRequest) -> AsyncIterator[Any]:
    """The async twin of ``resume``: resumes after the Last-Event-ID header."""
    last = request.headers.get("Last-Event-ID", "")
    start = int(last) + 1 if last.isdigit() else 0
    for i in range(start, start + 3):
        yield SSEEvent(data={"i": i}, event="tick", id=i)


# --------------------------------------------------------------- the decorator
# Views of tests/test_decorators.py: both forms of the decorator, permission classes that
# are sync, async or query the database, and what an async view sees of its connection.


@sse_stream
def bare_sync(request: HttpRequest) -> Iterator[Any]:
    yield "bare"


@sse_stream()
async def called_async(request: HttpRequest) -> AsyncIterator[Any]:
    yield "called"


@sse_stream(heartbeat=None)
async def async_three(request: HttpRequest) -> AsyncIterator[Any]:
    for i in range(3):
        await asyncio.sleep(0)
        yield ("tick", {"i": i})


class HasAnyUserInDB(BaseSSEPermission):
    """A sync permission that queries the database (must not run on the event loop)."""

    def has_permission(self, request: HttpRequest) -> bool:
        return User.objects.filter(username="alice").exists()


class AsyncStaffOnly(BaseSSEPermission):
    async def has_permission(self, request: HttpRequest) -> bool:
        user = await request.auser()
        return bool(user.is_staff)


@sse_stream(permission_classes=[AsyncStaffOnly])
async def async_staff(request: HttpRequest) -> AsyncIterator[Any]:
    STARTED.append("async_staff")
    yield "staff"


@sse_stream(permission_classes=[HasAnyUserInDB, IsAuthenticated])
async def async_db_permission(request: HttpRequest) -> AsyncIterator[Any]:
    yield "allowed"


@sse_stream(permission_classes=[AsyncStaffOnly])
def sync_with_async_permission(request: HttpRequest) -> Iterator[Any]:
    STARTED.append("sync_with_async_permission")
    yield "allowed"


@sse_stream
async def async_db_state(request: HttpRequest) -> AsyncIterator[Any]:
    """Reports what the view sees: is the request thread's connection open, who is the user."""

    def connection_is_open() -> bool:
        from django.db import connection

        return connection.connection is not None

    yield {
        "connection_open": await sync_to_async(connection_is_open)(),
        "user_class": request.user.__class__.__name__,
        "authenticated": request.user.is_authenticated,  # on the loop: no lazy query left
    }


@sse_stream
def count_users(request: HttpRequest) -> Iterator[Any]:
    """Called directly (not routed): its query must see the rows of the test's transaction."""
    yield str(User.objects.count())


# --------------------------------------------------------------- observability (issue 3)
# Views of tests/test_registry.py, test_metrics.py, test_log.py and
# test_observability_servers.py. Each has its own stream name, so metric samples of one
# test file never mix with another's.

import structlog  # noqa: E402


class DenyAll(BaseSSEPermission):
    """A permission class that always says no (counted as ``forbidden``)."""

    def has_permission(self, request: HttpRequest) -> bool:
        return False


@sse_stream(name="obs.limited_async", max_connections=50, heartbeat=None)
async def obs_limited_async(request: HttpRequest) -> AsyncIterator[Any]:
    """Endless, at most 50 at once per process."""
    for i in itertools.count():
        yield ("tick", {"i": i})
        await asyncio.sleep(0.05)


@sse_stream(name="obs.limited_sync", max_connections=50, heartbeat=None)
def obs_limited_sync(request: HttpRequest) -> Iterator[Any]:
    """Endless, at most 50 at once per process."""
    for i in itertools.count():
        yield ("tick", {"i": i})
        time.sleep(0.05)


@sse_stream(name="obs.per_user", max_connections_per_user=1, heartbeat=None)
def obs_per_user(request: HttpRequest) -> Iterator[Any]:
    """Endless, at most one at once per authenticated user."""
    for i in itertools.count():
        yield ("tick", {"i": i})
        time.sleep(0.05)


@sse_stream(name="obs.forbidden", permission_classes=[DenyAll])
def obs_forbidden(request: HttpRequest) -> Iterator[Any]:
    yield "never"


@sse_stream(name="obs.count", heartbeat=None)
def obs_count(request: HttpRequest) -> Iterator[Any]:
    """``?n=`` events, then the stream completes."""
    for i in range(int(request.GET.get("n", "3"))):
        yield ("tick", {"i": i})


@sse_stream(name="obs.async_count", heartbeat=None)
async def obs_async_count(request: HttpRequest) -> AsyncIterator[Any]:
    """``?n=`` events, then the stream completes."""
    for i in range(int(request.GET.get("n", "3"))):
        yield ("tick", {"i": i})


@sse_stream(name="obs.endless", heartbeat=None)
def obs_endless(request: HttpRequest) -> Iterator[Any]:
    """One event every 20 ms, for ever."""
    for i in itertools.count():
        yield ("tick", {"i": i})
        time.sleep(0.02)


@sse_stream(name="obs.async_endless", heartbeat=1)
async def obs_async_endless(request: HttpRequest) -> AsyncIterator[Any]:
    """One event every ``?every=`` seconds (0.05), for ever."""
    for i in itertools.count():
        yield ("tick", {"i": i})
        await asyncio.sleep(float(request.GET.get("every", "0.05")))


@sse_stream(name="obs.fails", heartbeat=None)
def obs_fails(request: HttpRequest) -> Iterator[Any]:
    yield "before"
    raise RuntimeError("obs producer failed")


@sse_stream(name="obs.async_fails", heartbeat=None)
async def obs_async_fails(request: HttpRequest) -> AsyncIterator[Any]:
    yield "before"
    raise RuntimeError("obs producer failed")


@sse_stream(name="obs.logs_inside", heartbeat=None)
def obs_logs_inside(request: HttpRequest) -> Iterator[Any]:
    """Logs with structlog while it streams (the log must carry the connection's id)."""
    structlog.get_logger("tests.views").info("view.sync.before_first")
    yield "one"
    structlog.get_logger("tests.views").info("view.sync.between")
    yield "two"


@sse_stream(name="obs.async_logs_inside", heartbeat=None)
async def obs_async_logs_inside(request: HttpRequest) -> AsyncIterator[Any]:
    """Logs with structlog while it streams (the log must carry the connection's id)."""
    structlog.get_logger("tests.views").info("view.async.before_first")
    yield "one"
    await asyncio.sleep(0)
    structlog.get_logger("tests.views").info("view.async.between")
    yield "two"


@sse_stream(name="obs.held", max_connections=1, heartbeat=1)
async def obs_held(request: HttpRequest) -> AsyncIterator[Any]:
    """Endless, one at a time: a held connection makes every other request get 503."""
    for i in itertools.count():
        yield ("tick", {"i": i})
        await asyncio.sleep(0.2)


@sse_stream(name="obs.pid_stream", heartbeat=None)
def obs_pid_stream(request: HttpRequest) -> Iterator[Any]:
    """``?n=`` events (one every ``?every=`` s) naming the process that serves the stream."""
    every = float(request.GET.get("every", "0"))
    for i in range(int(request.GET.get("n", "3"))):
        yield ("pid", {"pid": os.getpid(), "i": i})
        if every:
            time.sleep(every)


# --------------------------------------------------------------- reliability (issue 7)
# Views of tests/reliability/. Each counts the runs of its ``finally`` block (a producer's
# cleanup) in FINALLY_RUN, which ``rel_state`` reports with the registry's active counts,
# the open history rows and the process's memory, so a test in another process can check
# that a thousand dropped streams really were cleaned up.

import collections  # noqa: E402
import threading  # noqa: E402

from django.contrib.auth import get_user_model  # noqa: E402

FINALLY_RUN: collections.Counter[str] = collections.Counter()
_FINALLY_LOCK = threading.Lock()


def _finally_ran(name: str) -> None:
    with _FINALLY_LOCK:  # sync views run their generators in threads
        FINALLY_RUN[name] += 1


def _proc_status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


def rel_state(request: HttpRequest) -> Any:
    """JSON: registry active counts, finally blocks run, open rows (``?rows=1``), RSS."""
    from django.db import connections
    from django.http import JsonResponse

    from django_flosse.observing.registry import current_process, registry

    totals = registry.totals()
    active = {name: t.active for name, t in totals.items() if t.active}
    state: dict[str, Any] = {
        "pid": os.getpid(),
        "active": sum(active.values()),
        "active_by_stream": active,
        "bytes_by_stream": {name: t.bytes_sent for name, t in totals.items()},
        "finally": dict(FINALLY_RUN),
        "rss_kb": _proc_status("VmRSS"),
        "threads": _proc_status("Threads"),
    }
    if request.GET.get("db"):
        # Every database connection object of the process, and how many are open
        # (a file descriptor count is no proof on SQLite: it defers closing them).
        import gc

        from django.db.backends.base.base import BaseDatabaseWrapper

        wrappers = [o for o in gc.get_objects() if isinstance(o, BaseDatabaseWrapper)]
        state["db_open"] = sum(1 for w in wrappers if w.connection is not None)
        state["db_wrappers"] = len(wrappers)
        with _DB_LOCK:
            state["db_held"] = {key: list(held) for key, held in DB_HELD.items()}
            state["db_parked"] = sorted(DB_PARKED)
    if request.GET.get("park"):  # "1": polling views stop in their next idle wait; "0": go on
        if request.GET["park"] == "1":
            DB_PARK.set()
        else:
            DB_PARK.clear()
    if request.GET.get("gc"):
        import gc

        gc.collect()
        state["gc_objects"] = len(gc.get_objects())
    if request.GET.get("rows"):
        from django_flosse.models import StreamConnection

        open_rows = StreamConnection.objects.filter(
            closed_at__isnull=True, process=current_process()
        )
        state["open_rows"] = open_rows.count()
        connections.close_all()  # this probe must not hold a connection itself
    return JsonResponse(state)


@sse_stream(name="rel.endless", heartbeat=5)
async def rel_endless(request: HttpRequest) -> AsyncIterator[Any]:
    """One small event every ``?every=`` seconds (1), for ever."""
    every = float(request.GET.get("every", "1"))
    try:
        for i in itertools.count():
            yield ("tick", {"i": i})
            await asyncio.sleep(every)
    finally:
        _finally_ran("rel.endless")


@sse_stream(name="rel.sync_endless", heartbeat=5)
def rel_sync_endless(request: HttpRequest) -> Iterator[Any]:
    """The sync twin of ``rel_endless`` (a thread per stream)."""
    every = float(request.GET.get("every", "1"))
    try:
        for i in itertools.count():
            yield ("tick", {"i": i})
            time.sleep(every)
    finally:
        _finally_ran("rel.sync_endless")


@sse_stream(name="rel.max_duration", max_duration=1, heartbeat=5)
async def rel_max_duration(request: HttpRequest) -> AsyncIterator[Any]:
    """Endless, but ends with reason ``timeout`` after about a second (jittered)."""
    try:
        for i in itertools.count():
            yield ("tick", {"i": i})
            await asyncio.sleep(0.1)
    finally:
        _finally_ran("rel.max_duration")


@sse_stream(name="rel.sync_max_duration", max_duration=1, heartbeat=5)
def rel_sync_max_duration(request: HttpRequest) -> Iterator[Any]:
    try:
        for i in itertools.count():
            yield ("tick", {"i": i})
            time.sleep(0.1)
    finally:
        _finally_ran("rel.sync_max_duration")


_BLOB = "x" * 4000


@sse_stream(name="rel.flood", heartbeat=None, send_timeout=None)
async def rel_flood(request: HttpRequest) -> AsyncIterator[Any]:
    """4 kB events as fast as the client takes them; no send timeout."""
    try:
        for i in itertools.count():
            yield ("blob", {"i": i, "pad": _BLOB})
    finally:
        _finally_ran("rel.flood")


@sse_stream(name="rel.flood_timeout", heartbeat=None, send_timeout=2)
async def rel_flood_timeout(request: HttpRequest) -> AsyncIterator[Any]:
    """The same flood; a client that stops reading for 2 s ends it (reason ``timeout``)."""
    try:
        for i in itertools.count():
            yield ("blob", {"i": i, "pad": _BLOB})
    finally:
        _finally_ran("rel.flood_timeout")


@sse_stream(name="rel.sync_flood", heartbeat=None)
def rel_sync_flood(request: HttpRequest) -> Iterator[Any]:
    """The sync flood (under gunicorn gthread a stuck client blocks this thread's write)."""
    try:
        for i in itertools.count():
            yield ("blob", {"i": i, "pad": _BLOB})
    finally:
        _finally_ran("rel.sync_flood")


# The database views below poll every ``?every=`` seconds (0.5). Each records, under its
# ``?s=`` key, whether the connection its last query ran on was still open each time it
# resumed from its idle wait: what django-flosse promises (streaming/_db.py) is that it is not, once
# the wait follows an item the producer waited for. ``/rel/state/?db=1`` reports the
# records; ``?park=1`` holds every poller in its next idle wait (``db_parked`` lists them)
# so that a test can count the server's connections while all of them are known to wait.
DB_HELD: dict[str, list[bool]] = {}
DB_PARKED: set[str] = set()
DB_PARK = threading.Event()
_DB_LOCK = threading.Lock()


def _db_in_use() -> tuple[Any, Any]:
    """On the thread that ran the query: its ``default`` wrapper and DB-API connection."""
    from django.db import connections

    wrapper = connections["default"]
    return wrapper, wrapper.connection


def _db_still_held(used: tuple[Any, Any]) -> bool:
    """Is the DB-API connection a query ran on still open? The identity, not just "some
    connection is open": under WSGI, Django runs every ``async def`` view's async ORM calls
    on one shared thread, whose connection another stream may have opened meanwhile."""
    wrapper, raw = used
    return raw is not None and wrapper.connection is raw


def _db_record(key: str, held: bool) -> None:
    with _DB_LOCK:
        DB_HELD.setdefault(key, []).append(held)


def _db_idle(key: str, every: float) -> None:
    time.sleep(every)
    if DB_PARK.is_set():
        with _DB_LOCK:
            DB_PARKED.add(key)
        while DB_PARK.is_set():
            time.sleep(0.05)
        with _DB_LOCK:
            DB_PARKED.discard(key)


async def _db_aidle(key: str, every: float) -> None:
    await asyncio.sleep(every)
    if DB_PARK.is_set():
        with _DB_LOCK:
            DB_PARKED.add(key)
        while DB_PARK.is_set():
            await asyncio.sleep(0.05)
        with _DB_LOCK:
            DB_PARKED.discard(key)


@sse_stream(name="rel.db_sync", permission_classes=[IsAuthenticated], heartbeat=5)
def rel_db_sync(request: HttpRequest) -> Iterator[Any]:
    """Polls the database with a blocking sleep between queries."""
    every = float(request.GET.get("every", "0.5"))
    key = request.GET.get("s", "")
    users = get_user_model().objects
    try:
        for i in itertools.count():
            count = users.count()
            used = _db_in_use()
            yield ("poll", {"i": i, "users": count, "me": request.user.pk})
            _db_idle(key, every)
            _db_record(key, _db_still_held(used))
    finally:
        _finally_ran("rel.db_sync")


@sse_stream(name="rel.db_async", permission_classes=[IsAuthenticated], heartbeat=5)
async def rel_db_async(request: HttpRequest) -> AsyncIterator[Any]:
    """Polls the database with the async ORM.

    Its connection lives on the thread that ran ``acount()``; the records hop there
    (thread-sensitive ``sync_to_async``, as the async ORM does) to look at it.
    """
    from asgiref.sync import sync_to_async

    every = float(request.GET.get("every", "0.5"))
    key = request.GET.get("s", "")
    users = get_user_model().objects
    user = await request.auser()
    try:
        for i in itertools.count():
            count = await users.acount()
            used = await sync_to_async(_db_in_use)()
            yield ("poll", {"i": i, "users": count, "me": user.pk})
            await _db_aidle(key, every)
            _db_record(key, await sync_to_async(_db_still_held)(used))
    finally:
        _finally_ran("rel.db_async")


# --------------------------------------------------------------- bad input (issue 7)
# tests/test_bad_input.py sends ``?v=<name>``; the view yields "before", the value, "after".


def _circular() -> list[Any]:
    # Fails to encode on every Python (deep but finite nesting encodes on 3.13's C encoder).
    loop: list[Any] = []
    loop.append(loop)
    return loop


BAD_INPUT_YIELDS: dict[str, Any] = {
    # valid: must arrive exactly (line breaks normalised to LF), never as extra fields
    "crlf-data": "l1\r\nl2\rl3\nl4",
    "nul-data": "a\x00b",
    "unicode-lines": "a\u2028b\x85c\x0bd",
    "fake-fields": "x\nid: 666\nevent: pwned\nretry: 1\n\ndata: injected",
    "huge": "A" * 1_000_000 + "\r\nB",
    # invalid: each ends the stream with one error frame
    "event-crlf": ("ev\r\nid: 666", "x"),
    "id-lf": SSEEvent("x", id="1\nevent: pwned"),
    "id-nul": SSEEvent("x", id="1\x00"),
    "surrogate": "a\ud800b",
    "bytes": b"raw",
    "unknown-key": {"data": "x", "colour": "red"},
    "unserialisable": {"when": object()},
    "circular": _circular(),
    "nan": float("nan"),
}


@sse_stream(name="bad_input.server_sync", heartbeat=None)
def bad_input_sync(request: HttpRequest) -> Iterator[Any]:
    yield "before"
    yield BAD_INPUT_YIELDS[request.GET["v"]]
    yield "after"


@sse_stream(name="bad_input.server_async", heartbeat=None)
async def bad_input_async(request: HttpRequest) -> AsyncIterator[Any]:
    yield "before"
    yield BAD_INPUT_YIELDS[request.GET["v"]]
    yield "after"


# --------------------------------------------------------------- security (issue 7)
# tests/test_security.py: what reaches a client when a view or a permission class fails,
# and what a view sees of (and echoes back from) a client's Last-Event-ID header.

#: Stands for what an exception may carry: a password, a query, a file path.
SECURITY_SECRET = "s3cr3t-db-password-7f3a9c"


class ExplodingPermission(BaseSSEPermission):
    """A permission class that fails (its exception must not reach the client)."""

    def has_permission(self, request: HttpRequest) -> bool:
        raise RuntimeError(f"{SECURITY_SECRET} in a permission class at {__file__}")


@sse_stream(name="security.leaky", heartbeat=None)
def sec_leaky(request: HttpRequest) -> Iterator[Any]:
    yield "before"
    raise RuntimeError(f"{SECURITY_SECRET} at {__file__}")


@sse_stream(name="security.leaky_async", heartbeat=None)
async def sec_leaky_async(request: HttpRequest) -> AsyncIterator[Any]:
    yield "before"
    raise RuntimeError(f"{SECURITY_SECRET} at {__file__}")


@sse_stream(name="security.leaky_permission", permission_classes=[ExplodingPermission])
def sec_leaky_permission(request: HttpRequest) -> Iterator[Any]:
    yield "never"


@sse_stream(name="security.echo_last_id", heartbeat=None)
def sec_echo_last_id(request: HttpRequest) -> Iterator[Any]:
    """Resumes as views do: reads the header and sends it back as the event id."""
    last = request.headers.get("Last-Event-ID", "")
    yield SSEEvent({"length": len(last)}, event="resumed", id=last or None)


@sse_stream(name="security.echo_last_id_async", heartbeat=None)
async def sec_echo_last_id_async(request: HttpRequest) -> AsyncIterator[Any]:
    last = request.headers.get("Last-Event-ID", "")
    yield ("resumed", {"length": len(last)}, last or None)


@sse_stream(name="rel.db_atomic", permission_classes=[IsAuthenticated], heartbeat=5)
def rel_db_atomic(request: HttpRequest) -> Iterator[Any]:
    """A control: polls inside ``transaction.atomic()``, which keeps its connection (as
    documented), so N of these hold N connections: proves the counting sees them."""
    from django.db import transaction

    every = float(request.GET.get("every", "0.5"))
    key = request.GET.get("s", "")
    users = get_user_model().objects
    try:
        with transaction.atomic():
            for i in itertools.count():
                count = users.count()
                used = _db_in_use()
                yield ("poll", {"i": i, "users": count})
                _db_idle(key, every)
                _db_record(key, _db_still_held(used))
    finally:
        _finally_ran("rel.db_atomic")


@sse_stream(name="rel.db_async_closes", permission_classes=[IsAuthenticated], heartbeat=5)
async def rel_db_async_closes(request: HttpRequest) -> AsyncIterator[Any]:
    """``rel_db_async`` with the workaround of docs/reliability.md: it closes the request
    thread's connection itself between polls."""
    from asgiref.sync import sync_to_async
    from django.db import connections

    every = float(request.GET.get("every", "0.5"))
    key = request.GET.get("s", "")
    users = get_user_model().objects
    user = await request.auser()
    try:
        for i in itertools.count():
            count = await users.acount()
            used = await sync_to_async(_db_in_use)()
            yield ("poll", {"i": i, "users": count, "me": user.pk})
            await sync_to_async(connections.close_all)()
            await _db_aidle(key, every)
            _db_record(key, await sync_to_async(_db_still_held)(used))
    finally:
        _finally_ran("rel.db_async_closes")


# --------------------------------------------------------------------------- broadcast
# The view decides the topics; in these test views a comma-separated path segment names
# them (a real view derives them from the request's user or object, never the client).
from django.http import HttpResponse  # noqa: E402
from django.views.decorators.csrf import csrf_exempt  # noqa: E402

from django_flosse import broadcast, subscribe  # noqa: E402


@sse_stream(name="tests.broadcast_async", heartbeat=1.0)
async def broadcast_async(request: HttpRequest, topics: str) -> AsyncIterator[Any]:
    async for event in subscribe(request, *topics.split(",")):
        yield event


@sse_stream(name="tests.broadcast_sync", heartbeat=1.0)
def broadcast_sync(request: HttpRequest, topics: str) -> Iterator[Any]:
    yield from subscribe(request, *topics.split(","))


@csrf_exempt
def broadcast_publish(request: HttpRequest, topic: str) -> HttpResponse:
    """POST: publish the body (a str) to ``topic`` from this server process."""
    broadcast(topic, request.body.decode(), event=request.GET.get("event") or None)
    return HttpResponse("ok")


def broadcast_state(request: HttpRequest) -> Any:
    """JSON: this process's broadcast backend, its subscribers of ``?topics=a,b``, the
    topics of every open connection (what the registry and the dashboard show), and with
    ``?tasks=1`` the tasks on the redis backend's loop."""
    from django.http import JsonResponse

    from django_flosse.broadcasting.backends import get_backend
    from django_flosse.observing.registry import registry

    backend = get_backend()
    count = getattr(backend, "subscribers", None)  # the memory backend's
    loop_tasks = None
    loop_thread = getattr(backend, "_thread", None)  # the redis backend's LoopThread
    if request.GET.get("tasks") and hasattr(loop_thread, "submit"):

        async def tasks() -> int:
            return len(asyncio.all_tasks()) - 1  # not this one

        loop_tasks = loop_thread.submit(tasks).result(10)
    topics = [topic for topic in request.GET.get("topics", "").split(",") if topic]
    return JsonResponse(
        {
            "pid": os.getpid(),
            "backend": backend.name,
            "subscribers": {topic: count(topic) if count else None for topic in topics},
            "loop_tasks": loop_tasks,
            "connections": [
                {"stream": c.stream, "topics": list(c.topics)} for c in registry.live()
            ],
        }
    )
