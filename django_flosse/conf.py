"""Settings: one ``FLOSSE`` dict merged over documented defaults, read lazily.

Settings are never read at import time; :func:`get_config` caches the merged result and a
``setting_changed`` receiver clears that cache, so ``override_settings`` works in tests.

This module only turns settings into validated values (a dotted path becomes the class it
names). What is built from them, the observers and the JSON encoder of the wire format, is
built and wired by ``AppConfig.ready()`` (``observing.wiring``), which re-wires on changes.
"""

from __future__ import annotations

import functools
import ipaddress
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.utils.module_loading import import_string

__all__ = ["BROADCAST_BACKENDS", "DEFAULTS", "FROM_SETTINGS", "Config", "get_config", "pick"]

_T = TypeVar("_T")

#: The documented defaults; ``settings.FLOSSE`` overrides them key by key.
DEFAULTS: Mapping[str, Any] = {
    # Seconds of producer idleness before a ": keep-alive" comment; None disables.
    "HEARTBEAT": 15.0,
    # JSON encoder class (or its dotted path) for event data that is not a str.
    "JSON_ENCODER": "django.core.serializers.json.DjangoJSONEncoder",
    # Items a sync generator may run ahead of the client when it runs in its own thread.
    "SYNC_READ_AHEAD": 16,
    # Registry observers (dotted paths or instances); [] turns metrics and logs off.
    "OBSERVERS": [
        "django_flosse.observing.metrics.MetricsObserver",
        "django_flosse.observing.log.LogObserver",
    ],
    # Default connection limits for every stream (per process); None: no limit.
    "MAX_CONNECTIONS": None,
    "MAX_CONNECTIONS_PER_USER": None,
    # Seconds sent in Retry-After with 503/429 when a limit refuses a request.
    "LIMIT_RETRY_AFTER": 5,
    # request.META key holding the client address set by a trusted proxy, e.g.
    # "HTTP_X_FORWARDED_FOR" (its first address is used); None: REMOTE_ADDR.
    "CLIENT_IP_HEADER": None,
    # Record client IPs in the registry, logs and history (False: never stored).
    "RECORD_CLIENT_IP": True,
    # Who may read flosse:metrics besides loopback and staff users.
    "METRICS_ALLOWED_NETWORKS": [],
    "METRICS_TOKEN": None,
    # Write connection history rows (needs "django_flosse" in INSTALLED_APPS).
    "PERSISTENCE": True,
    # Seconds between two batched writes of the history (and refreshes of open rows).
    "FLUSH_INTERVAL": 1.0,
    # Seconds an open row may go unrefreshed before it is closed as "lost".
    "LOST_AFTER": 30.0,
    # End every stream (reason "shutdown") when the server gets SIGTERM or SIGINT.
    "SHUTDOWN_SIGNALS": True,
    # Seconds after which a stream ends with reason "timeout" (jittered down by up to 10%
    # so that clients do not all reconnect at once); None: no limit.
    "MAX_DURATION": None,
    # Seconds one chunk may wait for a client that stopped reading before the stream ends
    # with reason "timeout" (ASGI servers; under WSGI the write blocks its own thread).
    "SEND_TIMEOUT": 60.0,
    # Days closed history rows are kept (None: no age bound). Applied by every process's
    # history writer every few seconds, and by `manage.py flosse_prune`.
    "RETENTION_DAYS": 30,
    # Most history rows kept (the newest; open rows always stay). None: no row bound.
    "RETENTION_ROWS": 1_000_000,
    # Live connections listed one by one on the admin dashboard (the rest are counted).
    "DASHBOARD_TOP": 100,
    # Broadcast (docs/broadcast.md): "database", "redis", "memory", or a backend class
    # (or its dotted path).
    "BROADCAST_BACKEND": "database",
    # The Django database alias that holds the broadcast history ("database" backend).
    "BROADCAST_DATABASE": "default",
    # A libpq URL for the PostgreSQL listener connection when the alias goes through a
    # pooler in transaction mode (PgBouncer): LISTEN needs a direct session. None: the alias.
    "BROADCAST_LISTEN_URL": None,
    # Seconds between two reads of the history when nothing rang (every database other
    # than PostgreSQL is only polled; on PostgreSQL this heals a missed notification).
    "BROADCAST_POLL_INTERVAL": 0.25,
    "BROADCAST_REDIS_URL": "redis://127.0.0.1:6379/0",
    # Events kept per topic (at least; a trim may keep more), and for how long.
    "BROADCAST_HISTORY": 1000,
    "BROADCAST_HISTORY_SECONDS": 86400,
    # Events queued for one subscriber before it catches up from the history instead.
    "BROADCAST_BUFFER": 1000,
    # Largest encoded event (bytes) broadcast() accepts.
    "BROADCAST_MAX_BYTES": 65536,
}


@dataclass(frozen=True)
class Config:
    heartbeat: float | None
    json_encoder: type[json.JSONEncoder]
    sync_read_ahead: int
    #: Observer classes (instantiated by the wiring) or instances, in order.
    observers: tuple[Any, ...]
    max_connections: int | None
    max_connections_per_user: int | None
    limit_retry_after: int
    client_ip_header: str | None
    record_client_ip: bool
    metrics_allowed_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    metrics_token: str | None
    persistence: bool
    flush_interval: float
    lost_after: float
    retention_days: int | None
    retention_rows: int | None
    dashboard_top: int
    shutdown_signals: bool
    max_duration: float | None
    send_timeout: float | None
    broadcast_backend: Any  # a name ("database", "redis", "memory") or a backend class
    broadcast_database: str
    broadcast_listen_url: str | None
    broadcast_poll_interval: float
    broadcast_redis_url: str
    broadcast_history: int
    broadcast_history_seconds: float
    broadcast_buffer: int
    broadcast_max_bytes: int


#: The broadcast backends known by name.
BROADCAST_BACKENDS = {
    "database": "django_flosse.broadcasting.backends.database.DatabaseBackend",
    "redis": "django_flosse.broadcasting.backends.redis.RedisBackend",
    "memory": "django_flosse.broadcasting.backends.memory.MemoryBackend",
}


def _fail(key: str, expected: str, value: Any) -> ImproperlyConfigured:
    return ImproperlyConfigured(f"FLOSSE[{key!r}] must be {expected}; got {value!r}")


def _positive_or_none(key: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise _fail(key, "a positive number or None", value)
    return float(value)


def _count_or_none(key: str, value: Any, minimum: int = 1) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _fail(key, f"an int >= {minimum} or None", value)
    return value


def _bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail(key, "True or False", value)
    return value


def _required(value: _T | None) -> _T:
    # The validators above return None only for None, which these keys do not accept.
    if value is None:
        raise ImproperlyConfigured("this FLOSSE setting may not be None")
    return value


def _encoder(value: Any) -> type[json.JSONEncoder]:
    try:
        encoder = import_string(value) if isinstance(value, str) else value
    except ImportError as exc:
        raise _fail("JSON_ENCODER", f"an importable dotted path ({exc})", value) from exc
    if not (isinstance(encoder, type) and issubclass(encoder, json.JSONEncoder)):
        raise _fail("JSON_ENCODER", "a json.JSONEncoder subclass or its dotted path", value)
    return encoder


def _observers(value: Any) -> tuple[Any, ...]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise _fail("OBSERVERS", "a list of observer classes, instances or dotted paths", value)
    observers = []
    for item in value:
        try:
            observer = import_string(item) if isinstance(item, str) else item
        except ImportError as exc:
            raise _fail("OBSERVERS", f"importable dotted paths ({exc})", value) from exc
        observers.append(observer)
    return tuple(observers)


def _networks(value: Any) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise _fail("METRICS_ALLOWED_NETWORKS", "a list of networks such as '10.0.0.0/8'", value)
    try:
        return tuple(ipaddress.ip_network(net, strict=False) for net in value)
    except ValueError as exc:
        raise _fail("METRICS_ALLOWED_NETWORKS", f"a list of valid networks ({exc})", value) from exc


def _optional_str(key: str, value: Any) -> str | None:
    if value is not None and (not isinstance(value, str) or not value):
        raise _fail(key, "a non-empty str or None", value)
    return value


def _backend(value: Any) -> Any:
    if isinstance(value, str) and value in BROADCAST_BACKENDS:
        return value
    try:
        backend = import_string(value) if isinstance(value, str) else value
    except ImportError as exc:
        raise _fail(
            "BROADCAST_BACKEND",
            f"one of {sorted(BROADCAST_BACKENDS)} or an importable backend class ({exc})",
            value,
        ) from exc
    if not isinstance(backend, type):
        raise _fail("BROADCAST_BACKEND", f"one of {sorted(BROADCAST_BACKENDS)} or a class", value)
    return backend


def _count(key: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _fail(key, f"an int >= {minimum}", value)
    return value


def _build(overrides: Mapping[str, Any]) -> Config:
    unknown = set(overrides) - set(DEFAULTS)
    if unknown:
        raise ImproperlyConfigured(
            f"Unknown FLOSSE setting(s): {', '.join(sorted(unknown))}. "
            f"Known settings: {', '.join(sorted(DEFAULTS))}."
        )
    merged = {**DEFAULTS, **overrides}
    encoder = _encoder(merged["JSON_ENCODER"])
    read_ahead = _count_or_none("SYNC_READ_AHEAD", merged["SYNC_READ_AHEAD"])
    if read_ahead is None:
        raise _fail("SYNC_READ_AHEAD", "an int >= 1", None)
    retry_after = _count_or_none("LIMIT_RETRY_AFTER", merged["LIMIT_RETRY_AFTER"], minimum=0)
    if retry_after is None:
        raise _fail("LIMIT_RETRY_AFTER", "an int >= 0", None)
    return Config(
        heartbeat=_positive_or_none("HEARTBEAT", merged["HEARTBEAT"]),
        json_encoder=encoder,
        sync_read_ahead=read_ahead,
        observers=_observers(merged["OBSERVERS"]),
        max_connections=_count_or_none("MAX_CONNECTIONS", merged["MAX_CONNECTIONS"]),
        max_connections_per_user=_count_or_none(
            "MAX_CONNECTIONS_PER_USER", merged["MAX_CONNECTIONS_PER_USER"]
        ),
        limit_retry_after=retry_after,
        client_ip_header=_optional_str("CLIENT_IP_HEADER", merged["CLIENT_IP_HEADER"]),
        record_client_ip=_bool("RECORD_CLIENT_IP", merged["RECORD_CLIENT_IP"]),
        metrics_allowed_networks=_networks(merged["METRICS_ALLOWED_NETWORKS"]),
        metrics_token=_optional_str("METRICS_TOKEN", merged["METRICS_TOKEN"]),
        persistence=_bool("PERSISTENCE", merged["PERSISTENCE"]),
        flush_interval=_required(_positive_or_none("FLUSH_INTERVAL", merged["FLUSH_INTERVAL"])),
        lost_after=_required(_positive_or_none("LOST_AFTER", merged["LOST_AFTER"])),
        retention_days=_count_or_none("RETENTION_DAYS", merged["RETENTION_DAYS"]),
        retention_rows=_count_or_none("RETENTION_ROWS", merged["RETENTION_ROWS"]),
        dashboard_top=_required(_count_or_none("DASHBOARD_TOP", merged["DASHBOARD_TOP"])),
        shutdown_signals=_bool("SHUTDOWN_SIGNALS", merged["SHUTDOWN_SIGNALS"]),
        max_duration=_positive_or_none("MAX_DURATION", merged["MAX_DURATION"]),
        send_timeout=_positive_or_none("SEND_TIMEOUT", merged["SEND_TIMEOUT"]),
        broadcast_backend=_backend(merged["BROADCAST_BACKEND"]),
        broadcast_database=_required(
            _optional_str("BROADCAST_DATABASE", merged["BROADCAST_DATABASE"])
        ),
        broadcast_listen_url=_optional_str("BROADCAST_LISTEN_URL", merged["BROADCAST_LISTEN_URL"]),
        broadcast_poll_interval=_required(
            _positive_or_none("BROADCAST_POLL_INTERVAL", merged["BROADCAST_POLL_INTERVAL"])
        ),
        broadcast_redis_url=_required(
            _optional_str("BROADCAST_REDIS_URL", merged["BROADCAST_REDIS_URL"])
        ),
        broadcast_history=_count("BROADCAST_HISTORY", merged["BROADCAST_HISTORY"]),
        broadcast_history_seconds=_required(
            _positive_or_none("BROADCAST_HISTORY_SECONDS", merged["BROADCAST_HISTORY_SECONDS"])
        ),
        broadcast_buffer=_count("BROADCAST_BUFFER", merged["BROADCAST_BUFFER"]),
        broadcast_max_bytes=_count("BROADCAST_MAX_BYTES", merged["BROADCAST_MAX_BYTES"], 64),
    )


@functools.cache
def get_config() -> Config:
    """The merged settings of this process (cached until a setting changes)."""
    overrides = getattr(settings, "FLOSSE", None) or {}
    if not isinstance(overrides, Mapping):
        raise ImproperlyConfigured(
            f"settings.FLOSSE must be a dict; got {type(overrides).__name__}"
        )
    return _build(overrides)


@receiver(setting_changed)
def _clear_cache(*, setting: str, **kwargs: Any) -> None:
    if setting in ("FLOSSE", "DEBUG"):
        get_config.cache_clear()


class _FromSettings:
    def __repr__(self) -> str:
        return "<from the FLOSSE setting>"


#: The default of an ``@sse_stream`` option that falls back to its ``FLOSSE`` setting
#: (``None`` is a value there: "no limit", "no heartbeat").
FROM_SETTINGS: Any = _FromSettings()


def pick(option: Any, setting: Any) -> Any:
    """An option's value: itself, or the setting's when it is ``FROM_SETTINGS``."""
    return setting if option is FROM_SETTINGS else option
