"""The demo (example/) started the way ``make demo`` starts it, checked from the outside.

``make demo`` runs ``manage.py migrate``, ``manage.py demo_setup`` and uvicorn; this module
does the same as subprocesses (``sys.executable``, on a free port of 127.0.0.1, with a
temporary SQLite database through ``DEMO_DB``, so a developer's example/db.sqlite3 is never
touched), then checks what docs/demo.md promises: the pages, each stream, the dashboard
after logging in as the demo user, the metrics view, the JSON logs and the load generator.
Every process started here is stopped by its pid.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import EventSource, ServerSentEvent, connect_sse

from tests.support.processes import stop_process
from tests.support.servers import HOST, REPO_ROOT, free_port

pytestmark = [pytest.mark.server, pytest.mark.timeout(120)]

EXAMPLE = REPO_ROOT / "example"
START_TIMEOUT = 20.0
STREAM_URLS = [
    "/stream/feed/",
    "/stream/progress/",
    "/stream/resume/",
    "/stream/fail/",
]


@dataclass
class Demo:
    url: str
    pid: int
    log_path: Path
    env: dict[str, str]
    banner: str
    urls: dict[str, str] = field(default_factory=dict)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_records(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.logs().splitlines() if line.strip()]


def _env(db_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    for name in ("DEMO_DATABASE_URL", "DEMO_BROADCAST_BACKEND", "DEMO_REDIS_URL"):
        env.pop(name, None)
    env.update(
        {
            # pytest-django exported tests.settings; the demo has its own.
            "DJANGO_SETTINGS_MODULE": "demo.settings",
            "DEMO_DB": str(db_path),
            "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(EXAMPLE)]),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def _manage(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "example/manage.py", *args],
        cwd=REPO_ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"manage.py {' '.join(args)} failed:\n{result.stderr}"
    return result.stdout


def _banner_urls(banner: str) -> dict[str, str]:
    """``{"home (EventSource)": "http://...", ...}`` from the lines demo_setup prints."""
    return {
        match["label"]: match["url"]
        for match in re.finditer(r"^\s+(?P<label>[^:\n]+):\s+(?P<url>http://\S+)$", banner, re.M)
    }


@pytest.fixture(scope="module")
def demo() -> Iterator[Demo]:
    tmp = Path(tempfile.mkdtemp(prefix="flosse-demo-test-"))
    env = _env(tmp / "demo.sqlite3")
    _manage(env, "migrate", "--noinput")
    proc: subprocess.Popen[bytes] | None = None
    first_banner = ""
    try:
        for attempt in range(3):
            port = free_port()
            banner = _manage(env, "demo_setup", "--port", str(port))
            first_banner = first_banner or banner  # the one that created the user
            log_path = tmp / f"uvicorn-{attempt}.log"
            # The command line of `make demo`.
            command = [
                sys.executable, "-m", "uvicorn", "demo.asgi:application",
                "--app-dir", "example", "--host", HOST, "--port", str(port),
                "--lifespan", "off", "--timeout-graceful-shutdown", "2",
            ]  # fmt: skip
            with log_path.open("wb") as log:
                proc = subprocess.Popen(
                    command,
                    cwd=REPO_ROOT,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            url = f"http://{HOST}:{port}"
            deadline = time.monotonic() + START_TIMEOUT
            while proc.poll() is None and time.monotonic() < deadline:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(url + "/", timeout=2).status_code == 200:
                        break
                time.sleep(0.1)
            else:
                logs = log_path.read_text(errors="replace")
                stop_process(proc, 10, 10)
                if "address already in use" in logs.lower() and attempt < 2:
                    continue
                pytest.fail(f"the demo did not start:\n{logs}")
            demo = Demo(url, proc.pid, log_path, env, first_banner, _banner_urls(banner))
            yield demo
            return
    finally:
        if proc is not None:
            stop_process(proc, 10, 10)
        for path in sorted(tmp.iterdir(), reverse=True):
            path.unlink()
        tmp.rmdir()


def _dispatched(events: Iterator[ServerSentEvent]) -> tuple[int | None, list[ServerSentEvent]]:
    """Read a stream to its end like a browser: ``(retry, events)``.

    A frame with only a ``retry:`` field sets the reconnection delay and dispatches no event
    (httpx-sse yields it as an empty message)."""
    retry, dispatched = None, []
    for event in events:
        if event.retry is not None:
            retry = event.retry
        if event.data or event.event != "message":
            dispatched.append(event)
    return retry, dispatched


# --------------------------------------------------------------------------- set-up


def test_demo_setup_prints_the_login_and_the_urls(demo: Demo) -> None:
    assert "created the superuser 'demo' with the password 'demo'" in demo.banner
    assert "for this local demo only" in demo.banner
    # (urls: from the banner of the port the server runs on)
    assert demo.urls == {
        "home (EventSource)": demo.url + "/",
        "htmx page": demo.url + "/htmx/",
        "broadcast page": demo.url + "/broadcast/",
        "live dashboard": demo.url + "/admin/django_flosse/streamconnection/dashboard/",
        "metrics": demo.url + "/flosse/metrics/",
    }


def test_demo_setup_runs_again_without_creating_anyone(demo: Demo) -> None:
    again = _manage(demo.env, "demo_setup", "--port", "8000")
    assert "log in as 'demo' with the password 'demo'" in again
    assert "created" not in again


# --------------------------------------------------------------------------- pages


def external_resources(html: str) -> list[str]:
    """Scripts, styles and links the page loads from another host (a CDN): the demo must
    work offline. (Looking for the text "cdn" failed once: a random CSRF token held it.)"""
    urls = re.findall(r"""\b(?:src|href)\s*=\s*["']([^"']*)["']""", html, flags=re.IGNORECASE)
    return [url for url in urls if re.match(r"(?i)(?:[a-z][a-z0-9+.-]*:)?//", url)]


def test_home_page_references_every_stream_and_link(demo: Demo) -> None:
    response = httpx.get(demo.url + "/")
    assert response.status_code == 200
    for url in [*STREAM_URLS, "/htmx/", "/broadcast/", "/flosse/metrics/", "/static/demo/home.js"]:
        assert url in response.text, url
    assert "/admin/django_flosse/streamconnection/dashboard/" in response.text
    assert external_resources(response.text) == []
    script = httpx.get(demo.url + "/static/demo/home.js")
    assert script.status_code == 200
    assert "new EventSource" in script.text


def test_htmx_page_uses_the_vendored_sse_extension(demo: Demo) -> None:
    response = httpx.get(demo.url + "/htmx/")
    assert response.status_code == 200
    assert 'hx-ext="sse"' in response.text
    assert 'sse-connect="/stream/htmx/"' in response.text
    for name, marker in [("htmx.min.js", "htmx.org"), ("sse.min.js", "htmx-ext-sse")]:
        assert f"/static/demo/vendor/{name}" in response.text
        script = httpx.get(f"{demo.url}/static/demo/vendor/{name}")
        assert script.status_code == 200
        assert script.text.startswith(f"/*! {marker} ")  # the license header line
    assert external_resources(response.text) == []


# --------------------------------------------------------------------------- streams


def test_feed_ticks_and_delivers_a_posted_message(demo: Demo) -> None:
    with httpx.Client(base_url=demo.url, timeout=10) as client:
        client.get("/")  # the CSRF cookie
        with connect_sse(client, "GET", "/stream/feed/") as source:
            assert source.response.headers["content-type"].startswith("text/event-stream")
            events = source.iter_sse()
            first = next(events)
            assert first.event == "tick"
            assert first.json()["n"] == 0
            posted = client.post(
                "/messages/",
                data={
                    "text": "hello <b>demo</b>",
                    "csrfmiddlewaretoken": client.cookies["csrftoken"],
                },
                headers={"X-Requested-With": "fetch"},
            )
            assert posted.status_code == 204
            for event in itertools.islice(events, 5):  # a poll a second
                if event.event == "message":
                    assert event.json()["text"] == "hello <b>demo</b>"
                    assert event.id
                    break
            else:
                pytest.fail("the posted message never arrived on the feed")


def test_htmx_stream_sends_html_fragments(demo: Demo) -> None:
    with httpx.Client(base_url=demo.url, timeout=10) as client:
        with connect_sse(client, "GET", "/stream/htmx/") as source:
            events = {e.event: e.data for e in itertools.islice(source.iter_sse(), 2)}
    assert re.fullmatch(r"<time>\d\d:\d\d:\d\d</time>", events["clock"])
    assert events["stats"].startswith("<table>")


def test_progress_stream_completes(demo: Demo) -> None:
    with httpx.Client(base_url=demo.url, timeout=10) as client:
        with connect_sse(client, "GET", "/stream/progress/") as source:
            retry, events = _dispatched(source.iter_sse())  # ends: the server closes it
    assert retry == 2000
    assert [e.event for e in events] == ["progress"] * 11 + ["done"]
    assert [e.json()["percent"] for e in events[:-1]] == list(range(0, 101, 10))


def test_resume_stream_honours_last_event_id(demo: Demo) -> None:
    with httpx.Client(base_url=demo.url, timeout=10) as client:
        with connect_sse(client, "GET", "/stream/resume/") as source:
            retry, fresh = _dispatched(source.iter_sse())
        headers = {"Last-Event-ID": "7"}
        with connect_sse(client, "GET", "/stream/resume/", headers=headers) as source:
            _, resumed = _dispatched(source.iter_sse())
        headers = {"Last-Event-ID": "28"}
        with connect_sse(client, "GET", "/stream/resume/", headers=headers) as source:
            _, last = _dispatched(source.iter_sse())
    # Each connection: a few events, then the server ends it (the browser reconnects).
    assert [e.id for e in fresh] == ["1", "2", "3", "4", "5"]
    assert retry == 1000
    assert fresh[0].json() == {"n": 1, "last_event_id": None}
    assert [e.id for e in resumed] == ["8", "9", "10", "11", "12"]
    assert {e.json()["last_event_id"] for e in resumed} == {"7"}
    assert [(e.event, e.id) for e in last] == [("count", "29"), ("count", "30"), ("done", "30")]


def test_failing_stream_sends_an_error_event_with_an_id(demo: Demo) -> None:
    with httpx.Client(base_url=demo.url, timeout=10) as client:
        with connect_sse(client, "GET", "/stream/fail/") as source:
            _, events = _dispatched(source.iter_sse())
    assert [e.event for e in events] == ["status", "status", "error"]
    error = events[-1].json()
    assert error["message"] == "The event stream failed on the server."
    assert re.fullmatch(r"[0-9a-f]{8}", error["error_id"])
    assert error["detail"].startswith("RuntimeError: ")  # the demo runs with DEBUG on
    # The same id is in the JSON log, with the traceback.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        logged = [
            r for r in demo.log_records()
            if r.get("event") == "sse.stream.error" and r.get("error_id") == error["error_id"]
        ]  # fmt: skip
        if logged:
            break
        time.sleep(0.1)
    assert logged, demo.logs()
    assert logged[0]["stream"] == "demo.fail"
    assert "RuntimeError" in str(logged[0]["exception"])


# --------------------------------------------------------------------------- broadcast


def test_broadcast_page_references_its_streams(demo: Demo) -> None:
    response = httpx.get(demo.url + "/broadcast/")
    assert response.status_code == 200
    for url in ["/stream/news/", "/stream/alerts/", "/broadcast/publish/"]:
        assert url in response.text, url
    assert "/static/demo/broadcast.js" in response.text
    assert external_resources(response.text) == []
    script = httpx.get(demo.url + "/static/demo/broadcast.js")
    assert script.status_code == 200
    assert "lastEventId=" in script.text and "flosse-reset" in script.text


def _publish(client: httpx.Client, topic: str, text: str, count: int = 1) -> None:
    if "csrftoken" not in client.cookies:
        client.get("/broadcast/")
    response = client.post(
        "/broadcast/publish/",
        data={
            "topic": topic,
            "text": text,
            "count": str(count),
            "csrfmiddlewaretoken": client.cookies["csrftoken"],
        },
        headers={"X-Requested-With": "fetch"},
    )
    assert response.status_code == 204, response.text


@contextlib.contextmanager
def _pane(
    demo: Demo, path: str, *, query: str = "", headers: dict[str, str] | None = None
) -> Iterator[Iterator[ServerSentEvent]]:
    """A pane's stream, its ``hello`` read: the events after it (``retry`` frames skipped)."""
    with (
        httpx.Client(base_url=demo.url, timeout=10) as client,
        client.stream("GET", path + query, headers=headers or {}) as response,
    ):
        assert response.status_code == 200
        events = (e for e in EventSource(response).iter_sse() if e.event != "message")
        hello = next(events)
        assert hello.event == "hello" and hello.json()["pid"] == demo.pid
        yield events


def _joined(events: Iterator[ServerSentEvent]) -> ServerSentEvent:
    """The ``flosse-reset`` a made-up id gets: sent once the stream has joined its topic, so
    that everything published afterwards reaches it (a stream without an id gets only what
    is published once it has joined, and that instant is not visible from outside)."""
    reset = next(events)
    assert reset.event == "flosse-reset"
    return reset


def test_broadcast_reaches_the_subscribed_pane_once_and_resumes(demo: Demo) -> None:
    notes = lambda events, n: [e.json()["text"] for e in itertools.islice(events, n)]  # noqa: E731
    with httpx.Client(base_url=demo.url, timeout=10) as publisher:
        with (
            _pane(demo, "/stream/news/", query="?lastEventId=made-up") as news,
            _pane(demo, "/stream/alerts/", query="?lastEventId=made-up") as alerts,
        ):
            assert _joined(news).json() == {"topics": ["news"]}
            assert _joined(alerts).json() == {"topics": ["alerts"]}
            _publish(publisher, "news", "n1")
            _publish(publisher, "alerts", "a1")
            first = next(news)
            assert (first.event, first.json()["text"]) == ("note", "n1")
            assert first.json()["pid"] == demo.pid
            a1 = next(alerts)
            assert a1.json()["text"] == "a1"  # the news event never reached alerts
        # The news pane was away: three events were published meanwhile.
        _publish(publisher, "news", "missed", count=3)
        with _pane(demo, "/stream/news/", query=f"?lastEventId={first.id}") as news:
            replayed = list(itertools.islice(news, 3))
            _publish(publisher, "news", "n2")
            live = next(news)
        assert [e.json()["text"] for e in replayed] == [
            "missed (1/3)",
            "missed (2/3)",
            "missed (3/3)",
        ]
        assert live.json()["text"] == "n2"
        # The header does the same (EventSource's own reconnections send it).
        with _pane(demo, "/stream/news/", headers={"Last-Event-ID": replayed[1].id}) as news:
            assert notes(news, 2) == ["missed (3/3)", "n2"]
        # The def view resumes the same way; an id of the other topic cannot be placed.
        _publish(publisher, "alerts", "a2")
        with _pane(demo, "/stream/alerts/", query=f"?lastEventId={a1.id}") as alerts:
            assert notes(alerts, 1) == ["a2"]
        with _pane(demo, "/stream/alerts/", query=f"?lastEventId={first.id}") as alerts:
            assert _joined(alerts).json() == {"topics": ["alerts"]}


@pytest.mark.slow
def test_broadcast_page_in_a_browser(demo: Demo) -> None:
    """Headless Chromium (as tests/test_browser.py runs it) on the broadcast page: publish,
    disconnect, publish, reconnect with ``?lastEventId=``, and the made-up id's reset."""
    from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, _require_browser

    sync_api = _require_browser()
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        lines: list[str] = []
        try:
            page = browser.new_page()
            page.set_default_timeout(10_000)
            page.on("console", lambda message: lines.append(message.text))
            page.on("pageerror", lambda error: lines.append(f"pageerror: {error}"))
            _drive_broadcast_page(page, demo)
        except BaseException:
            print(demo.logs()[-5000:], *lines, sep="\n")
            raise
        finally:
            browser.close()


def _drive_broadcast_page(page: Any, demo: Demo) -> None:
    news, alerts = page.locator("#demo-pane-news"), page.locator("#demo-pane-alerts")

    def rows(pane: Any, text: str) -> Any:
        return pane.locator("tbody tr", has_text=text)

    def publish(topic: str, text: str, count: int = 1) -> None:
        page.select_option("#demo-publish select[name=topic]", topic)
        page.fill("#demo-publish input[name=text]", text)
        page.fill("#demo-publish input[name=count]", str(count))
        page.click("#demo-publish button[type=submit]")
        page.wait_for_function(
            "document.querySelector('#demo-publish input[name=text]').value === ''"
        )

    page.goto(demo.url + "/broadcast/")
    for pane in (news, alerts):
        _expect(pane.locator("[data-role=status]")).to_contain_text(
            f"connected to process {demo.pid}"
        )
        # Joined for sure once the made-up id's reset is there (see _joined above).
        pane.get_by_role("button", name="Reconnect with a made-up id").click()
        _expect(rows(pane, "flosse-reset")).to_have_count(1)

    publish("news", "hello news")
    publish("alerts", "hello alerts")
    _expect(rows(alerts, "hello alerts")).to_have_count(1)
    _expect(rows(news, "hello news")).to_have_count(1)
    assert rows(alerts, "hello news").count() == 0

    # Away: three events missed, then the resume brings exactly those.
    news.get_by_role("button", name="Disconnect").click()
    publish("news", "missed", count=3)
    news.get_by_role("button", name="Reconnect from the last id").click()
    _expect(news.locator("[data-role=status]")).to_contain_text("resumed from")
    for n in (1, 2, 3):
        _expect(rows(news, f"missed ({n}/3)")).to_have_count(1)
    publish("news", "after the resume")
    _expect(rows(news, "after the resume")).to_have_count(1)
    for n in (1, 2, 3):  # still once each: nothing replayed twice
        assert rows(news, f"missed ({n}/3)").count() == 1
    # Every row of the last connection came through the resumed one.
    assert rows(news, "missed").evaluate_all("rs => rs.map(r => r.cells[0].textContent)") == [
        "3",
        "3",
        "3",
    ]


def _expect(locator: Any) -> Any:
    from playwright.sync_api import expect

    return expect(locator)


# --------------------------------------------------------------------------- operators


def test_dashboard_answers_after_logging_in_as_the_demo_user(demo: Demo) -> None:
    dashboard = demo.urls["live dashboard"]
    with httpx.Client(timeout=10) as client:
        anonymous = client.get(dashboard)
        assert anonymous.status_code == 302
        login_url = str(anonymous.next_request.url) if anonymous.next_request else ""
        assert "/admin/login/" in login_url
        form = client.get(login_url)
        assert form.status_code == 200
        logged_in = client.post(
            login_url,
            data={
                "username": "demo",
                "password": "demo",
                "csrfmiddlewaretoken": client.cookies["csrftoken"],
                "next": "/admin/django_flosse/streamconnection/dashboard/",
            },
            headers={"Referer": login_url},
            follow_redirects=True,
        )
        assert logged_in.status_code == 200
        assert str(logged_in.url) == dashboard
        assert "Live dashboard" in logged_in.text
        # Its own SSE feed: a snapshot first.
        with connect_sse(client, "GET", dashboard + "stream/") as source:
            first = next(source.iter_sse())
        assert first.event == "snapshot"


def test_metrics_answer_loopback_with_flosse_metrics(demo: Demo) -> None:
    with httpx.Client(base_url=demo.url, timeout=10) as client:
        with connect_sse(client, "GET", "/stream/fail/") as source:
            list(source.iter_sse())
        response = client.get(demo.urls["metrics"])
    assert response.status_code == 200
    assert "flosse_connections_opened_total" in response.text
    assert 'flosse_connections_closed_total{reason="error",stream="demo.fail"}' in response.text


def test_console_logs_are_json(demo: Demo) -> None:
    with httpx.Client(base_url=demo.url, timeout=10) as client:
        headers = {"Last-Event-ID": "29"}  # one event and done: a short, complete stream
        with connect_sse(client, "GET", "/stream/resume/", headers=headers) as source:
            list(source.iter_sse())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        records = demo.log_records()  # raises if any line is not JSON
        events = {r["event"] for r in records}
        if "sse.connection.closed" in events:
            break
        time.sleep(0.1)
    assert {"sse.connection.opened", "sse.connection.closed"} <= events
    assert any(r.get("logger") == "uvicorn.access" for r in records)
    closed = [r for r in records if r["event"] == "sse.connection.closed"]
    assert all({"connection_id", "stream", "reason", "timestamp"} <= set(r) for r in closed)


def test_load_generator_runs_bounded(demo: Demo) -> None:
    port = demo.url.rsplit(":", 1)[1]
    started = time.monotonic()
    command = [
        sys.executable, "example/load.py", "--port", port,
        "--connections", "8", "--duration", "3", "--concurrency", "4", "--seed", "1",
    ]  # fmt: skip
    result = subprocess.run(
        command,
        cwd=REPO_ROOT,
        env=demo.env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "done in" in result.stdout
    assert "8 connections" in result.stdout
    assert time.monotonic() - started < 3 + 15 + 5
