"""Wiring: the observers the settings ask for, built once and subscribed to the registry.

``AppConfig.ready()`` calls :func:`wire` and a ``setting_changed`` receiver calls it again, so
``override_settings(FLOSSE=...)`` in tests takes effect. An observer keeps what it knows of
the connections it has seen (the metrics observer, how much of each connection's counters it
has folded into Prometheus), so a re-wiring keeps the instance built from the same class or
dotted path instead of making a new one.
"""

from __future__ import annotations

from typing import Any

from ..conf import get_config
from ..events import use_json_encoder
from .log import log_observer_error
from .registry import Observer, registry

__all__ = ["reset", "wire"]

# Instances built from configured classes, by class: kept across re-wirings.
_built: dict[type, Observer] = {}


def _instance(observer: Any) -> Observer:
    if not isinstance(observer, type):
        return observer  # type: ignore[no-any-return]
    if observer not in _built:
        _built[observer] = observer()
    return _built[observer]


def wire() -> None:
    """Subscribe the configured observers, the history writer and the dashboard's watcher."""
    config = get_config()
    use_json_encoder(config.json_encoder)
    registry.on_observer_error = log_observer_error
    observers = [_instance(observer) for observer in config.observers]
    # Imported here: they use the models, which need the app registry (ready() calls this).
    from ._dashboard import watcher
    from ._history import writer

    if config.persistence:
        observers.append(writer)
    observers.append(watcher)
    registry.wire(observers)


def reset() -> None:
    """Forget what the wired observers know of past connections and wire afresh (tests)."""
    for observer in _built.values():
        forget = getattr(observer, "forget", None)
        if forget is not None:
            forget()
    wire()
