"""Close and rejection reasons: their names are a public contract (DESIGN.md).

Dashboards, alert rules and queries on the history match these exact strings: a renamed
reason breaks them silently. So the names are checked here as a table, and then where they
surface: the history's column, the metrics labels and the log lines.
"""

from __future__ import annotations

import uuid

import pytest
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from django_flosse import reasons
from django_flosse.models import StreamConnection
from django_flosse.observing.registry import Connection, registry


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("COMPLETED", "completed"),
        ("CANCELLED", "cancelled"),
        ("ERROR", "error"),
        ("TERMINATED", "terminated"),
        ("SHUTDOWN", "shutdown"),
        ("TIMEOUT", "timeout"),
        ("LOST", "lost"),
        ("FORBIDDEN", "forbidden"),
        ("STREAM_LIMIT", "stream_limit"),
        ("USER_LIMIT", "user_limit"),
    ],
)
def test_each_reason_has_its_documented_name(name: str, value: str) -> None:
    assert getattr(reasons, name) == value


def test_the_close_reasons_are_exactly_the_documented_seven() -> None:
    assert reasons.CLOSE_REASONS == (
        "completed",
        "cancelled",
        "error",
        "terminated",
        "shutdown",
        "timeout",
        "lost",
    )


def test_the_rejection_reasons_are_exactly_the_documented_three() -> None:
    assert reasons.REJECT_REASONS == ("forbidden", "stream_limit", "user_limit")
    assert not set(reasons.REJECT_REASONS) & set(reasons.CLOSE_REASONS)


def test_every_public_name_is_exported() -> None:
    names = {name for name in vars(reasons) if name.isupper()}
    assert set(reasons.__all__) == names


@pytest.mark.parametrize("field", ["close_reason", "stop_requested"])
def test_the_history_columns_take_every_close_reason(field: str) -> None:
    column = StreamConnection._meta.get_field(field)
    assert [value for value, _label in column.choices] == list(reasons.CLOSE_REASONS)
    assert all(len(reason) <= column.max_length for reason in reasons.CLOSE_REASONS)


def _closed_sample(stream: str, reason: str) -> float:
    labels = {"stream": stream, "reason": reason}
    return REGISTRY.get_sample_value("flosse_connections_closed_total", labels) or 0.0


def _rejected_sample(stream: str, reason: str) -> float:
    labels = {"stream": stream, "reason": reason}
    return REGISTRY.get_sample_value("flosse_connections_rejected_total", labels) or 0.0


@pytest.mark.parametrize("reason", reasons.CLOSE_REASONS)
def test_a_close_reason_is_the_metrics_label_and_the_logged_reason(reason: str) -> None:
    stream = "reasons.close"
    before = _closed_sample(stream, reason)
    connection = Connection(id=uuid.uuid4().hex, stream=stream)
    with capture_logs() as logs:
        assert registry.open(connection) is None
        assert registry.close(connection, reason) is True
    assert _closed_sample(stream, reason) == before + 1
    (closed,) = [log for log in logs if log["event"] == "sse.connection.closed"]
    assert closed["reason"] == reason


@pytest.mark.parametrize("reason", reasons.REJECT_REASONS)
def test_a_rejection_reason_is_the_metrics_label_and_the_logged_reason(reason: str) -> None:
    stream = "reasons.reject"
    before = _rejected_sample(stream, reason)
    with capture_logs() as logs:
        registry.reject(stream, reason)
    assert _rejected_sample(stream, reason) == before + 1
    (rejected,) = [log for log in logs if log["event"] == "sse.connection.rejected"]
    assert (rejected["stream"], rejected["reason"]) == (stream, reason)
