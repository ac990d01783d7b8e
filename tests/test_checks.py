"""System checks: each id fires for the settings it describes, and only for those.

``DATABASES`` and ``INSTALLED_APPS`` are swapped with ``monkeypatch`` rather than
``override_settings``: overriding them makes Django warn (DATABASES) or rebuild the app registry
(INSTALLED_APPS, which would import ``daphne``), and the checks only read the values.
"""

from __future__ import annotations

import copy
import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.apps import apps
from django.conf import settings
from django.core.checks import CheckMessage, Info, Tags, Warning, run_checks
from django.core.management import call_command
from django.db import connection
from django.db.migrations.recorder import MigrationRecorder
from django.db.utils import ConnectionHandler
from django.middleware.gzip import GZipMiddleware
from django.test import Client, override_settings

from django_flosse import checks
from django_flosse.checks import (
    check_broadcast,
    check_conn_max_age_under_asgi,
    check_history_retention,
    check_metrics_access,
    check_middleware,
    check_migrations,
)
from tests.support.servers import free_port

DOCS = Path(__file__).resolve().parent.parent / "docs" / "checks.md"
ALL_IDS = {f"django_flosse.W{n:03}" for n in range(1, 11)} | {
    "django_flosse.I001",
    "django_flosse.E001",
    "django_flosse.E002",
}
OUTSIDER = "203.0.113.5"


class MyGZipMiddleware(GZipMiddleware):
    """A project's own GZipMiddleware (say, one that skips some paths)."""


def ids(messages: list[CheckMessage]) -> list[str | None]:
    return [m.id for m in messages]


def databases(**conn_max_age: Any) -> dict[str, dict[str, Any]]:
    """A copy of DATABASES with ``CONN_MAX_AGE`` set per alias (aliases may be new)."""
    result = copy.deepcopy(settings.DATABASES)
    for alias, max_age in conn_max_age.items():
        result.setdefault(alias, dict(result["default"]))["CONN_MAX_AGE"] = max_age
    return result


@pytest.fixture
def asgi() -> Iterator[None]:
    with override_settings(ASGI_APPLICATION="tests.asgi.application"):
        yield


# ------------------------------------------------------------------- registration


def test_every_check_is_registered_by_the_app_with_its_tag() -> None:
    from django.core.checks import registry

    registered = registry.registry.get_checks()
    assert check_conn_max_age_under_asgi in registered
    assert check_middleware in registered
    assert check_migrations in registered
    assert check_metrics_access in registered
    assert check_broadcast in registered
    assert check_migrations.tags == (Tags.database,)  # runs only with --database / migrate
    assert check_metrics_access.tags == (Tags.security,)


def test_the_test_settings_pass_every_check() -> None:
    assert [m for m in run_checks() if (m.id or "").startswith("django_flosse.")] == []


@override_settings(FLOSSE={"METRICS_TOKEN": "short"})
def test_manage_py_check_reports_our_warnings(capsys: pytest.CaptureFixture[str]) -> None:
    call_command("check")
    err = capsys.readouterr().err
    assert "django_flosse.W005" in err
    assert "HINT: Use at least 16 random characters" in err


@override_settings(FLOSSE={"METRICS_TOKEN": "short"})
def test_silenced_by_id(capsys: pytest.CaptureFixture[str]) -> None:
    assert "django_flosse.W005" in ids(run_checks())
    with override_settings(SILENCED_SYSTEM_CHECKS=["django_flosse.W005"]):
        call_command("check")
    assert "django_flosse.W005" not in capsys.readouterr().err


@override_settings(FLOSSE={"METRICS_TOKEN": "short"})
def test_checks_of_other_apps_leave_ours_out() -> None:
    only_auth = [apps.get_app_config("auth")]
    assert check_metrics_access(app_configs=only_auth) == []
    ours = [apps.get_app_config("django_flosse")]
    assert ids(check_metrics_access(app_configs=ours)) == ["django_flosse.W005"]


def test_docs_list_every_id_with_what_it_detects() -> None:
    text = DOCS.read_text()
    documented = set(re.findall(r"django_flosse\.[WIE]\d{3}", text))
    assert documented == ALL_IDS


# ------------------------------------------------------------------- W001


@pytest.mark.parametrize("max_age", [60, None])
def test_w001_conn_max_age_under_asgi(
    asgi: None, monkeypatch: pytest.MonkeyPatch, max_age: int | None
) -> None:
    monkeypatch.setattr(settings, "DATABASES", databases(default=max_age))
    [message] = check_conn_max_age_under_asgi()
    assert isinstance(message, Warning)
    assert message.id == "django_flosse.W001"
    assert message.obj == "DATABASES['default']"
    assert "ASGI_APPLICATION" in message.msg
    assert ("None (unlimited)" if max_age is None else "is 60") in message.msg
    assert "CONN_MAX_AGE to 0" in (message.hint or "")


@pytest.mark.parametrize("app", ["daphne", "channels"])
def test_w001_asgi_detected_from_installed_apps(monkeypatch: pytest.MonkeyPatch, app: str) -> None:
    monkeypatch.setattr(settings, "DATABASES", databases(default=600))
    monkeypatch.setattr(settings, "INSTALLED_APPS", [app, *settings.INSTALLED_APPS])
    [message] = check_conn_max_age_under_asgi()
    assert message.id == "django_flosse.W001"
    assert f"'{app}' is in INSTALLED_APPS" in message.msg


def test_w001_one_warning_per_persistent_alias(asgi: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings, "DATABASES", databases(default=0, replica=30, other=None))
    messages = check_conn_max_age_under_asgi()
    assert sorted(m.obj for m in messages) == ["DATABASES['other']", "DATABASES['replica']"]


def test_w001_not_without_evidence_of_asgi(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not getattr(settings, "ASGI_APPLICATION", None)
    monkeypatch.setattr(settings, "DATABASES", databases(default=60))
    assert check_conn_max_age_under_asgi() == []  # a WSGI project: persistent is fine


def test_w001_not_when_connections_are_not_persistent(
    asgi: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings, "DATABASES", databases(default=0))
    assert check_conn_max_age_under_asgi() == []
    no_key = copy.deepcopy(settings.DATABASES)
    no_key["default"].pop("CONN_MAX_AGE", None)  # Django's default is 0
    monkeypatch.setattr(settings, "DATABASES", no_key)
    assert check_conn_max_age_under_asgi() == []


# ------------------------------------------------------------------- W002


@pytest.mark.parametrize(
    "path",
    ["compression_middleware.middleware.CompressionMiddleware", f"{__name__}.MyGZipMiddleware"],
)
def test_w002_middleware_that_holds_events_back(path: str) -> None:
    with override_settings(MIDDLEWARE=[*settings.MIDDLEWARE, path]):
        [message] = check_middleware()
    assert isinstance(message, Warning)
    assert message.id == "django_flosse.W002"
    assert message.obj == path
    assert path in message.msg
    assert "text/event-stream" in (message.hint or "")


@pytest.mark.parametrize(
    "path",
    [
        "django.middleware.gzip.GZipMiddleware",  # handled: we compress and flush ourselves
        "django.middleware.http.ConditionalGetMiddleware",  # no ETag for streaming responses
        "django.middleware.cache.UpdateCacheMiddleware",  # skips streaming responses
        "django.middleware.cache.FetchFromCacheMiddleware",
        "django.contrib.flatpages.middleware.FlatpageFallbackMiddleware",
        "django_minify_html.middleware.MinifyHtmlMiddleware",  # skips streaming responses
        "debug_toolbar.middleware.DebugToolbarMiddleware",  # HTML, non-streaming only
        "no.such.module.Middleware",  # Django reports it; the check must not crash
    ],
)
def test_w002_not_for_middleware_that_streams(path: str) -> None:
    with override_settings(MIDDLEWARE=[*settings.MIDDLEWARE, path]):
        assert check_middleware() == []


def test_w002_not_for_the_test_settings() -> None:
    assert check_middleware() == []


# ------------------------------------------------------------------- W003 / I001

PERSISTENCE_ON = {"PERSISTENCE": True}


@pytest.mark.django_db
@override_settings(FLOSSE=PERSISTENCE_ON)
def test_w003_not_when_the_migrations_have_run() -> None:
    assert check_migrations(databases=["default"]) == []


@pytest.mark.django_db
@override_settings(FLOSSE=PERSISTENCE_ON)
def test_w003_when_the_migrations_have_not_run() -> None:
    # Inside the test's transaction: rolled back afterwards.
    MigrationRecorder(connection).migration_qs.filter(app="django_flosse").delete()
    [message] = check_migrations(databases=["default"])
    assert isinstance(message, Warning)
    assert message.id == "django_flosse.W003"
    assert "0001_initial" in message.msg
    assert "manage.py migrate django_flosse --database default" in (message.hint or "")
    assert "django_flosse.W003" in ids(run_checks(databases=["default"]))


@pytest.mark.django_db
@override_settings(FLOSSE=PERSISTENCE_ON)
def test_w003_not_while_migrate_applies_them() -> None:
    """``migrate`` runs the database checks before it applies the migrations: W003 would
    tell it what it is about to do (``make demo`` printed it)."""

    MigrationRecorder(connection).migration_qs.filter(app="django_flosse").delete()
    out, err = io.StringIO(), io.StringIO()
    call_command("check", "--database", "default", stdout=out, stderr=err)
    assert "django_flosse.W003" in out.getvalue() + err.getvalue()  # reported by check
    out, err = io.StringIO(), io.StringIO()
    # fake: only records them as applied (in the test's transaction); checks run as they do
    # for manage.py (call_command skips them unless told not to).
    call_command("migrate", "django_flosse", fake=True, skip_checks=False, stdout=out, stderr=err)
    assert "0001_initial... FAKED" in out.getvalue()
    assert "W003" not in out.getvalue() + err.getvalue()


@pytest.mark.django_db
def test_w003_not_when_persistence_is_off() -> None:
    MigrationRecorder(connection).migration_qs.filter(app="django_flosse").delete()
    assert check_migrations(databases=["default"]) == []


@override_settings(FLOSSE=PERSISTENCE_ON)
def test_w003_needs_database_checks_to_be_asked_for() -> None:
    # No database access at all (this test has no django_db mark: a query would fail).
    assert check_migrations(databases=None) == []
    assert check_migrations() == []


@pytest.mark.django_db  # lifts pytest-django's block on connecting (to this other handler)
@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
@override_settings(FLOSSE=PERSISTENCE_ON)
def test_an_unreachable_database_is_reported_not_raised(
    monkeypatch: pytest.MonkeyPatch, engine: str
) -> None:
    database: dict[str, Any]
    if engine == "sqlite":
        database = {"ENGINE": "django.db.backends.sqlite3", "NAME": "/nonexistent/dir/x.sqlite3"}
    else:
        pytest.importorskip("psycopg")
        database = {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": "flosse",
            "HOST": "127.0.0.1",
            "PORT": str(free_port()),  # nothing listens there
            "OPTIONS": {"connect_timeout": 2},
        }
    handler = ConnectionHandler({"default": database})
    monkeypatch.setattr(checks, "connections", handler)
    try:
        [message] = check_migrations(databases=["default"])
    finally:
        handler.close_all()
    assert isinstance(message, Info)
    assert message.id == "django_flosse.I001"
    assert "OperationalError" in message.msg
    assert message.hint


# ------------------------------------------------------------------- W004


@pytest.mark.parametrize(
    "networks",
    [
        ["0.0.0.0/0"],
        ["::/0"],
        ["10.0.0.0/8", "0.0.0.0/0"],
        ["0.0.0.0/1", "128.0.0.0/1"],  # together, every IPv4 address
        ["::ffff:0:0/96"],  # every IPv4 client of a dual-stack socket
        ["::/1", "8000::/1"],
    ],
)
def test_w004_metrics_open_to_everyone(networks: list[str]) -> None:
    with override_settings(FLOSSE={"METRICS_ALLOWED_NETWORKS": networks}):
        [message] = check_metrics_access()
    assert isinstance(message, Warning)
    assert message.id == "django_flosse.W004"
    assert "METRICS_TOKEN" in (message.hint or "")


@pytest.mark.parametrize(
    "networks", [[], ["10.0.0.0/8"], ["0.0.0.0/1"], ["2001:db8::/32", "192.168.0.0/16"]]
)
def test_w004_not_for_a_real_allow_list(networks: list[str]) -> None:
    with override_settings(FLOSSE={"METRICS_ALLOWED_NETWORKS": networks}):
        assert check_metrics_access() == []


@override_settings(FLOSSE={"METRICS_ALLOWED_NETWORKS": ["0.0.0.0/1", "128.0.0.0/1"]})
def test_w004_describes_what_the_metrics_view_does() -> None:
    assert Client(REMOTE_ADDR=OUTSIDER).get("/flosse/metrics/").status_code == 200


# ------------------------------------------------------------------- W005 / W006


@pytest.mark.parametrize("token", ["x", "secret", "0123456789abcde"])
def test_w005_a_guessable_token(token: str) -> None:
    with override_settings(FLOSSE={"METRICS_TOKEN": token}):
        [message] = check_metrics_access()
    assert message.id == "django_flosse.W005"
    assert f"is {len(token)} characters long" in message.msg


@pytest.mark.parametrize(
    "token", [None, "0123456789abcdef", "Zq3v1kXyT0s_8Yc4mP9wL2hR7uJ6nB5eA1dF0gH3iK2"]
)
def test_w005_not_for_a_long_token(token: str | None) -> None:
    with override_settings(FLOSSE={"METRICS_TOKEN": token}):
        assert check_metrics_access() == []


@pytest.mark.parametrize(
    ("token", "why"),
    [
        ("Zq3v1kXyT0s_8Yc4mP9wL2hR7uJ6nB5eA1dF0gH3iK2\n", "whitespace"),
        (" Zq3v1kXyT0s_8Yc4mP9wL2hR7uJ6nB5eA1dF0gH3iK2", "whitespace"),
        ("Zq3v1kXyT0s_8Yc4mP9wL2hR7uJ6nB5eA1dF0gH3i\u00e9", "not ASCII"),
        ("Zq3v1kXyT0s_8Yc4mP9wL2hR7uJ6nB5eA1dF0gH3i\x01", "control character"),
    ],
)
def test_w006_a_token_that_can_never_match(token: str, why: str) -> None:
    with override_settings(FLOSSE={"METRICS_TOKEN": token}):
        [message] = check_metrics_access()
        assert message.id == "django_flosse.W006"
        assert why in message.msg
        if why != "control character":  # servers refuse those in headers before Django
            # What the warning claims: even the exact token in the header is refused (a
            # server hands Django the header's bytes decoded as Latin-1).
            header = "Bearer " + token.encode().decode("latin-1")
            response = Client(REMOTE_ADDR=OUTSIDER).get(
                "/flosse/metrics/", HTTP_AUTHORIZATION=header
            )
            assert response.status_code == 403


def test_every_message_has_an_id_a_message_and_a_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings, "DATABASES", databases(default=60))
    flosse: dict[str, Any] = {"METRICS_ALLOWED_NETWORKS": ["::/0"], "METRICS_TOKEN": " tok"}
    with override_settings(
        ASGI_APPLICATION="x.asgi.application",
        MIDDLEWARE=["compression_middleware.middleware.CompressionMiddleware"],
        FLOSSE=flosse,
    ):
        messages = check_conn_max_age_under_asgi() + check_middleware() + check_metrics_access()
    assert sorted(str(i) for i in ids(messages)) == [
        f"django_flosse.W00{n}" for n in (1, 2, 4, 5, 6)
    ]
    for message in messages:
        assert message.msg and message.hint, message
        assert message.id in ALL_IDS


# ------------------------------------------------------------------- E001, E002, W007
PG = {"ENGINE": "django.db.backends.postgresql", "NAME": "app", "HOST": "db", "PORT": "5432"}


@override_settings(FLOSSE={"BROADCAST_DATABASE": "events"})
def test_e001_broadcast_database_not_configured() -> None:
    messages = check_broadcast()
    assert ids(messages) == ["django_flosse.E001"]
    assert "'events', which is not in DATABASES" in messages[0].msg


@override_settings(FLOSSE={"BROADCAST_DATABASE": "events", "BROADCAST_BACKEND": "memory"})
def test_e001_only_for_the_database_backend() -> None:
    assert check_broadcast() == []


def test_e002_redis_backend_without_redis_py(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    with override_settings(FLOSSE={"BROADCAST_BACKEND": "redis"}):
        assert check_broadcast() == []  # installed in the test environment
        monkeypatch.setitem(sys.modules, "redis", None)  # import redis now raises ImportError
        messages = check_broadcast()
    assert ids(messages) == ["django_flosse.E002"]
    assert messages[0].hint == "pip install 'django-flosse[redis]'"


@pytest.mark.parametrize(
    "database",
    [{**PG, "PORT": "6432"}, {**PG, "PORT": 6432}, {**PG, "DISABLE_SERVER_SIDE_CURSORS": True}],
)
def test_w007_pooled_postgres_without_a_listen_url(
    database: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The check reads the settings only (overriding DATABASES whole would reconnect).
    monkeypatch.setitem(settings.DATABASES, "events", database)
    with override_settings(FLOSSE={"BROADCAST_DATABASE": "events"}):
        assert ids(check_broadcast()) == ["django_flosse.W007"]
    direct = {"BROADCAST_DATABASE": "events", "BROADCAST_LISTEN_URL": "postgresql://db/app"}
    with override_settings(FLOSSE=direct):
        assert check_broadcast() == []


def test_w007_not_for_a_direct_postgres_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(settings.DATABASES, "events", PG)
    with override_settings(FLOSSE={"BROADCAST_DATABASE": "events"}):
        assert check_broadcast() == []


# --------------------------------------------------------------------------- W008
@pytest.mark.parametrize(
    ("flosse", "expected"),
    [
        ({}, []),  # the defaults bound it (30 days, 1,000,000 rows)
        ({"PERSISTENCE": True, "RETENTION_DAYS": None}, []),
        ({"PERSISTENCE": True, "RETENTION_ROWS": None}, []),
        ({"PERSISTENCE": True, "RETENTION_DAYS": None, "RETENTION_ROWS": None}, ["W008"]),
        ({"PERSISTENCE": False, "RETENTION_DAYS": None, "RETENTION_ROWS": None}, []),
    ],
)
def test_w008_an_unbounded_history(flosse: dict[str, Any], expected: list[str]) -> None:
    with override_settings(FLOSSE={"PERSISTENCE": True, **flosse}):
        messages = check_history_retention()
    assert [m.id for m in messages] == [f"django_flosse.{e}" for e in expected]
    for message in messages:
        assert isinstance(message, Warning) and "RETENTION_ROWS" in (message.hint or "")
