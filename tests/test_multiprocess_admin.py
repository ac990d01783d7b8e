"""Two servers sharing one database: the history shows both, terminate and loss cross them.

Run on SQLite (the shared test database file) and on PostgreSQL (a throwaway cluster from
``tests/support/postgres.py``). The test process is the third process: it reads the table directly
(its own Django is configured for SQLite) and asks for terminate through a short-lived
Django process on the same settings as the servers, like an admin on another host would.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.support.postgres import PostgresCluster
from tests.support.postgres import postgres_fixture as postgres_fixture  # the "postgres" fixture
from tests.support.servers import REPO_ROOT, LiveServer

# transaction=True: the servers write the test database file, which is emptied afterwards.
# (pytest-django creates the test database only for tests that carry this mark.)
pytestmark = [pytest.mark.server, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

TABLE = "django_flosse_streamconnection"
LOST_AFTER = 3.0
ENDLESS = "/async/endless/?every=0.2"


class StreamReader(threading.Thread):
    """Holds one SSE stream open in a thread and records its lines as they arrive."""

    def __init__(self, url: str) -> None:
        super().__init__(name=f"reader {url}", daemon=True)
        self.url = url
        self.lines: list[str] = []
        self.terminated_at: float | None = None
        self.error: BaseException | None = None
        self.started_streaming = threading.Event()
        self.ended = threading.Event()
        self._leave = threading.Event()

    def run(self) -> None:
        try:
            with (
                httpx.Client(timeout=httpx.Timeout(10.0)) as client,
                client.stream("GET", self.url) as response,
            ):
                response.raise_for_status()
                for line in response.iter_lines():
                    self.lines.append(line)
                    self.started_streaming.set()
                    if line == "event: terminated" and self.terminated_at is None:
                        self.terminated_at = time.monotonic()
                    if self._leave.is_set():
                        return
        except (httpx.HTTPError, OSError) as exc:
            self.error = exc
        finally:
            self.ended.set()

    def leave(self) -> None:
        self._leave.set()
        self.join(15)


class History:
    """Reads the history table of either backend with its plain DB-API driver."""

    def __init__(self, backend: str, postgres: PostgresCluster | None) -> None:
        self.backend = backend
        self.postgres = postgres

    def rows(self) -> list[dict[str, Any]]:
        query = (
            "SELECT connection_id, stream, process, closed_at, last_seen_at, close_reason,"
            f" stop_requested FROM {TABLE}"
        )
        if self.postgres is None:
            with sqlite3.connect(os.environ["FLOSSE_TEST_DB"], timeout=20) as conn:
                cursor = conn.execute(query)
                names = [c[0] for c in cursor.description]
                result = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
            conn.close()
            return result
        import psycopg
        from psycopg.rows import dict_row

        with psycopg.connect(
            host="127.0.0.1", port=self.postgres.port, user="postgres", dbname="flosse"
        ) as pg:
            return list(pg.cursor(row_factory=dict_row).execute(query).fetchall())

    def wait_for(
        self, what: str, check: Callable[[list[dict[str, Any]]], bool], timeout: float
    ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            rows = self.rows()
            if check(rows):
                return rows
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}: {rows}")
            time.sleep(0.05)


def process_of(server: LiveServer) -> str:
    return f"{socket.gethostname()}:{server.pid}"


def request_stop_from_another_process(env: dict[str, str], ids: list[str]) -> int:
    """``terminate.request_stop`` in a Django process of its own (an admin elsewhere)."""
    code = (
        "import sys, django; django.setup();"
        "from django_flosse.terminate import request_stop;"
        "print(request_stop(sys.argv[1:]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, *ids],
        env={**os.environ, **env},
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return int(done.stdout.strip())


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> Iterator[tuple[History, dict[str, str]]]:
    """The history reader and the server environment for one database backend."""
    if request.param == "sqlite":
        # The shared test database file: migrated by pytest-django, emptied after the test.
        yield History("sqlite", None), {"DJANGO_SETTINGS_MODULE": "tests.settings_admin"}
    else:
        cluster: PostgresCluster = request.getfixturevalue("postgres")
        history = History("postgresql", cluster)
        yield history, {"DJANGO_SETTINGS_MODULE": "tests.settings_pg", **cluster.env()}
        import psycopg

        with psycopg.connect(
            host="127.0.0.1", port=cluster.port, user="postgres", dbname="flosse", autocommit=True
        ) as pg:
            pg.execute(f"DELETE FROM {TABLE}")


def test_two_servers_one_history_terminate_across_and_lost_on_kill(
    backend: tuple[History, dict[str, str]], live_server_factory: Callable[..., LiveServer]
) -> None:
    history, env = backend
    env = {**env, "FLOSSE_LOST_AFTER": str(LOST_AFTER)}
    server_a = live_server_factory("uvicorn", env=env)
    server_b = live_server_factory("uvicorn", env=env)
    a, b = process_of(server_a), process_of(server_b)
    readers: list[StreamReader] = []
    try:
        on_a = StreamReader(server_a.url + ENDLESS)
        on_b = StreamReader(server_b.url + ENDLESS)
        keeper = StreamReader(server_b.url + ENDLESS)  # keeps B's writer busy after terminate
        readers = [on_a, on_b, keeper]
        for reader in readers:
            reader.start()
        for reader in readers:
            assert reader.started_streaming.wait(10), (reader.url, reader.error)

        # Both processes' open rows are in the one table the dashboard of either reads.
        rows = history.wait_for(
            "open rows of both servers",
            lambda rows: (
                sorted(r["process"] for r in rows if r["closed_at"] is None) == sorted([a, b, b])
            ),
            timeout=5,
        )
        b_ids = [r["connection_id"] for r in rows if r["process"] == b]

        # Terminate a connection of B from a third process: only the database connects them.
        target = b_ids[0]
        assert request_stop_from_another_process(env, [target]) == 1
        asked = time.monotonic()
        streams_of_b = {on_b, keeper}
        deadline = asked + 5
        while not any(r.terminated_at for r in streams_of_b) and time.monotonic() < deadline:
            time.sleep(0.01)
        stopped = [r for r in streams_of_b if r.terminated_at]
        assert len(stopped) == 1, [r.lines[-5:] for r in streams_of_b]
        took = stopped[0].terminated_at - asked  # type: ignore[operator]
        assert took < 2.0, f"terminate took {took:.2f} s"
        assert stopped[0].ended.wait(5)
        assert stopped[0].lines[-3:-1] == ["event: terminated", 'data: {"reason": "terminated"}']
        history.wait_for(
            "the terminated close",
            lambda rows: any(
                r["connection_id"] == target and r["close_reason"] == "terminated" for r in rows
            ),
            timeout=5,
        )

        # kill -9 A: nothing closes its row, until B sees it has not been refreshed.
        server_a.send_signal(signal.SIGKILL)
        server_a.wait(10)
        killed = time.monotonic()
        rows = history.wait_for(
            "A's row closed as lost",
            lambda rows: any(r["process"] == a and r["close_reason"] == "lost" for r in rows),
            timeout=LOST_AFTER + 10,
        )
        lost = next(r for r in rows if r["process"] == a)
        assert lost["closed_at"] == lost["last_seen_at"]
        assert time.monotonic() - killed >= LOST_AFTER - 1.5  # not before it was stale
        assert any(r["process"] == b and r["closed_at"] is None for r in rows)  # B's live one
    except BaseException:
        for server in (server_a, server_b):
            print(server.logs())
        raise
    finally:
        for reader in readers:
            reader.leave()
