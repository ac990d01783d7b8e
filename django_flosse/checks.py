"""System checks (``manage.py check``) with stable ids: ``django_flosse.W001`` ...

Each check reads settings only (never at import time), except W003, which is tagged
``database`` and so runs only when Django asks for database checks (``check --database``,
``migrate``). Ids are a contract: projects silence them by id in
``SILENCED_SYSTEM_CHECKS``, so an id is never reused for another meaning. The list, with what
each one detects and why, is in ``docs/checks.md``.

Why the heuristics are what they are (read before "improving" them):

* W001 cannot ask the server: ``manage.py check`` runs outside uvicorn or daphne. It looks at
  settings that only ASGI deployments set (``ASGI_APPLICATION``; ``daphne`` or ``channels``
  in ``INSTALLED_APPS``), so the answer is the same on a laptop, in CI and in production.
* W002 warns only for middleware whose source we read and which does hold streaming events
  back. Most middleware that touches bodies skips streaming responses (Django's own,
  django-minify-html, django-brotli, django-debug-toolbar, django-browser-reload,
  django-silk): no warning for those. ``GZipMiddleware`` itself is handled by the decorator,
  which compresses and flushes each chunk itself, but only when the middleware is listed by
  its own dotted path, so a subclass is a warning.
* W007 cannot see a pooler either: it looks for what projects behind PgBouncer set (its
  default port 6432, ``DISABLE_SERVER_SIDE_CURSORS``, which Django's docs require with
  transaction pooling). A pooled alias with ``BROADCAST_LISTEN_URL`` set is fine.
* W004 computes whether the allowed networks *together* cover every address
  (``0.0.0.0/1`` plus ``128.0.0.0/1`` is the whole internet too), including IPv4 clients
  seen as IPv4-mapped IPv6 addresses on a dual-stack socket.
"""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Iterable, Sequence
from types import FrameType
from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.core.checks import CheckMessage, Error, Info, Tags, Warning, register
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, connections, router
from django.utils.module_loading import import_string

from .conf import get_config

__all__ = [
    "BUFFERING_MIDDLEWARE",
    "MIN_TOKEN_LENGTH",
    "PGBOUNCER_PORT",
    "check_broadcast",
    "check_conn_max_age_under_asgi",
    "check_history_retention",
    "check_metrics_access",
    "check_middleware",
    "check_migrations",
]

_APP_LABEL = "django_flosse"
_GZIP_MIDDLEWARE = "django.middleware.gzip.GZipMiddleware"

#: Apps whose presence means the project is served over ASGI (daphne's runserver, Channels).
ASGI_APPS = ("daphne", "channels")

#: Middleware known to hold back (or break) the events of a streaming response, with why.
BUFFERING_MIDDLEWARE: dict[str, str] = {
    "compression_middleware.middleware.CompressionMiddleware": (
        "django-compression-middleware compresses streaming responses (zstd, br, gzip) "
        "without flushing after each chunk, so events wait in the compressor until it has "
        "enough bytes; under ASGI it iterates an async stream with a sync loop"
    ),
}

#: A METRICS_TOKEN shorter than this is guessable (secrets.token_urlsafe(32) gives 43).
MIN_TOKEN_LENGTH = 16

_EVERYONE_V4 = ipaddress.IPv4Network("0.0.0.0/0")
_EVERYONE_V6 = ipaddress.IPv6Network("::/0")
_MAPPED_V4 = ipaddress.IPv6Network("::ffff:0:0/96")  # every IPv4 client on a dual-stack socket


def _ours(app_configs: Sequence[AppConfig] | None) -> bool:
    """``manage.py check otherapp`` checks other apps only."""
    return app_configs is None or any(config.label == _APP_LABEL for config in app_configs)


# --------------------------------------------------------------------------- W001
def _asgi_evidence() -> str | None:
    """What in the settings says the project runs under ASGI (None: nothing does)."""
    if getattr(settings, "ASGI_APPLICATION", None):
        return "settings.ASGI_APPLICATION is set"
    installed = set(settings.INSTALLED_APPS)
    for app in ASGI_APPS:
        if app in installed:
            return f"{app!r} is in INSTALLED_APPS"
    return None


@register(Tags.async_support)
def check_conn_max_age_under_asgi(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """W001: persistent database connections in an ASGI project."""
    if not _ours(app_configs):
        return []
    evidence = _asgi_evidence()
    if evidence is None:
        return []
    messages: list[CheckMessage] = []
    for alias, database in settings.DATABASES.items():
        max_age = database.get("CONN_MAX_AGE", 0)
        if max_age == 0:
            continue
        age = "None (unlimited)" if max_age is None else f"{max_age}"
        messages.append(
            Warning(
                f"DATABASES[{alias!r}]['CONN_MAX_AGE'] is {age} and the project runs under "
                f"ASGI ({evidence}).",
                hint=(
                    "Under ASGI, sync code runs on pooled threads and a persistent connection "
                    "stays open on each of them, outside any request: long-lived streams "
                    "multiply idle connections. Set CONN_MAX_AGE to 0 and use your "
                    "database's connection pooling (DATABASES[...]['OPTIONS']['pool'] on "
                    "PostgreSQL) or an external pooler such as PgBouncer."
                ),
                obj=f"DATABASES[{alias!r}]",
                id="django_flosse.W001",
            )
        )
    return messages


# --------------------------------------------------------------------------- W002
def _gzip_subclass(path: str) -> bool:
    """Is ``path`` a subclass of GZipMiddleware listed under another name?"""
    if path == _GZIP_MIDDLEWARE:
        return False
    from django.middleware.gzip import GZipMiddleware

    try:
        middleware = import_string(path)
    except Exception:  # any import error: Django reports unimportable middleware itself
        return False
    return isinstance(middleware, type) and issubclass(middleware, GZipMiddleware)


@register(Tags.compatibility)
def check_middleware(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """W002: middleware that holds streamed events back."""
    if not _ours(app_configs):
        return []
    messages: list[CheckMessage] = []
    for path in getattr(settings, "MIDDLEWARE", None) or ():
        if not isinstance(path, str):
            continue
        if path in BUFFERING_MIDDLEWARE:
            why = BUFFERING_MIDDLEWARE[path]
        elif _gzip_subclass(path):
            why = (
                "it is a subclass of GZipMiddleware listed under its own path; django-flosse "
                f"compresses (and flushes each event) itself only when {_GZIP_MIDDLEWARE!r} "
                "is listed, so this middleware compresses streams with compress_sequence, "
                "which holds events back until its buffer fills"
            )
        else:
            continue
        messages.append(
            Warning(
                f"MIDDLEWARE contains {path!r}, which holds back the events of streaming "
                "responses.",
                hint=(
                    f"{why[0].upper()}{why[1:]}. Remove it, or make it skip responses whose "
                    "Content-Type is text/event-stream (django-flosse compresses its own "
                    f"streams when {_GZIP_MIDDLEWARE!r} is installed)."
                ),
                obj=path,
                id="django_flosse.W002",
            )
        )
    return messages


# --------------------------------------------------------------------------- W003
def _unapplied(alias: str) -> list[str]:
    """Names of this app's migrations not applied on ``alias`` (squashes resolved)."""
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connections[alias])
    targets = executor.loader.graph.leaf_nodes(_APP_LABEL)
    plan = executor.migration_plan(targets)
    return [m.name for m, backwards in plan if m.app_label == _APP_LABEL and not backwards]


def _called_by_migrate() -> bool:
    """Are the checks being run by the ``migrate`` command (or a subclass of it)?

    Django passes checks no hint of the command that runs them (``migrate`` runs them from
    its ``handle()`` on Django 5.2 and through ``get_check_kwargs()`` on 6.x), so look for
    the command object on the stack.
    """
    from django.core.management.commands.migrate import Command as Migrate

    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        if isinstance(frame.f_locals.get("self"), Migrate):
            return True
        frame = frame.f_back
    return False


@register(Tags.database)
def check_migrations(
    app_configs: Sequence[AppConfig] | None = None,
    databases: Sequence[str] | None = None,
    **kwargs: Any,
) -> list[CheckMessage]:
    """W003: persistence is on but the history table's migrations have not run.

    Database checks run only when Django passes ``databases`` (``check --database``,
    ``migrate``). Not while ``migrate`` itself runs them: that command is the one applying
    the migrations, so the warning would only tell it what it is about to do. An
    unreachable database is reported as ``I001`` instead of crashing.
    """
    if databases is None or not _ours(app_configs) or not get_config().persistence:
        return []
    if _called_by_migrate():
        return []
    from .models import StreamConnection

    messages: list[CheckMessage] = []
    for alias in databases:
        if not router.allow_migrate_model(alias, StreamConnection):
            continue
        try:
            missing = _unapplied(alias)
        except (DatabaseError, ImproperlyConfigured) as exc:
            first_line = (str(exc).strip().splitlines() or [""])[0]
            messages.append(
                Info(
                    f"Could not check whether the django_flosse migrations are applied on "
                    f"database {alias!r}: {type(exc).__name__}: {first_line}",
                    hint="Run the check again when the database is reachable.",
                    obj=f"DATABASES[{alias!r}]",
                    id="django_flosse.I001",
                )
            )
            continue
        if missing:
            messages.append(
                Warning(
                    f"FLOSSE['PERSISTENCE'] is on but {len(missing)} django_flosse "
                    f"migration(s) are not applied on database {alias!r}: "
                    f"{', '.join(missing)}.",
                    hint=(
                        f"Run `manage.py migrate django_flosse --database {alias}`; until "
                        "then every flush of the connection history fails (and is logged as "
                        "sse.persistence.error). Or set FLOSSE['PERSISTENCE'] = False."
                    ),
                    obj=f"DATABASES[{alias!r}]",
                    id="django_flosse.W003",
                )
            )
    return messages


# --------------------------------------------------------------------------- W004-W006
def _covers_everyone(
    networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network],
) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """The whole address space that ``networks`` cover together, if they cover one."""
    v4 = [n for n in networks if isinstance(n, ipaddress.IPv4Network)]
    v6 = [n for n in networks if isinstance(n, ipaddress.IPv6Network)]
    if _EVERYONE_V4 in list(ipaddress.collapse_addresses(v4)):
        return _EVERYONE_V4
    collapsed_v6 = list(ipaddress.collapse_addresses(v6))
    if _EVERYONE_V6 in collapsed_v6:
        return _EVERYONE_V6
    if any(_MAPPED_V4.subnet_of(n) for n in collapsed_v6):
        return _MAPPED_V4
    return None


def _unmatchable(token: str) -> str | None:
    if token != token.strip():
        return "it starts or ends with whitespace (the header value is stripped)"
    if not token.isascii():
        return (
            "it has characters that are not ASCII (a client sends UTF-8 bytes, which the "
            "server hands to Django decoded as Latin-1)"
        )
    if not token.isprintable():
        return "it has a control character (HTTP servers refuse those in header values)"
    return None


@register(Tags.security)
def check_metrics_access(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """W004: metrics open to every address; W005: a guessable token; W006: a token that can
    never match."""
    if not _ours(app_configs):
        return []
    config = get_config()
    messages: list[CheckMessage] = []
    everyone = _covers_everyone(config.metrics_allowed_networks)
    if everyone is not None:
        messages.append(
            Warning(
                "FLOSSE['METRICS_ALLOWED_NETWORKS'] lets every client address read the "
                f"metrics (together the networks cover {everyone}).",
                hint=(
                    "List only the networks your Prometheus scrapes from (e.g. "
                    "'10.0.0.0/8'), or use FLOSSE['METRICS_TOKEN'] with a bearer token in "
                    "the scrape config. Stream names and traffic are not for the public."
                ),
                obj="FLOSSE['METRICS_ALLOWED_NETWORKS']",
                id="django_flosse.W004",
            )
        )
    token = config.metrics_token
    if token is not None:
        if len(token) < MIN_TOKEN_LENGTH:
            messages.append(
                Warning(
                    f"FLOSSE['METRICS_TOKEN'] is {len(token)} characters long: anyone "
                    "could guess it.",
                    hint=(
                        f"Use at least {MIN_TOKEN_LENGTH} random characters, e.g. "
                        "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`, "
                        "read from the environment rather than written in settings."
                    ),
                    obj="FLOSSE['METRICS_TOKEN']",
                    id="django_flosse.W005",
                )
            )
        why = _unmatchable(token)
        if why is not None:
            messages.append(
                Warning(
                    f"FLOSSE['METRICS_TOKEN'] can never match a request: {why}.",
                    hint=(
                        "Strip the value when you read it (a secret file often ends with a "
                        "newline) and use URL-safe ASCII, e.g. secrets.token_urlsafe(32)."
                    ),
                    obj="FLOSSE['METRICS_TOKEN']",
                    id="django_flosse.W006",
                )
            )
    return messages


# --------------------------------------------------------------------------- E001, E002, W007
#: PgBouncer's default port: an alias on it most likely goes through the pooler.
PGBOUNCER_PORT = "6432"


@register(Tags.compatibility)
def check_broadcast(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """E001: the broadcast database is not configured; E002: the redis backend without
    redis-py; W007: the PostgreSQL listener would go through a transaction pooler."""
    if not _ours(app_configs):
        return []
    config = get_config()
    backend = config.broadcast_backend
    messages: list[CheckMessage] = []
    if backend == "database":
        alias = config.broadcast_database
        database: dict[str, Any] | None = settings.DATABASES.get(alias)
        if database is None:
            messages.append(
                Error(
                    f"FLOSSE['BROADCAST_DATABASE'] is {alias!r}, which is not in DATABASES: "
                    "the database broadcast backend has nowhere to keep its history.",
                    hint="Name a configured database alias, or choose another "
                    "FLOSSE['BROADCAST_BACKEND'] ('redis', 'memory').",
                    obj="FLOSSE['BROADCAST_DATABASE']",
                    id="django_flosse.E001",
                )
            )
        elif (
            "postgresql" in str(database.get("ENGINE", ""))
            and config.broadcast_listen_url is None
            and (
                str(database.get("PORT", "")) == PGBOUNCER_PORT
                or database.get("DISABLE_SERVER_SIDE_CURSORS") is True
            )
        ):
            messages.append(
                Warning(
                    f"DATABASES[{alias!r}] looks like it goes through PgBouncer (port "
                    f"{PGBOUNCER_PORT} or DISABLE_SERVER_SIDE_CURSORS), but broadcast's "
                    "PostgreSQL listener needs a session of its own: in transaction pooling "
                    "mode its LISTEN is lost and events arrive only at the fallback poll.",
                    hint="Set FLOSSE['BROADCAST_LISTEN_URL'] to a direct URL of the server "
                    "(postgresql://user:password@db-host:5432/name), or silence this check "
                    "if the pooler runs in session mode.",
                    obj=f"DATABASES[{alias!r}]",
                    id="django_flosse.W007",
                )
            )
    elif backend == "redis":
        try:
            import redis  # noqa: F401
        except ImportError:
            messages.append(
                Error(
                    "FLOSSE['BROADCAST_BACKEND'] is 'redis' but redis-py is not installed.",
                    hint="pip install 'django-flosse[redis]'",
                    obj="FLOSSE['BROADCAST_BACKEND']",
                    id="django_flosse.E002",
                )
            )
    return messages


# --------------------------------------------------------------------------- W008
@register(Tags.security)
def check_history_retention(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """W008: the connection history is written and nothing bounds it."""
    if not _ours(app_configs):
        return []
    config = get_config()
    if not config.persistence or config.retention_days is not None:
        return []
    if config.retention_rows is not None:
        return []
    return [
        Warning(
            "FLOSSE['RETENTION_DAYS'] and FLOSSE['RETENTION_ROWS'] are both None: the "
            "connection history grows without bound (every connection, anonymous ones "
            "included, writes a row).",
            hint=(
                "Set FLOSSE['RETENTION_ROWS'] (e.g. 1_000_000) or FLOSSE['RETENTION_DAYS']: "
                "every process's history writer then deletes older rows itself. Or set "
                "FLOSSE['PERSISTENCE'] = False if you do not need the history."
            ),
            obj="FLOSSE['RETENTION_ROWS']",
            id="django_flosse.W008",
        )
    ]


# --------------------------------------------------------------------------- W009, W010
# What the broadcast backend promises in production (deploy checks): a module of its own.
from .broadcasting import _checks as _broadcast_checks  # noqa: E402, F401  (registers them)
