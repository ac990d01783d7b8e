"""What the dashboard costs under churn: it must follow what it shows, not the traffic.

Issue 15: each viewer re-aggregated every history row of the window twice a second, so one
anonymous client opening connections made the operator's server pay for each dashboard.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import httpx
import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from django_flosse.models import StreamConnection
from django_flosse.observing import _dashboard as dashboard
from django_flosse.observing.registry import Connection, current_process, registry
from tests.support.admin_login import log_in
from tests.support.wire import get_json

FEED = "admin:django_flosse_dashboard_stream"
ELSEWHERE = "elsewhere.example:4242"


def _closed_rows(count: int) -> None:
    now = timezone.now()
    StreamConnection.objects.bulk_create(
        [
            StreamConnection(
                connection_id=uuid.uuid4().hex,
                stream="cost.flood",
                process=ELSEWHERE,
                opened_at=now - timedelta(seconds=i % 500),
                last_seen_at=now,
                closed_at=now - timedelta(seconds=i % 500 - 0.2),
                close_reason="cancelled",
            )
            for i in range(count)
        ],
        batch_size=1000,
    )


@pytest.mark.django_db
def test_closed_rows_are_never_read_by_the_feed() -> None:
    """However many connections closed in the window, the feed reads open rows only (and
    the small aggregates table): its queries do not grow with the churn."""
    _closed_rows(5_000)
    feed = dashboard.Feed(top=10)
    table = StreamConnection._meta.db_table
    with CaptureQueriesContext(connection) as queries:
        snapshot = feed.snapshot()
        feed.poll()
    for query in queries:
        if table in query["sql"]:
            assert '"closed_at" IS NULL' in query["sql"], query["sql"]
    assert snapshot["total"] == 0 and snapshot["rows"] == []


@pytest.mark.django_db
def test_viewers_of_a_process_share_one_computation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Four viewers read one state; a local open or close makes the next poll compute it
    again (MIN_POLL_GAP 0 here), and nothing else does before POLL_INTERVAL (long here)."""
    monkeypatch.setattr(dashboard, "POLL_INTERVAL", 3600.0)
    monkeypatch.setattr(dashboard, "MIN_POLL_GAP", 0.0)
    viewers = [dashboard.Feed(top=10, shared=True) for _ in range(4)]
    for viewer in viewers:
        viewer.snapshot()
    with CaptureQueriesContext(connection) as queries:
        for viewer in viewers:
            assert viewer.poll() is None
    assert dashboard.board.computations == 1 and len(queries) == 0

    local = Connection(id=uuid.uuid4().hex, stream="cost.local", process=current_process())
    assert registry.open(local) is None
    try:
        updates = [viewer.poll() for viewer in viewers]
    finally:
        registry.close(local, "completed")
    assert dashboard.board.computations == 2  # one for the four
    assert all(u is not None and [r["id"] for r in u["upsert"]] == [local.id] for u in updates)


# ----------------------------------------------------------------------------- a real server
class _Viewer(threading.Thread):
    """A dashboard feed read in a thread: its frames, until ``stop``."""

    def __init__(self, client: httpx.Client) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.frames: list[tuple[str, Any]] = []
        self.snapshot = threading.Event()
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        name = ""
        try:
            with self.client.stream("GET", reverse(FEED)) as response:
                for line in response.iter_lines():
                    if line.startswith("event: "):
                        name = line[7:]
                    elif line.startswith("data: "):
                        self.frames.append((name, json.loads(line[6:])))
                        self.snapshot.set()
                    if self.stop.is_set():
                        return
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            self.snapshot.set()


@pytest.fixture
def admin_user(transactional_db: None) -> Iterator[None]:
    User.objects.create_superuser("admin", "admin@example.com", "pw")
    yield


FLOOD = 400  # short connections, from 4 clients


@pytest.mark.server
@pytest.mark.timeout(120)
def test_a_flood_of_short_connections_costs_the_feed_little(
    admin_user: None, live_server_factory: Any
) -> None:
    """A dashboard viewer is open while anonymous clients open and close connections as
    fast as they can: the feed's CPU (its computations and queries, measured by the server
    itself) stays a small part of what the server spent in the same time."""
    server = live_server_factory("uvicorn")
    with httpx.Client(base_url=server.url, timeout=30.0) as admin:
        log_in(admin)
        viewer = _Viewer(admin)
        viewer.start()
        assert viewer.snapshot.wait(30) and viewer.error is None, viewer.error
        before = get_json(server, "/dashboard-cost/")

        def flood(n: int) -> int:
            done = 0
            with httpx.Client(base_url=server.url, timeout=30.0) as client:
                for _ in range(n):
                    done += client.get("/async/count/?n=1").status_code == 200
            return done

        with ThreadPoolExecutor(4) as pool:
            assert sum(pool.map(flood, [FLOOD // 4] * 4)) == FLOOD
        after = get_json(server, "/dashboard-cost/")
        # The feed followed the flood: an update counted the new connections.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            cards = [c for name, f in viewer.frames for c in f["cards"] if name == "update"]
            if any(
                c["stream"] == "tests.views.async_count" and c["opened"] >= FLOOD for c in cards
            ):
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"the feed never showed the flood: {viewer.frames[-1:]}")
        viewer.stop.set()
    feed = after["feed_cpu"] - before["feed_cpu"]
    spent = after["process_cpu"] - before["process_cpu"]
    print(
        f"\nflood of {FLOOD}: server {spent:.2f} s CPU, feed {feed:.3f} s "
        f"({after['computations'] - before['computations']} computations)"
    )
    assert spent > 0
    assert feed < 0.1 * spent
