"""Database hygiene: open streams hold no database connections while they wait.

Servers run with ``CONN_MAX_AGE=600`` (``settings_conn``), where Django keeps a thread's
connection open for the whole request, and a stream's request lasts as long as the stream.
``N`` authenticated streams (the session and user lookup opens a connection before the
first event) poll the database every 0.5 s: a ``def`` view sleeping between queries, an
``async def`` view using the async ORM. While they are open and idle between polls, the
server process must hold no more than a small constant number of connections, not ``N``.

Connections are counted on PostgreSQL (the real test) from outside the server: the client
backends in ``pg_stat_activity``. A control view that polls inside ``transaction.atomic()``
(which keeps its connection, as documented) shows that the counting sees held connections.
On SQLite the server counts its own open connection objects (``/rel/state/?db=1``): its
file descriptors on the database file are no proof, since SQLite defers closing the file
of a closed connection while another connection of the process holds a lock on it (in WAL
mode, any open connection does), and reuses it for the next one. The descriptor count is
printed next to it for comparison.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.observe import showing_logs
from tests.support.postgres import postgres_fixture as postgres_fixture  # the "postgres" fixture
from tests.support.processes import open_fds_to
from tests.support.servers import REPO_ROOT, LiveServer
from tests.support.wire import RawStream, get_json

pytestmark = [pytest.mark.server, pytest.mark.timeout(240)]

N = 20
#: Connections a server may hold whatever the number of streams: the history writer's
#: own, and the streams caught in the middle of a poll. Usually 1-3; on a loaded machine a
#: poll's thread hops take longer and more streams overlap (7 seen once in CI while the
#: docs were building). A stream that kept its connection would make it N (the atomic
#: control shows N + 1), so half of N still tells the two apart.
SMALL = N // 2
VIEWS = {
    "sync": "/rel/db-sync/",
    "async": "/rel/db-async/",
    "atomic": "/rel/db-atomic/",
    # The workaround docs/reliability.md gives for async views until the library does it.
    "async-closes": "/rel/db-async-closes/",
}
CASES = [
    pytest.param(kind, flavour, id=f"{flavour}-{kind}")
    for kind in ("uvicorn", "gunicorn")
    for flavour in ("sync", "async")
]
PG_CASES = [
    *CASES,
    pytest.param("uvicorn", "async-closes", id="async-closes-uvicorn"),
    pytest.param("uvicorn", "atomic", id="control-atomic-uvicorn"),
]


def held_while_streaming(
    server: LiveServer, cookie: str, flavour: str, count: Callable[[], int]
) -> tuple[int, int]:
    """(connections before, most connections seen while N streams poll)."""
    before = count()

    async def run() -> int:
        headers = {"Cookie": f"sessionid={cookie}"}
        streams: list[RawStream] = []
        try:
            for _ in range(N):
                streams.append(await RawStream.open(server.port, VIEWS[flavour], headers))
            # Three polls each: the session lookup and the queries have all happened.
            ok = await asyncio.gather(*(s.wait_for(b'"i": 2', 15) for s in streams))
            assert all(ok), [bytes(s.data[:300]) for s in streams if b'"i": 2' not in s.data]
            seen = 0
            for _ in range(20):  # 2 s: four polls of every stream
                seen = max(seen, await asyncio.to_thread(count))
                await asyncio.sleep(0.1)
            return seen
        finally:
            for stream in streams:
                stream.rst()

    return before, asyncio.run(run())


def server_pid(server: LiveServer) -> int:
    """The process serving requests (gunicorn: its one worker)."""
    pid: int = get_json(server, "/pid/")["pid"]
    return pid


# --------------------------------------------------------------------------- SQLite


@pytest.fixture
def sqlite_session(transactional_db: None) -> str:
    from django.contrib.auth import get_user_model
    from django.test import Client

    user = get_user_model().objects.create_user("hygiene", password="x")
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


def start(factory: Any, kind: str, settings: str, env: dict[str, str] | None = None) -> LiveServer:
    server: LiveServer = factory(
        kind,
        env={"DJANGO_SETTINGS_MODULE": settings, **(env or {})},
        threads=N + 8,
    )
    return server


@pytest.mark.parametrize(("kind", "flavour"), CASES)
def test_sqlite_streams_hold_no_connections(
    live_server_factory: Any, sqlite_session: str, figure: Any, kind: str, flavour: str
) -> None:
    server = start(live_server_factory, kind, "tests.reliability.settings_conn")
    db_file = os.environ["FLOSSE_TEST_DB"]
    with showing_logs(server, tail=40):
        pid = server_pid(server)
        fds = [0]

        def count() -> int:
            fds[0] = max(fds[0], open_fds_to(pid, db_file))
            return int(get_json(server, "/rel/state/?db=1")["db_open"])

        before, seen = held_while_streaming(server, sqlite_session, flavour, count)
        figure(
            f"SQLite, {flavour} view on {kind}, CONN_MAX_AGE=600: {N} polling streams -> "
            f"at most {seen} open connections (before: {before}; file descriptors on the "
            f"database file: up to {fds[0]})"
        )
        assert seen <= before + SMALL, f"{seen} connections for {N} streams (before {before})"


# --------------------------------------------------------------------------- PostgreSQL

PG_SETTINGS = "tests.reliability.settings_conn_pg"


def pg_manage(cluster: Any, code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "django", "shell", "-c", code],
        env={**os.environ, **cluster.env(), "DJANGO_SETTINGS_MODULE": PG_SETTINGS},
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture
def pg_session(postgres: Any) -> Any:
    key = pg_manage(
        postgres,
        "from django.contrib.auth import get_user_model; from django.test import Client; "
        "u, _ = get_user_model().objects.get_or_create(username='rel-hygiene'); "
        "c = Client(); c.force_login(u); print(c.cookies['sessionid'].value)",
    )
    yield postgres, key.splitlines()[-1]
    pg_manage(
        postgres,
        "from django.contrib.auth import get_user_model; "
        "get_user_model().objects.filter(username='rel-hygiene').delete()",
    )


def pg_connections(cluster: Any) -> int:
    import psycopg

    with psycopg.connect(
        host=cluster.env()["FLOSSE_PG_HOST"],
        port=cluster.port,
        user="postgres",
        dbname="postgres",
        autocommit=True,
    ) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
            "AND backend_type = 'client backend'",
            (cluster.env()["FLOSSE_PG_NAME"],),
        ).fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.parametrize(("kind", "flavour"), PG_CASES)
def test_postgres_streams_hold_no_connections(
    live_server_factory: Any, pg_session: Any, figure: Any, kind: str, flavour: str
) -> None:
    cluster, key = pg_session
    server = start(live_server_factory, kind, PG_SETTINGS, cluster.env())
    with showing_logs(server, tail=40):
        before, seen = held_while_streaming(server, key, flavour, lambda: pg_connections(cluster))
        figure(
            f"PostgreSQL, {flavour} view on {kind}, CONN_MAX_AGE=600: {N} polling streams "
            f"-> at most {seen} connections in pg_stat_activity (before: {before})"
        )
        if flavour == "atomic":  # the control: the counting does see held connections
            assert seen >= before + N, (before, seen)
        else:
            assert seen <= before + SMALL, f"{seen} connections for {N} streams ({before})"
