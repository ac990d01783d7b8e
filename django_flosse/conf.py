"""Settings: one ``FLOSSE`` dict merged over documented defaults, read lazily.

Settings are never read at import time; :func:`get_config` caches the merged result and a
``setting_changed`` receiver clears that cache, so ``override_settings`` works in tests.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.utils.module_loading import import_string

from .events import Dumps, json_dumps_with

__all__ = ["DEFAULTS", "Config", "get_config"]

#: The documented defaults; ``settings.FLOSSE`` overrides them key by key.
DEFAULTS: Mapping[str, Any] = {
    # Seconds of producer idleness before a ": keep-alive" comment; None disables.
    "HEARTBEAT": 15.0,
    # JSON encoder class (or its dotted path) for event data that is not a str.
    "JSON_ENCODER": "django.core.serializers.json.DjangoJSONEncoder",
    # Items a sync generator may run ahead of the client when it runs in its own thread.
    "SYNC_READ_AHEAD": 16,
}


@dataclass(frozen=True)
class Config:
    heartbeat: float | None
    json_encoder: type[json.JSONEncoder]
    sync_read_ahead: int
    dumps: Dumps = field(repr=False)


def _positive_number_or_none(key: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ImproperlyConfigured(f"FLOSSE[{key!r}] must be a positive number or None; got {value!r}")
    return float(value)


def _build(overrides: Mapping[str, Any]) -> Config:
    unknown = set(overrides) - set(DEFAULTS)
    if unknown:
        raise ImproperlyConfigured(
            f"Unknown FLOSSE setting(s): {', '.join(sorted(unknown))}. "
            f"Known settings: {', '.join(sorted(DEFAULTS))}."
        )
    merged = {**DEFAULTS, **overrides}
    encoder = merged["JSON_ENCODER"]
    if isinstance(encoder, str):
        encoder = import_string(encoder)
    if not (isinstance(encoder, type) and issubclass(encoder, json.JSONEncoder)):
        raise ImproperlyConfigured(
            f"FLOSSE['JSON_ENCODER'] must be a json.JSONEncoder subclass; got {encoder!r}"
        )
    read_ahead = merged["SYNC_READ_AHEAD"]
    if isinstance(read_ahead, bool) or not isinstance(read_ahead, int) or read_ahead < 1:
        raise ImproperlyConfigured(f"FLOSSE['SYNC_READ_AHEAD'] must be an int >= 1; got {read_ahead!r}")
    return Config(
        heartbeat=_positive_number_or_none("HEARTBEAT", merged["HEARTBEAT"]),
        json_encoder=encoder,
        sync_read_ahead=read_ahead,
        dumps=json_dumps_with(encoder),
    )


@functools.cache
def get_config() -> Config:
    """The merged settings of this process (cached until a setting changes)."""
    overrides = getattr(settings, "FLOSSE", None) or {}
    if not isinstance(overrides, Mapping):
        raise ImproperlyConfigured(f"settings.FLOSSE must be a dict; got {type(overrides).__name__}")
    return _build(overrides)


@receiver(setting_changed)
def _clear_cache(*, setting: str, **kwargs: Any) -> None:
    if setting == "FLOSSE":
        get_config.cache_clear()
