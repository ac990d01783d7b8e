"""Shared fixtures.

Nothing here imports django_flosse at import time: a broken package must show up as failing
tests, not as a conftest that cannot load.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

from tests.support.servers import LiveServer, ServerPool, stop_all

# Property tests assert what the code does with every input, not how fast inputs are made:
# on a shared, loaded 2-core machine (and on a fresh clone, where Hypothesis first builds
# its Unicode tables) generating them can exceed its time limits, which fails a test that
# found nothing. No deadline, and no "too slow" health check.
hypothesis_settings.register_profile(
    "flosse", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
hypothesis_settings.load_profile("flosse")


@pytest.fixture(scope="session", autouse=True)
def _cleanup_servers_and_db_file() -> Iterator[None]:
    """At the end of the session: stop leftover servers, remove the shared SQLite file.

    pytest-django removes the test database it created, but a server started by a test that
    never asked for the database leaves an empty file (and WAL files) behind.
    """
    yield
    stop_all()
    db_file = os.environ.get("FLOSSE_TEST_DB")
    if db_file and Path(db_file).name.startswith(f"django-flosse-test-{os.getpid()}."):
        for suffix in ("", "-wal", "-shm", "-journal"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(db_file + suffix)


@pytest.fixture(autouse=True)
def _isolated_process_state() -> Iterator[None]:
    """Every test starts from the process state a fresh server has, and leaves none behind.

    Before and after: an empty registry (no connections, totals or shutdown flag) with the
    observers the settings wire and none subscribed; the history writer's thread stopped and
    its pending work dropped; the dashboard watcher's counts and the metrics observer's fold
    state forgotten; structlog unconfigured (``capture_logs`` leaves it marked as configured,
    which would send later tests' events to structlog's printer instead of stdlib logging);
    no structlog context variables bound (checked after the test: a stream must unbind them).
    """
    import structlog

    from django_flosse.broadcasting.backends import close_backend
    from django_flosse.observing import wiring
    from django_flosse.observing._dashboard import watcher
    from django_flosse.observing._history import writer
    from django_flosse.observing.registry import registry

    def reset() -> None:
        for observer in registry.observers()[len(registry._wired) :]:
            registry.unsubscribe(observer)
        registry.reset()
        writer.reset()
        watcher.reset()
        wiring.reset()
        close_backend()  # its reader threads and subscribers go with the test
        structlog.reset_defaults()

    structlog.contextvars.clear_contextvars()
    reset()
    yield
    # A stream binds its connection to structlog's context while it runs and must unbind
    # it, whatever way it ends: a value left behind would tag every later log line.
    leaked = structlog.contextvars.get_contextvars()
    structlog.contextvars.clear_contextvars()
    reset()
    assert not leaked, f"structlog context variables left bound by this test: {leaked}"


@pytest.fixture(scope="module")
def server_pool(django_db_setup: None) -> Iterator[ServerPool]:
    """Real servers shared by the tests of one module: ``server_pool.get("uvicorn")``,
    ``server_pool.get("gunicorn", LOGGING_SETTINGS)``, ... each started on first use and
    all stopped when the module is done.

    Depends on ``django_db_setup`` so the migrated test database exists before a server
    opens it. Tests that read rows the server writes need ``transactional_db``.
    """
    pool = ServerPool()
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture
def live_server_factory(django_db_setup: None) -> Iterator[Callable[..., LiveServer]]:
    """Start fresh servers with any LiveServer arguments; all are stopped after the test.

    Example: ``server = live_server_factory("uvicorn", loop="uvloop", env={"X": "1"})``.
    """
    pool = ServerPool()
    try:
        yield pool.start
    finally:
        pool.close()


@pytest.fixture
def hops(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The thread hops an async stream makes around its producer, as the names of what they
    run: loading the user and checking permissions (``permissions``), releasing database
    connections (``streaming._db``)."""
    from asgiref.sync import sync_to_async

    from django_flosse import permissions
    from django_flosse.streaming import _db

    made: list[str] = []

    def counting(func: Any, *args: Any, **kwargs: Any) -> Any:
        made.append(func.__name__)
        return sync_to_async(func, *args, **kwargs)

    monkeypatch.setattr(permissions, "sync_to_async", counting)
    monkeypatch.setattr(_db, "sync_to_async", counting)
    return made


@pytest.fixture
def writer(request: pytest.FixtureRequest) -> Iterator[Any]:
    """This process's history writer, wired by ``tests.support.history.HISTORY_SETTINGS``,
    its thread paused (tests flush by hand). Rows left by earlier tests are deleted first."""
    from django.test import override_settings

    from django_flosse.models import StreamConnection
    from django_flosse.observing._history import writer
    from tests.support.history import HISTORY_SETTINGS

    with override_settings(FLOSSE=HISTORY_SETTINGS):
        if request.node.get_closest_marker("django_db"):
            StreamConnection.objects.all().delete()
        with writer.paused():
            yield writer
        # Stopped here, before the test database is reset (the autouse reset comes after
        # it): a flush in between would leave rows for the next test.
        writer.reset()
