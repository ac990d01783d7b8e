"""The broadcast backend of this process, made from ``FLOSSE["BROADCAST_BACKEND"]``.

One instance per process and configuration: made when first used (after a fork, so a
pre-forking server's workers each have their own reader), closed and made again when the
``FLOSSE`` setting changes (tests).
"""

from __future__ import annotations

import os
import threading
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from ...conf import BROADCAST_BACKENDS, Config, get_config
from .base import Backend

__all__ = ["close_backend", "get_backend"]

_lock = threading.Lock()
_current: tuple[tuple[Any, ...], int, Backend] | None = None


def _key(config: Config) -> tuple[Any, ...]:
    # Only a change of a broadcast setting makes a new backend (not DEBUG, not HEARTBEAT).
    names = [name for name in Config.__dataclass_fields__ if name.startswith("broadcast_")]
    return tuple(getattr(config, name) for name in names)


def _backend_class(value: Any) -> type[Backend]:
    cls = import_string(BROADCAST_BACKENDS[value]) if isinstance(value, str) else value
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise ImproperlyConfigured(
            f"FLOSSE['BROADCAST_BACKEND'] must name a django_flosse.broadcasting.backends.base."
            f"Backend subclass; got {value!r}"
        )
    return cls


def get_backend() -> Backend:
    """The backend of this process for the current settings."""
    global _current
    config = get_config()
    key = _key(config)
    current = _current
    pid = os.getpid()
    if current is not None and current[0] == key and current[1] == pid:
        return current[2]
    with _lock:
        current = _current
        if current is not None and current[0] == key and current[1] == pid:
            return current[2]
        if current is not None and current[1] == pid:
            current[2].close()
        backend = _backend_class(config.broadcast_backend)(config)
        _current = (key, pid, backend)
        return backend


def close_backend() -> None:
    """Close this process's backend (tests; the next use makes a new one)."""
    global _current
    with _lock:
        current, _current = _current, None
    if current is not None and current[1] == os.getpid():
        current[2].close()
