"""``broadcasting.backends._outage``: one log line per outage, growing jittered delays."""

from __future__ import annotations

from structlog.testing import capture_logs

from django_flosse.broadcasting.backends._outage import BACKOFF, Outage


def test_one_line_per_outage_and_one_when_it_ends() -> None:
    outage = Outage("listener", backend="database")
    with capture_logs() as logs:
        for _ in range(20):
            outage.failed(OSError("connection refused"))
        outage.ok()
        outage.ok()  # still fine: nothing more to say
    assert [(r["event"], r["log_level"]) for r in logs] == [
        ("sse.broadcast.backend_error", "error"),
        ("sse.broadcast.backend_error", "info"),
    ]
    failed, recovered = logs
    assert failed["part"] == recovered["part"] == "listener"
    assert failed["backend"] == recovered["backend"] == "database"
    assert "connection refused" in failed["error"]
    assert recovered["recovered_after"] >= 0 and "error" not in recovered


def test_the_delays_grow_to_the_last_step_each_between_half_and_all_of_it() -> None:
    outage = Outage("reader")
    with capture_logs():
        delays = [outage.failed(OSError()) for _ in range(len(BACKOFF) + 5)]
    steps = [BACKOFF[min(i, len(BACKOFF) - 1)] for i in range(len(delays))]
    assert all(step / 2 <= delay <= step for delay, step in zip(delays, steps, strict=True))
    assert len({round(d, 6) for d in delays[len(BACKOFF) :]}) > 1  # jittered, not one value


def test_a_new_outage_starts_from_the_first_delay_and_logs_again() -> None:
    outage = Outage("reader")
    with capture_logs() as logs:
        for _ in range(len(BACKOFF)):
            outage.failed(OSError())
        outage.ok()
        first = outage.failed(OSError("again"))
    assert first <= BACKOFF[0]
    assert [r.get("error", "") for r in logs if "error" in r][-1].startswith("OSError('again'")
    assert sum(1 for r in logs if "error" in r) == 2
