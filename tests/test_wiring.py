"""Wiring: the configured observers, built once and subscribed (observing/wiring.py).

An observer remembers the connections it has seen (the metrics observer, how much of each
it has folded into Prometheus), so a re-wiring must keep the instance built from the same
class. The JSON encoder of the settings is handed to the event encoder the same way.
"""

from __future__ import annotations

import json
import uuid
from decimal import Decimal
from typing import Any

import pytest
from django.test import override_settings

from django_flosse import SSEEvent, reasons
from django_flosse.observing import wiring
from django_flosse.observing._dashboard import watcher
from django_flosse.observing._history import writer
from django_flosse.observing.log import LogObserver, log_observer_error
from django_flosse.observing.metrics import MetricsObserver
from django_flosse.observing.registry import Connection, registry

RECORDER = "tests.test_wiring.Recorder"


class Recorder:
    """An observer that remembers what it saw, and can forget it."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.forgotten = 0

    def connection_opened(self, connection: Connection) -> None:
        self.seen.append(connection.id)

    def connection_closed(self, connection: Connection) -> None:
        pass

    def connection_rejected(self, stream: str, reason: str) -> None:
        pass

    def forget(self) -> None:
        self.forgotten += 1


class Money(json.JSONEncoder):
    def default(self, o: Any) -> Any:
        if isinstance(o, Decimal):
            return f"{o:.2f} EUR"
        return super().default(o)


def recorders() -> list[Recorder]:
    return [o for o in registry.observers() if isinstance(o, Recorder)]


def test_the_default_wiring() -> None:
    observers = registry.observers()
    assert [type(o) for o in observers[:2]] == [MetricsObserver, LogObserver]
    assert observers[-1] is watcher  # the dashboard sees every connection
    assert writer not in observers  # tests.settings: PERSISTENCE off
    assert registry.on_observer_error is log_observer_error


@pytest.mark.parametrize(
    ("flosse", "expected"),
    [
        ({"OBSERVERS": [], "PERSISTENCE": False}, ["watcher"]),
        ({"OBSERVERS": [], "PERSISTENCE": True}, ["writer", "watcher"]),
        ({"OBSERVERS": [RECORDER], "PERSISTENCE": True}, ["Recorder", "writer", "watcher"]),
    ],
)
def test_the_configured_observers_come_first_then_the_writer_then_the_watcher(
    flosse: dict[str, Any], expected: list[str]
) -> None:
    names = {id(writer): "writer", id(watcher): "watcher"}
    with override_settings(FLOSSE=flosse):
        observers = registry.observers()
        assert [names.get(id(o), type(o).__name__) for o in observers] == expected


def test_a_class_is_built_once_and_kept_across_rewirings() -> None:
    with override_settings(FLOSSE={"OBSERVERS": [RECORDER]}):
        (first,) = recorders()
        connection = Connection(id=uuid.uuid4().hex, stream="wiring.unit")
        registry.open(connection)
    with override_settings(FLOSSE={"OBSERVERS": [Recorder], "HEARTBEAT": 5.0}):
        (second,) = recorders()  # the class itself, not its path: the same instance
        registry.close(connection, reasons.COMPLETED)
    assert second is first
    assert first.seen == [connection.id]


def test_an_instance_is_used_as_given() -> None:
    mine = Recorder()
    with override_settings(FLOSSE={"OBSERVERS": [mine, RECORDER]}):
        built = recorders()
    assert built[0] is mine and built[1] is not mine and len(built) == 2


def test_reset_makes_the_built_observers_forget() -> None:
    with override_settings(FLOSSE={"OBSERVERS": [RECORDER]}):
        (recorder,) = recorders()
        before = recorder.forgotten
        wiring.reset()
        assert recorder.forgotten == before + 1
        assert recorders() == [recorder]  # and wires the same instance again


def test_the_json_encoder_of_the_settings_is_handed_to_events() -> None:
    event = SSEEvent(data={"price": Decimal("3.5")})
    assert event.encode() == 'data: {"price": "3.5"}\n\n'  # DjangoJSONEncoder
    with override_settings(FLOSSE={"JSON_ENCODER": Money}):
        assert event.encode() == 'data: {"price": "3.50 EUR"}\n\n'
    assert event.encode() == 'data: {"price": "3.5"}\n\n'  # back with the settings
