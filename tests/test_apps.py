"""The app config: ready() and the re-wiring on setting_changed (apps.py)."""

from __future__ import annotations

from typing import Any

import pytest
from django.apps import apps
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from django_flosse.conf import get_config
from django_flosse.observing import _history as persistence
from django_flosse.observing import wiring
from django_flosse.observing.metrics import MetricsObserver
from django_flosse.observing.registry import registry
from django_flosse.streaming import shutdown


def ready() -> None:
    apps.get_app_config("django_flosse").ready()


@pytest.mark.parametrize("enabled", [True, False])
def test_the_app_wires_the_writer_only_when_persistence_is_on(enabled: bool) -> None:
    from django.apps import apps

    with override_settings(FLOSSE={"PERSISTENCE": enabled}):  # re-wired on the change
        assert (persistence.writer in registry.observers()) is enabled
        apps.get_app_config("django_flosse").ready()  # what a starting server does
        assert (persistence.writer in registry.observers()) is enabled
        assert registry.observers().count(persistence.writer) == int(enabled)
    assert persistence.writer not in registry.observers()  # tests.settings: off


@pytest.mark.parametrize("enabled", [True, False])
def test_ready_chains_the_signal_handlers_only_when_asked(
    monkeypatch: pytest.MonkeyPatch, enabled: bool
) -> None:
    installed: list[bool] = []
    monkeypatch.setattr(shutdown, "install_signal_handlers", lambda: installed.append(True))
    with override_settings(FLOSSE={"SHUTDOWN_SIGNALS": enabled}):
        ready()
    assert installed == ([True] if enabled else [])


def _count_wirings(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    wire = wiring.wire

    def counting() -> None:
        calls.append(1)
        wire()

    monkeypatch.setattr(wiring, "wire", counting)
    return calls


def test_only_a_change_of_flosse_rewires(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _count_wirings(monkeypatch)
    ready()  # a second ready() (as in some test runners) connects no second receiver
    calls.clear()
    with override_settings(DEBUG=True, USE_TZ=False):
        pass
    assert calls == []
    with override_settings(FLOSSE={"OBSERVERS": []}):
        assert calls == [1]
        assert not any(isinstance(o, MetricsObserver) for o in registry.observers())
    assert calls == [1, 1]  # and once more when the override ends
    assert any(isinstance(o, MetricsObserver) for o in registry.observers())


@pytest.mark.parametrize("flosse", [{"HEARTBEAT": 0}, ["HEARTBEAT"], {"NO_SUCH": 1}])
def test_an_invalid_flosse_is_reported_where_it_is_used_not_by_the_override(
    flosse: Any,
) -> None:
    wired = registry.observers()
    with override_settings(FLOSSE=flosse):  # tests that check the error can get this far
        with pytest.raises(ImproperlyConfigured):
            get_config()
        assert registry.observers() == wired  # the previous wiring stays
    assert registry.observers() == wired
    get_config()  # valid again afterwards
