"""Database hygiene: open streams hold no database connections while they wait.

Servers run with ``CONN_MAX_AGE=600`` (``settings_conn``), where Django keeps a thread's
connection open for the whole request, and a stream's request lasts as long as the stream.
``N`` authenticated streams (the session and user lookup opens a connection before the
first event) poll the database every 0.5 s: a ``def`` view sleeping between queries, an
``async def`` view using the async ORM.

What users rely on is that a stream holds no connection while it waits between polls, so
that is what is measured, not how many connections happen to be open at some moment (a
sample that counts the streams caught mid-poll, more of them the busier the machine). Each
view records, every time it resumes from its idle wait, whether the connection its last
query ran on is still open (``tests/views.py``, reported by ``/rel/state/?db=1``).
django-flosse promises (``django_flosse/streaming/_db.py``) to close it once an ``async def``
view's producer has waited ``IDLE_STEP_SECONDS`` for its next item under ASGI, so every
record of an async view on uvicorn must say "released", the first wait's included; a ``def``
view's thread (and an async view on WSGI's private loop) closes it after a step that took
that long, so from the second wait on (the first item comes without a wait) every record
must say "released". A control view
that polls inside ``transaction.atomic()`` (which keeps its connection, as documented)
must say "held" every time: the measure does see held connections.

On PostgreSQL the server is also counted from outside, once every stream is parked in an
idle wait (``?park=1``): the backends in ``pg_stat_activity`` whose last query is a
stream's poll. With every stream known to be waiting that count is exact: 0, and ``N`` for
the control.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.observe import showing_logs
from tests.support.postgres import postgres_fixture as postgres_fixture  # the "postgres" fixture
from tests.support.servers import REPO_ROOT, LiveServer
from tests.support.wire import RawStream, get_json

pytestmark = [pytest.mark.server, pytest.mark.timeout(240)]

N = 20
#: Resumes from an idle wait recorded per stream before the records are read.
RESUMES = 4
VIEWS = {
    "sync": "/rel/db-sync/",
    "async": "/rel/db-async/",
    "atomic": "/rel/db-atomic/",
    # Closes the connection itself after each poll (the workaround before the library did).
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


def stream_waits(
    server: LiveServer,
    cookie: str,
    flavour: str,
    while_parked: Callable[[], int] | None = None,
) -> tuple[dict[str, list[bool]], int | None]:
    """Run N polling streams; return each one's record of its resumes from an idle wait
    (True: the connection of its last query was still open) and, if given, what
    ``while_parked`` counted while every stream was parked in an idle wait."""
    keys = [f"{flavour}-{k}" for k in range(N)]

    async def run() -> int | None:
        headers = {"Cookie": f"sessionid={cookie}"}
        streams: list[RawStream] = []
        try:
            for key in keys:
                path = f"{VIEWS[flavour]}?s={key}"
                streams.append(await RawStream.open(server.port, path, headers))
            # Item i follows resume i - 1: each stream has recorded RESUMES resumes.
            needle = f'"i": {RESUMES}'.encode()
            ok = await asyncio.gather(*(s.wait_for(needle, 30) for s in streams))
            assert all(ok), [bytes(s.data[:300]) for s in streams if needle not in s.data]
            if while_parked is None:
                return None
            await asyncio.to_thread(get_json, server, "/rel/state/?park=1")
            try:
                deadline = time.monotonic() + 15
                parked: list[str] = []
                while time.monotonic() < deadline:
                    state = await asyncio.to_thread(get_json, server, "/rel/state/?db=1")
                    parked = state["db_parked"]
                    if set(keys) <= set(parked):
                        break
                    await asyncio.sleep(0.1)
                assert set(keys) <= set(parked), f"parked: {len(parked)} of {N}"
                return await asyncio.to_thread(while_parked)
            finally:
                await asyncio.to_thread(get_json, server, "/rel/state/?park=0")
        finally:
            for stream in streams:
                stream.rst()

    counted = asyncio.run(run())
    held = get_json(server, "/rel/state/?db=1")["db_held"]
    return {key: held.get(key, []) for key in keys}, counted


def check_records(records: dict[str, list[bool]], flavour: str, kind: str) -> str:
    """Assert the library's promise on every stream's record; describe what was seen."""
    short = {key: len(held) for key, held in records.items() if len(held) < RESUMES}
    assert not short, f"streams with fewer than {RESUMES} recorded resumes: {short}"
    if flavour == "atomic":  # the control: the measure sees a held connection every time
        released = {key: held for key, held in records.items() if not all(held)}
        assert not released, f"atomic() connections seen released: {released}"
    elif flavour == "sync" or kind == "gunicorn":
        # A def view's first wait follows an item that came without waiting, and its thread
        # acts only between steps (an async view on WSGI's private loop waits for its next
        # yield too): the library does not promise to have closed the connection by then;
        # every later wait, it does.
        held_later = {key: held for key, held in records.items() if any(held[1:])}
        assert not held_later, f"connections held while waiting between polls: {held_later}"
    else:  # async views under ASGI: released during every wait, the first included
        held = {key: record for key, record in records.items() if any(record)}
        assert not held, f"connections held while waiting between polls: {held}"
    resumes = sum(len(record) for record in records.values())
    held_at = sum(sum(record) for record in records.values())
    held_first = sum(record[0] for record in records.values())
    return (
        f"{resumes} resumes from an idle wait recorded, a connection held at {held_at} "
        f"(at the first wait: {held_first} of {N} streams)"
    )


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


# No atomic() control on SQLite: twenty open transactions lock the history writer and the
# streams out ("database is locked"). The PostgreSQL control shows that the records see
# held connections, and here the first wait's records do (see check_records).
@pytest.mark.parametrize(("kind", "flavour"), CASES)
def test_sqlite_streams_hold_no_connections(
    live_server_factory: Any, sqlite_session: str, figure: Any, kind: str, flavour: str
) -> None:
    server = start(live_server_factory, kind, "tests.reliability.settings_conn")
    with showing_logs(server, tail=40):
        records, _ = stream_waits(server, sqlite_session, flavour)
        seen = check_records(records, flavour, kind)
        figure(f"SQLite, {flavour} view on {kind}, CONN_MAX_AGE=600, {N} polling streams: {seen}")


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


def pg_stream_connections(cluster: Any) -> int:
    """Client backends of the test database whose last query is a stream's poll: the
    connections streams hold (the history writer's own are not counted)."""
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
            "AND backend_type = 'client backend' AND query LIKE 'SELECT COUNT(*)%%auth_user%%'",
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
        records, parked = stream_waits(
            server, key, flavour, while_parked=lambda: pg_stream_connections(cluster)
        )
        seen = check_records(records, flavour, kind)
        figure(
            f"PostgreSQL, {flavour} view on {kind}, CONN_MAX_AGE=600, {N} polling streams: "
            f"{seen}; with all of them parked in a wait, {parked} held in pg_stat_activity"
        )
        expected = N if flavour == "atomic" else 0
        assert parked == expected, f"{parked} connections held by {N} parked streams"
