"""Deployment checks of broadcast: what the chosen backend promises when things fail.

They are tagged ``deploy`` (``manage.py check --deploy``), like Django's own production
checks: on a laptop a backend that resets its subscribers on restart is fine. Registered by
``django_flosse.checks``; listed in ``docs/checks.md``, and the promises themselves in
``docs/broadcast.md`` ("What each backend promises under faults").

- W009: the ``memory`` backend. Events reach only the process that publishes them and the
  history dies with it: in production, with several worker processes or any restart,
  subscribers miss events or are reset.
- W010: the ``redis`` backend on a Redis that keeps no persistence (no RDB snapshots, no
  AOF). A Redis restart then loses every topic's history and every subscriber gets
  ``flosse-reset``. This is the one check that asks a server (``CONFIG GET``, one second at
  most): the answer is in Redis, not in the settings. An unreachable Redis, or one that
  refuses ``CONFIG`` (managed services often do), gives no message: the check cannot tell.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.apps import AppConfig
from django.core.checks import CheckMessage, Tags, Warning, register

from ..conf import get_config

__all__ = ["check_backend_promises", "redis_persists"]

#: Seconds the W010 check waits for Redis.
REDIS_TIMEOUT = 1.0


@register(Tags.compatibility, deploy=True)
def check_backend_promises(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """W009: the memory backend in production; W010: Redis without persistence."""
    if app_configs is not None and not any(c.label == "django_flosse" for c in app_configs):
        return []
    config = get_config()
    if config.broadcast_backend == "memory":
        return [
            Warning(
                "FLOSSE['BROADCAST_BACKEND'] is 'memory': an event reaches only the streams "
                "of the process that publishes it, and the history is lost when that process "
                "restarts. With several worker processes, subscribers of the others miss "
                "events without being told.",
                hint="Use 'database' (the default) or 'redis' in production, or silence this "
                "check if the project really runs one process.",
                obj="FLOSSE['BROADCAST_BACKEND']",
                id="django_flosse.W009",
            )
        ]
    if config.broadcast_backend == "redis" and redis_persists(config.broadcast_redis_url) is False:
        from .backends.redis import _redacted

        return [
            Warning(
                f"The Redis at {_redacted(config.broadcast_redis_url)} keeps no persistence "
                "(no RDB snapshots, appendonly no): when it restarts, the history of every "
                "topic is lost and every subscriber gets flosse-reset (its page must reload).",
                hint="Turn on AOF (appendonly yes) or RDB snapshots (save ...) if a Redis "
                "restart should go unnoticed; silence this check if resets are acceptable.",
                obj="FLOSSE['BROADCAST_REDIS_URL']",
                id="django_flosse.W010",
            )
        ]
    return []


def redis_persists(url: str) -> bool | None:
    """Whether the Redis at ``url`` saves its data (RDB or AOF); ``None`` if it cannot say."""
    try:
        import redis
    except ImportError:
        return None  # E002 says so
    try:
        client = redis.Redis.from_url(
            url,
            socket_timeout=REDIS_TIMEOUT,
            socket_connect_timeout=REDIS_TIMEOUT,
            decode_responses=True,
        )
        with client:
            save = client.config_get("save").get("save", "")
            appendonly = client.config_get("appendonly").get("appendonly", "no")
    except (redis.RedisError, OSError, ValueError):
        return None
    return bool(str(save).strip()) or str(appendonly).lower() == "yes"
