"""The dashboard's broadcast topics in a real browser: the topics column and panel show
topics as text, whatever they contain.

``broadcast()`` and ``subscribe()`` accept only ``[A-Za-z0-9._:-]`` topics, but the page must
not rely on it: a row of the history table can hold anything. Same browser and server setup
as ``tests/test_browser.py`` (whose fixtures this module uses).
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from django_flosse.models import StreamConnection
from tests.support.servers import LiveServer
from tests.test_browser import _log_in, browser, superuser

pytestmark = [pytest.mark.server, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

__all__ = ["browser", "superuser"]  # fixtures, used by name

#: Markup as a topic (no spaces: the column separates topics with spaces).
HOSTILE = "<img/src/onerror=window.flosseXss=1>"
ELSEWHERE = "bcobs-browser.example:77"


@pytest.fixture
def hostile_row() -> StreamConnection:
    # Requested before ``browser``, as ``superuser``: no ORM call in Playwright's loop.
    now = timezone.now()
    row: StreamConnection = StreamConnection.objects.create(
        connection_id=uuid.uuid4().hex,
        stream="bcobs.browser",
        process=ELSEWHERE,
        opened_at=now,
        last_seen_at=now,
        topics=f"{HOSTILE} bcobs-plain",
    )
    return row


def test_topics_are_shown_as_text(
    superuser: User, hostile_row: StreamConnection, browser: Any, live_server_factory: Any
) -> None:
    row = hostile_row
    server: LiveServer = live_server_factory("uvicorn")
    page = _log_in(browser, server)
    try:
        panel = page.locator("[data-flosse-topics] tr[data-topic]")
        panel.first.wait_for()
        topics = page.locator("[data-flosse-topics] tr td:first-child").all_text_contents()
        assert sorted(topics) == sorted([HOSTILE, "bcobs-plain"])
        cell = page.locator(f'tr[data-connection-id="{row.connection_id}"] td').nth(4)
        assert cell.text_content() == f"{HOSTILE} bcobs-plain"
        assert page.locator("#flosse-dashboard img").count() == 0
        assert page.evaluate("window.flosseXss") is None
        assert page.locator("[data-flosse-unshared]").is_hidden()  # not the memory backend
    except BaseException:
        print("\n".join(page.console_lines))
        raise
