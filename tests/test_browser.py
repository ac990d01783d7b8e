"""The live dashboard in a real browser, against real uvicorn servers.

Headless Chromium (Debian's ``/usr/bin/chromium``, driven by Playwright's Python package:
``playwright install`` is not needed) logs into the admin, opens the dashboard, and watches
streams that the test opens and closes with httpx. The first test also saves the
screenshots the docs embed (``docs/img/dashboard.png`` and ``dashboard-dark.png``).

Without Chromium the tests skip locally, and fail on CI (``CI=true``), where it must exist.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from django.contrib.auth.models import User
from django.contrib.staticfiles import finders

from tests.support.servers import REPO_ROOT, LiveServer

pytestmark = [pytest.mark.server, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

CHROMIUM = os.environ.get("FLOSSE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DASHBOARD = "/admin/django_flosse/streamconnection/dashboard/"
STREAM = "obs.async_endless"  # tests/views.py: one event every ?every= seconds
STREAM_PATH = "/obs/async-endless/?every=0.2"
DOCS_IMAGES = REPO_ROOT / "docs" / "img"
# The browser test always takes the screenshots; it refreshes the ones the docs embed only
# when asked (FLOSSE_UPDATE_SCREENSHOTS=1), so that a test run leaves the work tree clean.
SCREENSHOTS = (
    DOCS_IMAGES
    if os.environ.get("FLOSSE_UPDATE_SCREENSHOTS") == "1"
    else Path(tempfile.gettempdir()) / "flosse-screenshots"
)


def _require_browser() -> Any:
    """Playwright's sync API, or skip (fail on CI) with the reason."""
    reason = None
    if not (os.path.exists(CHROMIUM) or shutil.which(CHROMIUM)):
        reason = f"Chromium not found at {CHROMIUM} (apt-get install chromium)"
    try:
        from playwright import sync_api
    except ImportError:
        reason = "the playwright Python package is not installed"
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"browser test needs a browser on CI: {reason}")
        pytest.skip(reason)
    return sync_api


@pytest.fixture
def browser() -> Iterator[Any]:
    sync_api = _require_browser()
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def _serve_static(route: Any) -> None:
    """Answer a static file request from the apps' static directories.

    The test servers serve no static files (as in production, where a web server or
    WhiteNoise does), and without ``STATIC_URL`` the pages refer to them by relative URLs.
    So the browser gets them here: the longest tail of the URL path that is a static file.
    """
    segments = urlsplit(route.request.url).path.strip("/").split("/")
    for start in range(len(segments)):
        found = finders.find("/".join(segments[start:]))
        if isinstance(found, str):
            route.fulfill(path=found)
            return
    route.continue_()


# Records the y-axis labels of the chart's latest drawing (the only right-aligned text
# drawn on a canvas), so that a test can read what the canvas shows.
AXIS_LABELS_SPY = """
const fillText = CanvasRenderingContext2D.prototype.fillText;
const clearRect = CanvasRenderingContext2D.prototype.clearRect;
window.flosseAxisLabels = [];
CanvasRenderingContext2D.prototype.clearRect = function (...args) {
    window.flosseAxisLabels = [];
    return clearRect.apply(this, args);
};
CanvasRenderingContext2D.prototype.fillText = function (text, ...args) {
    if (this.textAlign === "right") {
        window.flosseAxisLabels.push(String(text));
    }
    return fillText.call(this, text, ...args);
};
"""


def _axis_labels(page: Any) -> list[str]:
    labels: list[str] = page.evaluate("window.flosseAxisLabels")
    return labels


def _log_in(browser: Any, server: LiveServer, *, dark: bool = False) -> Any:
    context = browser.new_context(
        viewport={"width": 1280, "height": 900},
        color_scheme="dark" if dark else "light",
        locale="en-GB",
    )
    context.add_init_script(AXIS_LABELS_SPY)
    context.set_default_timeout(10_000)
    context.route(re.compile(r"\.(css|js|svg)(\?.*)?$"), _serve_static)
    page = context.new_page()
    page.on("dialog", lambda dialog: dialog.accept())  # the terminate confirmation
    page.console_lines = []  # printed when a test fails
    page.on("console", lambda message: page.console_lines.append(message.text))
    page.on("pageerror", lambda error: page.console_lines.append(f"pageerror: {error}"))
    page.goto(f"{server.url}/admin/login/?next={DASHBOARD}")
    page.fill("#id_username", "admin")
    page.fill("#id_password", "pw")
    page.click("input[type=submit]")
    page.wait_for_url(f"**{DASHBOARD}")
    page.wait_for_selector(".flosse-status.flosse-live")
    return page


@contextlib.contextmanager
def _stream(server: LiveServer, path: str = STREAM_PATH) -> Iterator[Iterator[str]]:
    """The lines of an open SSE connection (its first line already read); closed on exit.

    One line iterator for the whole connection: dropping an httpx line iterator closes the
    connection, which the server would rightly count as a cancellation.
    """
    with (
        httpx.Client(timeout=httpx.Timeout(5.0)) as client,
        client.stream("GET", server.url + path) as response,
    ):
        assert response.status_code == 200
        lines = response.iter_lines()
        next(lines)
        yield lines


def _read_to_end(lines: Iterator[str], deadline: float) -> list[str]:
    """The rest of a stream that the server is ending (a dead one fails at ``deadline``)."""
    seen = []
    for line in lines:
        seen.append(line)
        assert time.monotonic() < deadline, f"the stream did not end: {seen[-5:]}"
    return seen


def _row(page: Any, stream: str = STREAM) -> Any:
    return page.locator("tr[data-connection-id]", has_text=stream)


def _stat(page: Any, name: str, stream: str = STREAM) -> int:
    """A number of the stream's card: ``active``, or a stat such as ``cancelled``."""
    card = page.locator(f'article[data-stream="{stream}"]')
    if name == "active":
        text = card.locator("[data-flosse-active]").evaluate("node => node.firstChild.data")
    else:
        text = card.locator(f'[data-stat="{name}"] dd').inner_text()
    return int(re.sub(r"\D", "", text))


def _wait_until(condition: Callable[[], bool], timeout: float) -> float:
    """Seconds until ``condition()`` held; fails after ``timeout``."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout, "condition not met in time"
        time.sleep(0.02)
    return time.monotonic() - start


@pytest.fixture
def superuser() -> User:
    # Requested before ``browser``: Playwright's sync API runs an event loop in this
    # thread, where Django refuses ORM calls.
    user: User = User.objects.create_superuser("admin", "admin@example.com", "pw")
    return user


def test_dashboard_follows_streams_and_terminates_them(
    superuser: User, browser: Any, live_server_factory: Callable[..., LiveServer]
) -> None:
    server = live_server_factory("uvicorn")
    page = _log_in(browser, server)
    try:
        # A stream opens: its row shows up (the stream is in the page's own process).
        with _stream(server):
            opened_after = _wait_until(lambda: _row(page).count() == 1, timeout=2.0)
            cancelled = _stat(page, "cancelled")
            assert _stat(page, "active") == 1
            # A count of connections: whole-number ticks (0.25 steps were drawn as 0.3, 0.8).
            _wait_until(lambda: bool(_axis_labels(page)), timeout=2.0)
            labels = _axis_labels(page)
            assert labels[0] == "0", labels
            assert all(re.fullmatch(r"\d[\d,]*", label) for label in labels), labels
        # The client goes away: the row goes, the cancellation is counted.
        closed_after = _wait_until(lambda: _row(page).count() == 0, timeout=2.0)
        _wait_until(lambda: _stat(page, "cancelled") == cancelled + 1, timeout=2.0)
        print(f"\nsame process: row shown {opened_after:.2f} s, gone {closed_after:.2f} s")

        # Terminate from the page: the stream ends with a final "terminated" frame.
        with _stream(server) as lines, _stream(server, "/obs/endless/"):
            _wait_until(lambda: _row(page).count() == 1, timeout=2.0)
            page.wait_for_timeout(2_500)  # some traffic for the rates and the chart
            _save_screenshots(browser, server, page)
            _row(page).get_by_role("button", name="Terminate").click()
            rest = _read_to_end(lines, deadline=time.monotonic() + 2.0)
        assert rest[-3:] == ["event: terminated", 'data: {"reason": "terminated"}', ""]
        _wait_until(lambda: _row(page).count() == 0, timeout=2.0)
    except BaseException:
        print(server.logs(), *page.console_lines, page.inner_text("#content"), sep="\n")
        raise
    finally:
        page.context.close()


def _save_screenshots(browser: Any, server: LiveServer, page: Any) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "dashboard.png"), full_page=True)
    dark = _log_in(browser, server, dark=True)
    try:
        dark.wait_for_timeout(1_200)
        dark.screenshot(path=str(SCREENSHOTS / "dashboard-dark.png"), full_page=True)
    finally:
        dark.context.close()


def test_dashboard_sees_and_terminates_another_process(
    superuser: User, browser: Any, live_server_factory: Callable[..., LiveServer]
) -> None:
    """Two servers, one database: the page served by A shows and stops B's streams."""
    a = live_server_factory("uvicorn")
    b = live_server_factory("uvicorn")
    page = _log_in(browser, a)
    try:
        with _stream(b) as lines:
            shown_after = _wait_until(lambda: _row(page).count() == 1, timeout=2.0)
            process = _row(page).locator("td").nth(3).inner_text()
            assert process.endswith(f":{b.pid}")
            started = time.monotonic()
            _row(page).get_by_role("button", name="Terminate").click()
            rest = _read_to_end(lines, deadline=time.monotonic() + 3.0)
            ended_after = time.monotonic() - started
        assert rest[-3:] == ["event: terminated", 'data: {"reason": "terminated"}', ""]
        gone_after = _wait_until(lambda: _row(page).count() == 0, timeout=3.0)
        print(
            f"\nother process: row shown {shown_after:.2f} s; terminate ended the stream in "
            f"{ended_after:.2f} s; row gone {gone_after:.2f} s later"
        )
    except BaseException:
        print(a.logs(), b.logs())
        raise
    finally:
        page.context.close()


def test_screenshot_is_committed_where_the_docs_expect_it() -> None:
    """docs/admin.md embeds it; FLOSSE_UPDATE_SCREENSHOTS=1 makes the test above refresh it."""
    assert (DOCS_IMAGES / "dashboard.png").stat().st_size > 10_000
    assert "img/dashboard.png" in Path(REPO_ROOT / "docs" / "admin.md").read_text()
