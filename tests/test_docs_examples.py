"""The documentation's examples run, and produce the frames the pages show.

Every module in ``docs/examples/`` is imported, and every view in them is run through a
``RequestFactory`` request: sync views by iterating ``streaming_content``, async views by
awaiting the view and iterating the async stream (endless ones are closed after a few
events, as a disconnecting client would). Tables of frames on the pages are checked too, so
the docs cannot drift from the code.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from django.contrib.auth.models import AnonymousUser
from django.core.cache import cache
from django.core.exceptions import ImproperlyConfigured
from django.test import RequestFactory, override_settings

from django_flosse import SSEEvent, SSEYieldError, to_sse
from django_flosse.conf import DEFAULTS, get_config

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
EXAMPLES = DOCS / "examples"
EXAMPLE_NAMES = sorted(p.stem for p in EXAMPLES.glob("*.py") if p.stem != "__init__")

rf = RequestFactory()


def example(name: str) -> ModuleType:
    return importlib.import_module(f"docs.examples.{name}")


def run_sync(view: Callable[..., Any], request: Any, *args: Any, **kwargs: Any) -> str:
    """Run a def view to its end and return everything it sent."""
    response = view(request, *args, **kwargs)
    assert response.status_code == 200, response.status_code
    assert response["Content-Type"] == "text/event-stream; charset=utf-8"
    try:
        return b"".join(response.streaming_content).decode()
    finally:
        response.close()


async def run_async(
    view: Callable[..., Any], request: Any, *args: Any, events: int | None = None, **kwargs: Any
) -> str:
    """Run an async def view; stop after ``events`` frames (a client going away) if given."""
    response = await view(request, *args, **kwargs)
    assert response.status_code == 200, response.status_code
    assert response["Content-Type"] == "text/event-stream; charset=utf-8"
    it = response.streaming_content
    received = b""
    try:
        async for chunk in it:
            received += chunk
            if events is not None and received.count(b"\n\n") >= events:
                break
    finally:
        await it.aclose()
    return received.decode()


def frames(text: str) -> list[str]:
    """Split a stream into its frames (each without the blank line that ends it)."""
    return [frame for frame in text.split("\n\n") if frame]


@pytest.fixture
def fast_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    """Examples sleep for seconds between events; the tests need not wait."""
    real_asleep = asyncio.sleep
    real_sleep = time.sleep

    async def asleep(delay: float, result: Any = None) -> Any:
        return await real_asleep(min(delay, 0.001), result)

    monkeypatch.setattr(asyncio, "sleep", asleep)
    monkeypatch.setattr(time, "sleep", lambda delay: real_sleep(min(delay, 0.001)))


# --------------------------------------------------------------------------- every module


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_every_example_imports(name: str) -> None:
    assert example(name)


def test_every_example_is_included_in_a_page() -> None:
    pages = "\n".join(p.read_text() for p in DOCS.glob("*.md"))
    for name in EXAMPLE_NAMES:
        assert f'--8<-- "docs/examples/{name}.py"' in pages, (
            f"docs/examples/{name}.py is on no page"
        )


# --------------------------------------------------------------------------- index, quick start


async def test_hello_clock(fast_sleep: None) -> None:
    text = await run_async(example("hello").clock, rf.get("/clock/"), events=3)
    assert frames(text)[:3] == [
        'event: tick\ndata: {"n": 0}',
        'event: tick\ndata: {"n": 1}',
        'event: tick\ndata: {"n": 2}',
    ]


def test_quickstart_job_progress(fast_sleep: None) -> None:
    text = run_sync(example("quickstart").job_progress, rf.get("/jobs/7/progress/"), job_id=7)
    assert frames(text) == [
        "retry: 2000",
        'event: progress\ndata: {"job": 7, "percent": 0}',
        'event: progress\ndata: {"job": 7, "percent": 25}',
        'event: progress\ndata: {"job": 7, "percent": 50}',
        'event: progress\ndata: {"job": 7, "percent": 75}',
        'event: progress\ndata: {"job": 7, "percent": 100}',
        'event: done\ndata: {"job": 7}',
    ]


async def test_quickstart_server_time(fast_sleep: None) -> None:
    text = await run_async(example("quickstart").server_time, rf.get("/time/"), events=2)
    first, second = frames(text)[:2]
    assert re.fullmatch(r'event: time\ndata: \{"now": "\d{4}-\d\d-\d\dT[\d:.]+Z"\}', first)
    assert second.startswith("event: time\n")


def test_quickstart_urls_resolve() -> None:
    from django.urls import resolve, reverse

    with override_settings(ROOT_URLCONF="docs.examples.quickstart"):
        assert reverse("job-progress", args=[7]) == "/jobs/7/progress/"
        assert resolve("/time/").func is example("quickstart").server_time


def test_class_based_view() -> None:
    view = example("class_based").NotificationsView.as_view()
    text = run_sync(view, rf.get("/notifications/"))
    assert frames(text) == ['event: greeting\ndata: {"text": "welcome", "path": "/notifications/"}']


# --------------------------------------------------------------------------- yield styles

EVERY_STYLE = (
    "data: hello\n\n"
    'event: update\ndata: {"count": 1}\n\n'
    'id: 2\nevent: update\ndata: {"count": 2}\n\n'
    "id: 3\nevent: status\ndata: saved\n\n"
    'data: {"user": "ada", "online": true}\n\n'
    ": last one\nid: 4\nevent: close\ndata: bye\n\n"
    "data: [1, 2, 3]\n\n"
)


def test_yield_styles_view() -> None:
    assert run_sync(example("yield_styles").every_style, rf.get("/")) == EVERY_STYLE


def test_yield_styles_page_shows_the_view_output() -> None:
    page = (DOCS / "yield-styles.md").read_text()
    assert "```text\n" + EVERY_STYLE.rstrip("\n") + "\n```" in page


def _table_rows(page: str, header: str) -> list[tuple[str, str]]:
    """Rows of the table under ``header``: (first cell, second cell), inline code stripped."""
    section = page.split(header, 1)[1]
    rows = []
    for line in section.splitlines()[1:]:
        if line.startswith("#"):
            break
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[0].startswith("`") and cells[1].startswith("`"):
            rows.append((cells[0].strip("`"), cells[1].strip("`")))
    assert rows, f"no table rows under {header!r}"
    return rows


def _unescape(frame: str) -> str:
    return frame.replace("\\r", "\r").replace("\\n", "\n")


YIELD_ROWS = _table_rows((DOCS / "yield-styles.md").read_text(), "## The table")


@pytest.mark.parametrize(("expression", "frame"), YIELD_ROWS)
def test_yield_styles_table(expression: str, frame: str) -> None:
    value = eval(expression, {"SSEEvent": SSEEvent})
    assert to_sse(value) == _unescape(frame)


REFUSED_ROWS = _table_rows((DOCS / "yield-styles.md").read_text(), "## What is refused")


@pytest.mark.parametrize(("expression", "error"), REFUSED_ROWS)
def test_yield_styles_refused(expression: str, error: str) -> None:
    value = eval(expression, {"SSEEvent": SSEEvent})
    expected = {"SSEYieldError": SSEYieldError, "ValueError": ValueError}[error]
    with pytest.raises(expected) as raised:
        to_sse(value)
    assert type(raised.value) is expected


# --------------------------------------------------------------------------- permissions


def _user(*, authenticated: bool = True, can_view: bool = True) -> Any:
    if not authenticated:
        return AnonymousUser()

    async def ahas_perm(perm: str) -> bool:
        return can_view and perm == "reports.view_report"

    return SimpleNamespace(
        pk=1,
        get_username=lambda: "ada",
        is_authenticated=True,
        is_staff=False,
        has_perm=lambda perm: can_view and perm == "reports.view_report",
        ahas_perm=ahas_perm,
    )


def _request(user: Any) -> Any:
    request = rf.get("/reports/")
    request.user = user

    async def auser() -> Any:
        return user

    request.auser = auser
    return request


@pytest.mark.parametrize(
    ("user", "status"),
    [
        (_user(), 200),
        (_user(can_view=False), 403),
        (_user(authenticated=False), 403),
    ],
)
def test_permissions_sync(user: Any, status: int) -> None:
    response = example("permissions").report_feed(_request(user))
    assert response.status_code == status
    if status == 200:
        assert b"".join(response.streaming_content) == b'event: report\ndata: {"rows": 120}\n\n'


@pytest.mark.parametrize(
    ("user", "status"),
    [
        (_user(), 200),
        (_user(can_view=False), 403),
        (_user(authenticated=False), 403),
    ],
)
async def test_permissions_async(user: Any, status: int) -> None:
    view = example("permissions").report_feed_async
    if status == 200:
        text = await run_async(view, _request(user))
        assert text == 'event: report\ndata: {"rows": 120}\n\n'
    else:
        assert (await view(_request(user))).status_code == 403


async def test_sync_permission_class_runs_in_a_thread_on_the_async_path() -> None:
    import threading

    from django_flosse import sse_stream

    seen = []

    class Check(example("permissions").CanViewReports):  # type: ignore[misc]
        def has_permission(self, request: Any) -> bool:
            seen.append(threading.current_thread())
            return super().has_permission(request)

    @sse_stream(permission_classes=[Check])
    async def view(request: Any) -> Any:
        yield "ok"

    assert await run_async(view, _request(_user())) == "data: ok\n\n"
    assert seen and seen[0] is not threading.current_thread()


# --------------------------------------------------------------------------- async views


async def test_polling_job_status(fast_sleep: None) -> None:
    mod = example("polling")
    await cache.aset("job:5:progress", 40)
    response = await mod.job_status(rf.get("/"), job_id=5)
    it = response.streaming_content
    received = b""
    try:
        async for chunk in it:
            received += chunk
            if b'"percent": 40' in received:
                await cache.aset("job:5:progress", 100)
            if b"event: done" in received:
                break
    finally:
        await it.aclose()
        await cache.adelete("job:5:progress")
    assert frames(received.decode()) == [
        'event: progress\ndata: {"job": 5, "percent": 40}',
        'event: progress\ndata: {"job": 5, "percent": 100}',
        'event: done\ndata: {"job": 5}',
    ]


async def test_pubsub_fan_out_and_unsubscribe() -> None:
    mod = example("pubsub")
    first = await mod.chat_feed(rf.get("/"))
    second = await mod.chat_feed(rf.get("/"))
    a, b = first.streaming_content, second.streaming_content

    # Start both streams: each subscribes, then waits at `await queue.get()`.
    reads = [asyncio.ensure_future(a.__anext__()), asyncio.ensure_future(b.__anext__())]
    for _ in range(100):
        if len(mod.chat) == 2:
            break
        await asyncio.sleep(0.001)
    assert len(mod.chat) == 2

    mod.chat.publish("message", {"text": "hi"})
    chunks = await asyncio.wait_for(asyncio.gather(*reads), timeout=5)
    assert chunks == [b'event: message\ndata: {"text": "hi"}\n\n'] * 2

    # The clients go away: the finally blocks unsubscribe.
    await a.aclose()
    await b.aclose()
    assert len(mod.chat) == 0


async def test_pubsub_slow_client_loses_messages_instead_of_blocking() -> None:
    mod = example("pubsub")
    hub = mod.Broadcaster(max_backlog=2)
    queue = hub.subscribe()
    for i in range(5):
        hub.publish("n", i)
    assert [queue.get_nowait() for _ in range(queue.qsize())] == [("n", 0), ("n", 1)]


@pytest.mark.parametrize("view_name", ["ticker", "ticker_returns"])
async def test_cleanup_on_cancellation(
    view_name: str, fast_sleep: None, caplog: pytest.LogCaptureFixture
) -> None:
    mod = example("cleanup")
    caplog.set_level(logging.INFO)
    request = rf.get("/")
    text = await run_async(getattr(mod, view_name), request, events=2)
    assert frames(text)[:2] == ['event: tick\ndata: {"n": 0}', 'event: tick\ndata: {"n": 1}']
    assert id(request) not in mod.open_feeds
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("client left the ticker") for m in messages)
    # Both idioms end as "cancelled", never as "completed" or "error".
    closed = [m for m in messages if "sse.connection.closed" in m]
    assert closed and "reason='cancelled'" in closed[-1]


@pytest.mark.django_db(transaction=True)
async def test_blocking_calls_moved_off_the_loop() -> None:
    from django.contrib.auth import get_user_model

    User = get_user_model()
    await User.objects.acreate(username="ada", is_staff=True)
    await User.objects.acreate(username="grace")
    text = await run_async(example("blocking").user_directory, rf.get("/"))
    digest = example("blocking").checksum(b"report body")
    got = frames(text)
    assert got[0] == 'event: count\ndata: {"users": 2}'
    assert got[1].startswith('event: user\ndata: {"pk": ') and '"username": "ada"}' in got[1]
    assert '"username": "grace"}' in got[2]
    assert got[3] == f'event: checksum\ndata: {{"sha256": "{digest}"}}'
    assert got[4] == 'event: staff\ndata: ["ada"]'


# --------------------------------------------------------------------------- heartbeats, resume


async def test_resume_first_visit(fast_sleep: None) -> None:
    text = await run_async(example("resume").messages, rf.get("/"), events=4)
    assert frames(text)[:4] == [
        "retry: 5000",
        'id: 1\nevent: message\ndata: {"text": "hello"}',
        'id: 2\nevent: message\ndata: {"text": "how are you?"}',
        'id: 3\nevent: message\ndata: {"text": "fine, thanks"}',
    ]


async def test_resume_after_reconnect() -> None:
    # No fast_sleep: the view sleeps a whole second after the backlog, so the two frames
    # below are all it can send within the test.
    request = rf.get("/", headers={"Last-Event-ID": "2"})
    text = await asyncio.wait_for(run_async(example("resume").messages, request, events=2), 5)
    assert frames(text) == [
        "retry: 5000",
        'id: 3\nevent: message\ndata: {"text": "fine, thanks"}',
    ]


@pytest.mark.parametrize("value", ["", "abc", "-1"])
def test_resume_ignores_ids_it_did_not_send(value: str) -> None:
    assert example("resume").last_event_id(rf.get("/", headers={"Last-Event-ID": value})) == 0


async def test_heartbeat_comment_when_idle() -> None:
    from django_flosse import sse_stream

    @sse_stream(heartbeat=0.05)
    async def idle(request: Any) -> Any:
        yield "first"
        await asyncio.sleep(3600)
        yield "never"

    text = await run_async(idle, rf.get("/"), events=3)
    assert text == "data: first\n\n: keep-alive\n\n: keep-alive\n\n"


# --------------------------------------------------------------------------- errors

ERROR_FRAME = re.compile(r"event: error\ndata: (\{.*\})")


def test_error_frame_without_debug(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="django_flosse")
    got = frames(run_sync(example("errors").export, rf.get("/")))
    assert got[0] == 'event: status\ndata: {"state": "started"}'
    match = ERROR_FRAME.fullmatch(got[1])
    assert match and len(got) == 2
    payload = json.loads(match.group(1))
    assert payload == {
        "message": "The event stream failed on the server.",
        "error_id": payload["error_id"],
    }
    assert re.fullmatch(r"[0-9a-f]{8}", payload["error_id"])
    # The log has the error id and the traceback; the client has neither.
    error = next(r for r in caplog.records if "sse.stream.error" in r.getMessage())
    assert f"error_id='{payload['error_id']}'" in error.getMessage()
    assert error.exc_info and error.exc_info[0] is ConnectionError


@override_settings(DEBUG=True)
def test_error_frame_with_debug() -> None:
    got = frames(run_sync(example("errors").export, rf.get("/")))
    payload = json.loads(ERROR_FRAME.fullmatch(got[1]).group(1))  # type: ignore[union-attr]
    assert payload["detail"] == "ConnectionError: database at 10.0.0.5 refused the connection"


def test_errors_page_shows_the_frames() -> None:
    page = (DOCS / "errors.md").read_text()
    assert (
        'event: error\ndata: {"message": "The event stream failed on the server.", "error_id": "'
        in page
    )


# --------------------------------------------------------------------------- settings


def test_settings_example_is_the_defaults() -> None:
    documented = example("settings_example").FLOSSE
    assert documented == dict(DEFAULTS)
    with override_settings(FLOSSE=documented):
        config = get_config()
        assert config.heartbeat == 15.0
        assert config.sync_read_ahead == 16
    page = (DOCS / "settings.md").read_text()
    for key in DEFAULTS:
        assert f"`{key}`" in page, f"FLOSSE[{key!r}] is not documented"


def test_settings_unknown_key_is_refused() -> None:
    with override_settings(FLOSSE={"HEARTBEATS": 5}), pytest.raises(ImproperlyConfigured):
        get_config()


# --------------------------------------------------------------------------- migration


def _fenced_pairs(page: str) -> Iterator[tuple[str, str]]:
    """(expression, after) pairs: a ```python block `yield X`, then its "After" tab."""
    pattern = r'```python\nyield (.+?)\n```\n\n=== "Before \(0\.2\.0\)".*?=== "After"\n\n    ```text\n(.*?)\n    ```'
    for match in re.finditer(pattern, page, re.S):
        after = "\n".join(line[4:] for line in match.group(2).splitlines())
        yield match.group(1), after


MIGRATION_PAIRS = list(_fenced_pairs((DOCS / "migration.md").read_text()))


def test_migration_page_has_checked_examples() -> None:
    assert len(MIGRATION_PAIRS) >= 6


@pytest.mark.parametrize(("expression", "after"), MIGRATION_PAIRS)
def test_migration_after_frames(expression: str, after: str) -> None:
    value = eval(expression, {"SSEEvent": SSEEvent})
    try:
        got = to_sse(value)
    except (SSEYieldError, ValueError) as exc:
        assert " ".join(after.split()) == " ".join(f"{type(exc).__name__}: {exc}".split())
    else:
        assert got == after + "\n\n"


# --------------------------------------------------------------------------- validate first


@pytest.mark.django_db
def test_validate_first() -> None:
    from django.contrib.auth import get_user_model
    from django.http import Http404

    mod = example("validate_first")
    with pytest.raises(Http404):
        mod.user_activity(rf.get("/"), username="nobody")
    user = get_user_model().objects.create(username="ada")
    text = run_sync(mod.user_activity, rf.get("/"), username="ada")
    joined = user.date_joined.isoformat().replace("+00:00", "Z")
    assert text.startswith('event: user\ndata: {"username": "ada", "joined": "')
    assert text.endswith('"}\n\n') and joined[:19] in text


# --------------------------------------------------------------------------- testing helpers


@override_settings(ROOT_URLCONF="docs.examples.quickstart")
def test_testing_example_sync(fast_sleep: None) -> None:
    from django.test import Client

    example("testing_example").test_job_progress(Client())


@override_settings(ROOT_URLCONF="docs.examples.quickstart")
async def test_testing_example_async(fast_sleep: None) -> None:
    from django.test import AsyncClient

    await example("testing_example").test_server_time(AsyncClient())


def test_testing_page_shows_parse_events() -> None:
    from django_flosse.testing import parse_events

    events = parse_events('id: 1\nevent: tick\ndata: {"n": 1}\n\n: keep-alive\n\ndata: plain\n\n')
    assert [(e.event, e.data, e.id) for e in events] == [
        ("tick", '{"n": 1}', "1"),
        ("message", "plain", "1"),
    ]
    page = (DOCS / "testing.md").read_text()
    assert "parse_events(" in page


def test_testing_unit_example(fast_sleep: None) -> None:
    example("testing_unit").test_job_progress_unit()


# -- observability.md -----------------------------------------------------------------


def test_the_observer_example_counts_long_connections() -> None:
    from django_flosse.observing.registry import Connection, Registry

    observer = example("observer").LongConnections()
    local = Registry()
    local.subscribe(observer)
    short, long = Connection(id="a", stream="s"), Connection(id="b", stream="s")
    long.opened_at -= 120
    for connection in (short, long):
        local.open(connection)
        local.close(connection, "completed")
    assert observer.per_stream == {"s": 1}


def test_the_registry_api_example_reads_totals_and_live_connections() -> None:
    from django_flosse.observing.registry import Connection, registry

    module = example("registry_api")
    connection = Connection(id="docs-example", stream="docs.summary", username="ada")
    registry.open(connection)
    try:
        connection.events_sent, connection.bytes_sent = 3, 42
        summary = module.stream_summary()["docs.summary"]
        assert summary["active"] == 1
        assert summary["events"] == 3 and summary["bytes"] == 42
        assert ("docs.summary", "ada") in [row[:2] for row in module.oldest_connections()]
    finally:
        registry.close(connection, "cancelled")
    assert module.stream_summary()["docs.summary"]["cancelled"] == 1


# -- broadcast.md -----------------------------------------------------------------------
# Every example runs on the memory backend (the page's own advice for tests), in
# transactional tests: broadcast() waits for the commit, so the test transaction must end.

MEMORY = {"BROADCAST_BACKEND": "memory"}
WAIT = 10.0  # seconds any one step may take at most (a loaded machine), never a sleep


def _subscribers(*topics: str) -> int:
    from django_flosse.broadcasting.backends import get_backend

    backend = get_backend()
    return min(backend.subscribers(topic) for topic in topics)  # type: ignore[attr-defined]


async def _until_subscribed(*topics: str, count: int = 1) -> None:
    deadline = time.monotonic() + WAIT
    while _subscribers(*topics) < count:
        assert time.monotonic() < deadline, f"no subscriber joined {topics}"
        await asyncio.sleep(0.005)


class _Feed:
    """An open async stream of a view, read frame by frame (closed by ``close()``)."""

    def __init__(self, response: Any) -> None:
        assert response.status_code == 200, response.status_code
        self.content = response.streaming_content
        self.buffer = b""
        self.pending: asyncio.Future[bytes] | None = None

    def start(self) -> None:
        """Ask for the first chunk: the view runs up to its subscription and waits."""
        self.pending = asyncio.ensure_future(self.content.__anext__())

    async def frames(self, count: int) -> list[str]:
        got: list[str] = []
        while len(got) < count:
            if b"\n\n" in self.buffer:
                frame, self.buffer = self.buffer.split(b"\n\n", 1)
                if not frame.startswith(b"retry:"):
                    got.append(frame.decode())
                continue
            if self.pending is None:
                self.start()
            assert self.pending is not None
            chunk = await asyncio.wait_for(self.pending, WAIT)
            self.pending = None
            self.buffer += chunk
        return got

    async def close(self) -> None:
        if self.pending is not None:
            self.pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await self.pending
        await self.content.aclose()


def _fields(frame: str) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in frame.split("\n"))


async def _open_order_feed(request: Any) -> _Feed:
    feed = _Feed(await example("broadcast_views").order_feed(request))
    feed.start()
    await _until_subscribed("orders", "user-1")
    return feed


def _pay(order_id: int) -> None:
    request = rf.post(f"/orders/{order_id}/pay/")
    request.user = _user()
    assert example("broadcast_views").pay_order(request, order_id=order_id).status_code == 204


@pytest.mark.django_db(transaction=True)
@override_settings(FLOSSE=MEMORY)
async def test_broadcast_publish_subscribe_resume_and_reset() -> None:
    from asgiref.sync import sync_to_async

    feed = await _open_order_feed(_request(_user()))
    try:
        await sync_to_async(_pay)(7)
        order, receipt = await feed.frames(2)
    finally:
        await feed.close()
    assert _fields(order)["event"] == "order" and _fields(order)["data"] == (
        '{"id": 7, "status": "paid"}'
    )
    assert _fields(receipt)["event"] == "receipt" and _fields(receipt)["data"] == '{"id": 7}'
    first_id = _fields(order)["id"]

    # Away after the first event; two more are published meanwhile.
    await sync_to_async(_pay)(8)
    # Back with the header: the missed events once, in order, then the live ones.
    resumed = await _open_order_feed(_request_with(_user(), headers={"Last-Event-ID": first_id}))
    try:
        replayed = await resumed.frames(3)
        await sync_to_async(_pay)(9)
        live = await resumed.frames(2)
    finally:
        await resumed.close()
    # Each topic in its order (a replay sends one topic after the other).
    got = [(_fields(f)["event"], _fields(f)["data"]) for f in replayed + live]
    assert [data for event, data in got if event == "order"] == [
        '{"id": 8, "status": "paid"}',
        '{"id": 9, "status": "paid"}',
    ]
    assert [data for event, data in got if event == "receipt"] == [
        '{"id": 7}',
        '{"id": 8}',
        '{"id": 9}',
    ]
    # The query parameter does the same for clients that cannot set headers.
    order_9 = next(f for f in live if '"id": 9, "status"' in f)  # its receipt came after it
    by_query = await _open_order_feed(
        _request_with(_user(), query={"lastEventId": _fields(order_9)["id"]})
    )
    try:
        assert [_fields(f)["data"] for f in await by_query.frames(1)] == ['{"id": 9}']
    finally:
        await by_query.close()

    # An id the history cannot place: one flosse-reset, then only new events.
    reset = await _open_order_feed(_request_with(_user(), headers={"Last-Event-ID": "made-up"}))
    try:
        (first,) = await reset.frames(1)
        await sync_to_async(_pay)(10)
        after = await reset.frames(1)
    finally:
        await reset.close()
    assert _fields(first)["event"] == "flosse-reset"
    assert json.loads(_fields(first)["data"]) == {"topics": ["orders", "user-1"]}
    assert _fields(after[0])["data"] == '{"id": 10, "status": "paid"}'


def _request_with(
    user: Any, headers: dict[str, str] | None = None, query: dict[str, str] | None = None
) -> Any:
    request = rf.get("/orders/feed/", query or {}, headers=headers or {})
    request.user = user

    async def auser() -> Any:
        return user

    request.auser = auser
    return request


@pytest.mark.django_db(transaction=True)
@override_settings(FLOSSE=MEMORY)
async def test_broadcast_rolled_back_publishes_nothing() -> None:
    from asgiref.sync import sync_to_async
    from django.db import transaction

    from django_flosse import broadcast

    def rolled_back() -> None:
        with contextlib.suppress(RuntimeError), transaction.atomic():
            broadcast("orders", {"id": 1, "status": "paid"}, event="order")
            raise RuntimeError("the payment failed")

    feed = await _open_order_feed(_request(_user()))
    try:
        await sync_to_async(rolled_back)()
        await sync_to_async(_pay)(2)
        order, _receipt = await feed.frames(2)
    finally:
        await feed.close()
    assert _fields(order)["data"] == '{"id": 2, "status": "paid"}'  # and never id 1


@pytest.mark.timeout(60)
@pytest.mark.django_db(transaction=True)
@override_settings(FLOSSE=MEMORY)
def test_broadcast_sync_view() -> None:
    import threading

    request = rf.get("/orders/feed/")
    request.user = _user()
    response = example("broadcast_views").order_feed_sync(request)
    assert response.status_code == 200
    content = iter(response.streaming_content)
    failures: list[BaseException] = []

    def publish() -> None:
        try:
            deadline = time.monotonic() + WAIT
            while _subscribers("orders", "user-1") < 1:
                assert time.monotonic() < deadline, "the sync view never subscribed"
                time.sleep(0.005)
            _pay(3)
        except BaseException as exc:  # reported by the test thread
            failures.append(exc)
        finally:
            from django.db import connection

            connection.close()

    publisher = threading.Thread(target=publish)
    publisher.start()
    try:
        received = b""
        while received.count(b"\n\n") < 3 and not failures:  # retry, order, receipt
            received += next(content)
    finally:
        publisher.join(WAIT)
        response.close()
    assert not failures, failures
    events = [_fields(f) for f in frames(received.decode()) if not f.startswith("retry:")]
    assert [(e["event"], e["data"]) for e in events] == [
        ("order", '{"id": 3, "status": "paid"}'),
        ("receipt", '{"id": 3}'),
    ]


def _rows(count: int) -> list[Any]:
    return [SimpleNamespace(save=lambda: None) for _ in range(count)]


@pytest.mark.django_db(transaction=True)
@override_settings(FLOSSE=MEMORY)
async def test_broadcast_on_commit_false_publishes_inside_the_transaction() -> None:
    from asgiref.sync import sync_to_async
    from django.db import transaction

    from django_flosse import sse_stream, subscribe

    @sse_stream
    async def import_feed(request: Any) -> Any:
        async for event in subscribe(request, "import-5"):
            yield event

    def import_then_roll_back() -> None:
        with contextlib.suppress(RuntimeError), transaction.atomic():
            example("broadcast_progress").import_rows(5, _rows(3))
            raise RuntimeError("the whole import rolls back")

    feed = _Feed(await import_feed(rf.get("/")))
    feed.start()
    await _until_subscribed("import-5")
    try:
        await sync_to_async(import_then_roll_back)()  # progress published, "done" not
        await sync_to_async(example("broadcast_progress").import_rows)(5, _rows(1))
        got = [_fields(f) for f in await feed.frames(5)]
    finally:
        await feed.close()
    assert [(e["event"], e["data"]) for e in got] == [
        ("progress", '{"done": 1, "of": 3}'),
        ("progress", '{"done": 2, "of": 3}'),
        ("progress", '{"done": 3, "of": 3}'),
        ("progress", '{"done": 1, "of": 1}'),
        ("done", '{"rows": 1}'),
    ]


async def _topic_feed(*topics: str) -> _Feed:
    from django_flosse import sse_stream, subscribe

    @sse_stream
    async def view(request: Any) -> Any:
        async for event in subscribe(request, *topics):
            yield event

    feed = _Feed(await view(rf.get("/")))
    feed.start()
    await _until_subscribed(*topics)
    return feed


@pytest.mark.django_db(transaction=True)
@override_settings(FLOSSE=MEMORY)
async def test_broadcast_from_a_post_save_handler() -> None:
    from asgiref.sync import sync_to_async
    from django.db import transaction
    from django.db.models.signals import post_save

    handler = example("broadcast_signals").comment_saved

    class Comment:  # the sender; the instance is what a saved Comment would look like
        pass

    saved = SimpleNamespace(pk=3, article_id=9, author_name="ada")

    def save_in_a_transaction() -> None:
        with transaction.atomic():
            post_save.send(sender=Comment, instance=saved, created=False)  # an update: nothing
            post_save.send(sender=Comment, instance=saved, created=True)

    post_save.connect(handler, sender=Comment, dispatch_uid="docs.comments")
    feed = await _topic_feed("article-9")
    try:
        await sync_to_async(save_in_a_transaction)()
        (comment,) = await feed.frames(1)
    finally:
        await feed.close()
        post_save.disconnect(sender=Comment, dispatch_uid="docs.comments")
    assert _fields(comment)["event"] == "comment"
    assert _fields(comment)["data"] == '{"id": 3, "author": "ada"}'


@pytest.mark.django_db(transaction=True)
@override_settings(FLOSSE=MEMORY)
async def test_broadcast_from_a_task_and_an_async_view() -> None:
    from asgiref.sync import sync_to_async

    tasks = example("broadcast_tasks")
    user_feed = await _topic_feed("user-4")
    orders = await _topic_feed("orders")
    try:
        await sync_to_async(tasks.export_finished)(4, 31)  # what a Celery worker runs
        request = rf.post("/webhook/", b'{"order": 12}', content_type="application/json")
        assert (await tasks.payment_webhook(request)).status_code == 204
        (export,) = await user_feed.frames(1)
        (order,) = await orders.frames(1)
    finally:
        await user_feed.close()
        await orders.close()
    assert _fields(export)["event"] == "export-ready"
    assert json.loads(_fields(export)["data"]) == {"export": 31, "url": "/exports/31/"}
    assert _fields(order)["data"] == '{"id": 12, "status": "paid"}'


@pytest.mark.django_db(transaction=True)
@override_settings(FLOSSE=MEMORY)
async def test_broadcast_management_command() -> None:
    """The page's two command lines, run with call_command in this process."""
    from asgiref.sync import sync_to_async
    from django.core.management import call_command

    page = (DOCS / "broadcast.md").read_text()
    lines = re.findall(r"^python manage\.py (flosse_broadcast .+)$", page, re.M)
    assert len(lines) == 2, lines
    import shlex

    feed = await _topic_feed("orders")
    try:
        for line in lines:
            await sync_to_async(call_command)(*shlex.split(line))
        plain, parsed = await feed.frames(2)
    finally:
        await feed.close()
    assert "event" not in _fields(plain) and _fields(plain)["data"] == "stock was refreshed"
    assert _fields(parsed)["event"] == "order"
    assert _fields(parsed)["data"] == '{"id": 7, "status": "paid"}'


BROADCAST_ERRORS = re.findall(
    r"^>>> (broadcast\(.*\))\nValueError: (.*)$",
    (DOCS / "broadcast.md").read_text(),
    re.M,
)


def test_broadcast_page_shows_the_errors() -> None:
    assert len(BROADCAST_ERRORS) == 4


@pytest.mark.parametrize(("call", "message"), BROADCAST_ERRORS)
@override_settings(FLOSSE=MEMORY)
def test_broadcast_validation_errors(call: str, message: str) -> None:
    from django_flosse import broadcast

    with pytest.raises(ValueError) as raised:
        eval(call, {"broadcast": broadcast})
    assert str(raised.value) == message
