"""The admin under churn: what dashboard viewers and the history change list cost a server.

    python bench/admin_load.py                          # 200,000 and 600,000 rows, 0-4 viewers
    python bench/admin_load.py --rows 600000 --viewers 4 --window 10

For each row count it makes a fresh SQLite database (the test project's settings), fills
the connection history with that many closed connections in the dashboard's 10-minute
window (as a client opening ~330 connections a second leaves them) plus a few open ones,
in one SQL statement, and starts a real uvicorn server on it. Then:

* the history change list: median time of a few GETs of the first page;
* a dashboard snapshot computed in the benchmark's own process (median of 3, no HTTP);
* for 0, 1, ... N dashboard viewers (each an open SSE feed, read in a thread): the time
  from the request to the first ``snapshot`` event, and the server's CPU (user + system
  from ``/proc/<pid>/stat``) over a fixed window, as a percentage of one core.

Only the server it started is signalled, by its pid. Everything runs on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from tests.support.admin_login import log_in  # noqa: E402

FEED = "/admin/django_flosse/streamconnection/dashboard/stream/"
CHANGELIST = "/admin/django_flosse/streamconnection/"
WINDOW = 600
PROCESS = "bench-elsewhere:1"
STREAM = "bench.flood"


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime


def _fill(rows: int, open_rows: int) -> None:
    """``rows`` closed connections (and ``open_rows`` open ones) in the dashboard's window.

    One ``INSERT ... SELECT`` over a recursive CTE (a few seconds for 600,000 rows). The
    connections are spread over the ten minutes *around* the start (half of them "opened"
    in the next five minutes), so that every row stays in the window while the slowest
    measurement runs: a window that emptied as it went would flatter the old code.
    """
    from django.contrib.auth.models import User
    from django.db import connection, transaction

    from django_flosse.models import StreamConnection

    if not User.objects.filter(username="admin").exists():
        User.objects.create_superuser("admin", "admin@example.com", "pw")
    table = StreamConnection._meta.db_table
    now = time.time()
    sql = f"""
        WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < %s)
        INSERT INTO {table} (
            connection_id, stream, path, route, username, client_ip, user_agent, process,
            opened_at, closed_at, last_seen_at, events_sent, bytes_sent, close_reason,
            last_event_id, error_id, topics, stop_requested
        )
        SELECT
            lower(hex(randomblob(16))), %s, '/flood/', 'flood/', '',
            '10.' || (i % 250) || '.0.1', 'curl', %s,
            strftime('%%Y-%%m-%%d %%H:%%M:%%f', %s + (i * 0.6180339887 %% 600) - 300, 'unixepoch'),
            CASE WHEN %s THEN strftime(
                '%%Y-%%m-%%d %%H:%%M:%%f', %s + (i * 0.6180339887 %% 600) - 299.8, 'unixepoch'
            ) END,
            strftime('%%Y-%%m-%%d %%H:%%M:%%f', %s, 'unixepoch'),
            1, 40, CASE WHEN %s THEN (CASE WHEN i %% 3 THEN 'cancelled' ELSE 'completed' END)
            ELSE '' END,
            '', '', '', ''
        FROM n
    """
    with transaction.atomic(), connection.cursor() as cursor:
        for count, closed in ((rows, 1), (open_rows, 0)):
            if count:
                cursor.execute(sql, [count, STREAM, PROCESS, now, closed, now, now, closed])
    _fill_activity(rows, now)


def _fill_activity(rows: int, now: float) -> None:
    """The same traffic as the per-bucket aggregates, when this version keeps them."""
    try:
        from django_flosse.models import StreamActivity  # type: ignore[attr-defined]
    except ImportError:
        return
    from django_flosse.observing._activity import BUCKET

    buckets = list(range(int((now - WINDOW) // BUCKET) * BUCKET, int(now) + 1, BUCKET))
    per_bucket = rows // len(buckets)
    StreamActivity.objects.bulk_create(
        [
            StreamActivity(
                process=PROCESS,
                stream=STREAM,
                bucket=b,
                opened=per_bucket,
                cancelled=per_bucket * 2 // 3,
                errors=0,
                active=50,
                events_total=(i + 1) * per_bucket,
                bytes_total=(i + 1) * per_bucket * 40,
            )
            for i, b in enumerate(buckets)
        ]
    )


def _snapshot_ms() -> float:
    """Median time of a dashboard snapshot computed here (no HTTP), over 3 runs."""
    from django_flosse.observing._dashboard import Feed

    times = []
    for _ in range(3):
        started = time.perf_counter()
        Feed(100).snapshot()
        times.append(time.perf_counter() - started)
    return round(statistics.median(times) * 1000, 1)


class Viewer(threading.Thread):
    """One dashboard feed, read until told to stop; ``snapshot_at`` when its first frame came."""

    def __init__(self, base_url: str, cookies: Any) -> None:
        super().__init__(daemon=True)
        import httpx

        self.client = httpx.Client(base_url=base_url, cookies=cookies, timeout=60.0)
        self.started = time.monotonic()
        self.snapshot_at: float | None = None
        self.ready = threading.Event()
        self.stop = threading.Event()
        self.frames = 0

    def run(self) -> None:
        try:
            with self.client.stream("GET", FEED) as response:
                for line in response.iter_lines():
                    if line.startswith("event: "):
                        self.frames += 1
                        if self.snapshot_at is None:
                            self.snapshot_at = time.monotonic()
                            self.ready.set()
                    if self.stop.is_set():
                        return
        except Exception:
            pass
        finally:
            self.ready.set()
            self.client.close()


def measure(rows: int, max_viewers: int, window: float) -> dict[str, Any]:
    import httpx

    from tests.support.servers import LiveServer

    result: dict[str, Any] = {"rows": rows, "viewers": []}
    with (
        LiveServer("uvicorn", loop="asyncio") as server,
        httpx.Client(base_url=server.url, timeout=60.0) as client,
    ):
        log_in(client)
        times = []
        for _ in range(5):
            started = time.perf_counter()
            response = client.get(CHANGELIST)
            times.append(time.perf_counter() - started)
            assert response.status_code == 200, response.status_code
        result["changelist_ms"] = round(statistics.median(times) * 1000)
        result["changelist_kb"] = round(len(response.content) / 1024)
        viewers: list[Viewer] = []
        try:
            for n in range(max_viewers + 1):
                if n:
                    viewer = Viewer(server.url, client.cookies)
                    viewer.start()
                    viewer.ready.wait(120)
                    viewers.append(viewer)
                time.sleep(1.0)  # let the new viewer's first polls pass
                before, started = _cpu_seconds(server.pid), time.monotonic()
                time.sleep(window)
                cpu = (_cpu_seconds(server.pid) - before) / (time.monotonic() - started)
                snapshot = None
                if n:
                    snapshot = round((viewers[-1].snapshot_at or 0) - viewers[-1].started, 3)
                result["viewers"].append(
                    {"viewers": n, "cpu_percent": round(cpu * 100, 1), "snapshot_s": snapshot}
                )
                print(f"  {rows} rows, {n} viewer(s): {cpu * 100:5.1f}% of a core, "
                      f"snapshot {snapshot} s", flush=True)  # fmt: skip
        finally:
            for viewer in viewers:
                viewer.stop.set()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[200_000, 600_000])
    parser.add_argument("--viewers", type=int, default=4)
    parser.add_argument("--window", type=float, default=10.0, help="seconds of CPU measured")
    parser.add_argument("--open", type=int, default=50, help="open rows besides the closed")
    args = parser.parse_args()

    results = []
    for rows in args.rows:
        with tempfile.TemporaryDirectory(prefix="flosse-admin-load-") as tmp:
            os.environ["FLOSSE_TEST_DB"] = str(Path(tmp) / "db.sqlite3")
            os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
            import django
            from django.core.management import call_command
            from django.db import connections

            django.setup()
            connections.close_all()
            connections["default"].settings_dict["NAME"] = os.environ["FLOSSE_TEST_DB"]
            call_command("migrate", verbosity=0)
            started = time.monotonic()
            _fill(rows, args.open)
            connections.close_all()
            print(f"{rows} rows written in {time.monotonic() - started:.1f} s", flush=True)
            snapshot_ms = _snapshot_ms()
            print(f"  a snapshot computed in this process: {snapshot_ms} ms", flush=True)
            connections.close_all()
            result = measure(rows, args.viewers, args.window)
            result["snapshot_ms"] = snapshot_ms
            results.append(result)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
