"""``manage.py flosse_prune``: closed rows past retention go, open rows always stay."""

from __future__ import annotations

import io
import uuid
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.test import override_settings
from django.utils import timezone

from django_flosse.models import StreamConnection
from django_flosse.observing import _history as persistence

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _only_our_rows() -> None:
    """Counts are exact: no row of an earlier test's stream (written by the process's writer)."""
    persistence.writer.reset()
    StreamConnection.objects.all().delete()


def make_row(*, opened_days_ago: float, closed_days_ago: float | None) -> StreamConnection:
    now = timezone.now()
    closed_at = None if closed_days_ago is None else now - timedelta(days=closed_days_ago)
    row: StreamConnection = StreamConnection.objects.create(
        connection_id=uuid.uuid4().hex,
        stream="prune.test",
        process="web-1:1",
        opened_at=now - timedelta(days=opened_days_ago),
        last_seen_at=closed_at or now,
        closed_at=closed_at,
        close_reason="completed" if closed_at else "",
    )
    return row


@pytest.fixture
def rows() -> dict[str, StreamConnection]:
    return {
        "old_closed": make_row(opened_days_ago=40, closed_days_ago=40),
        "old_but_closed_recently": make_row(opened_days_ago=40, closed_days_ago=0.5),
        "recent_closed": make_row(opened_days_ago=2, closed_days_ago=2),
        "ancient_open": make_row(opened_days_ago=400, closed_days_ago=None),
    }


def prune(*args: str) -> str:
    out = io.StringIO()
    call_command("flosse_prune", *args, stdout=out)
    return out.getvalue()


def remaining(rows: dict[str, StreamConnection]) -> set[str]:
    ids = set(StreamConnection.objects.values_list("pk", flat=True))
    return {name for name, row in rows.items() if row.pk in ids}


def test_prunes_closed_rows_older_than_the_retention_setting(
    rows: dict[str, StreamConnection],
) -> None:
    output = prune()  # RETENTION_DAYS defaults to 30
    assert "Deleted 1 closed connection(s) older than 30 day(s); 1 open" in output
    assert remaining(rows) == {"old_but_closed_recently", "recent_closed", "ancient_open"}


def test_days_option_overrides_the_setting(rows: dict[str, StreamConnection]) -> None:
    output = prune("--days", "1")
    assert "Deleted 2 closed" in output
    assert remaining(rows) == {"old_but_closed_recently", "ancient_open"}


def test_days_zero_removes_every_closed_row_but_never_an_open_one(
    rows: dict[str, StreamConnection],
) -> None:
    prune("--days", "0")
    assert remaining(rows) == {"ancient_open"}


def test_dry_run_only_counts(rows: dict[str, StreamConnection]) -> None:
    output = prune("--days", "1", "--dry-run")
    assert output.startswith("Would delete 2 closed connection(s) older than 1 day(s)")
    assert remaining(rows) == set(rows)


@override_settings(FLOSSE={"RETENTION_DAYS": 7})
def test_retention_days_setting_is_used(rows: dict[str, StreamConnection]) -> None:
    assert "older than 7 day(s)" in prune()
    assert remaining(rows) == {"old_but_closed_recently", "recent_closed", "ancient_open"}


@override_settings(FLOSSE={"RETENTION_DAYS": None})
def test_no_retention_keeps_everything(rows: dict[str, StreamConnection]) -> None:
    assert "kept for ever" in prune()
    assert remaining(rows) == set(rows)


def test_negative_days_is_an_error(rows: dict[str, StreamConnection]) -> None:
    with pytest.raises(CommandError, match="--days must be 0 or more"):
        prune("--days", "-1")


# ---------------------------------------------------------------------- the writer's own retention
def _closed_rows(count: int, *, days_ago: float = 0.0) -> list[StreamConnection]:
    now = timezone.now() - timedelta(days=days_ago)
    return StreamConnection.objects.bulk_create(
        [
            StreamConnection(
                connection_id=uuid.uuid4().hex,
                stream="prune.flood",
                process="web-1:1",
                opened_at=now,
                last_seen_at=now,
                closed_at=now,
                close_reason="cancelled",
            )
            for _ in range(count)
        ]
    )


@override_settings(FLOSSE={"RETENTION_DAYS": 30, "RETENTION_ROWS": None})
def test_the_writer_applies_retention_days_itself(rows: dict[str, StreamConnection]) -> None:
    persistence.writer.apply_retention()
    assert remaining(rows) == {"old_but_closed_recently", "recent_closed", "ancient_open"}


@override_settings(FLOSSE={"RETENTION_DAYS": None, "RETENTION_ROWS": 10})
def test_the_row_cap_keeps_the_newest_rows_and_every_open_one(
    rows: dict[str, StreamConnection],
) -> None:
    newest = _closed_rows(12)
    persistence.writer.apply_retention()
    kept = set(StreamConnection.objects.values_list("pk", flat=True))
    assert kept == {row.pk for row in newest[-10:]} | {rows["ancient_open"].pk}


def test_a_pass_deletes_in_batches_and_stops_at_its_budget() -> None:
    from django_flosse.conf import get_config
    from django_flosse.observing import _retention

    _closed_rows(25, days_ago=40)
    objects = StreamConnection.objects.all()
    first = _retention.prune_history(objects, get_config(), budget=0.0, batch=10)
    assert (first.deleted, first.more) == (10, True)  # one batch, then out of time
    rest = _retention.prune_history(objects, get_config(), batch=10)
    assert (rest.deleted, rest.more) == (15, False)
    assert not StreamConnection.objects.exists()


@override_settings(FLOSSE={"PERSISTENCE": True, "RETENTION_DAYS": None, "RETENTION_ROWS": 5})
def test_the_writer_prunes_when_it_starts() -> None:
    from tests.support.history import open_connection

    _closed_rows(20)
    with persistence.writer.paused():
        connection = open_connection()
        persistence.writer.flush()  # a new writer's first flush
    assert StreamConnection.objects.count() <= 5 + 1  # five closed, and the new open row
    assert StreamConnection.objects.filter(connection_id=connection.id).exists()
    persistence.writer.reset()


@override_settings(FLOSSE={"RETENTION_DAYS": None, "RETENTION_ROWS": None})
def test_no_bound_deletes_nothing(rows: dict[str, StreamConnection]) -> None:
    assert persistence.writer.apply_retention() == 0
    assert remaining(rows) == set(rows)
