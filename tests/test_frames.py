"""The frames the server writes itself: the final frame of a stream it ends, the error frame."""

from __future__ import annotations

import random
import re

import pytest
from django.test import override_settings

from django_flosse import reasons
from django_flosse.streaming._frames import (
    ERROR_MESSAGE,
    RECONNECT_AFTER_MS,
    error_frame,
    final_frame,
)

_RETRY = re.compile(rb"\Aretry: (\d+)\n")


def _without_retry(frame: bytes) -> tuple[int | None, bytes]:
    match = _RETRY.match(frame)
    if match is None:
        return None, frame
    return int(match.group(1)), frame[match.end() :]


@pytest.mark.parametrize(
    ("reason", "rest"),
    [
        (reasons.TERMINATED, b'event: terminated\ndata: {"reason": "terminated"}\n\n'),
        (reasons.SHUTDOWN, b'event: shutdown\ndata: {"reason": "shutdown"}\n\n'),
        (reasons.TIMEOUT, b'event: timeout\ndata: {"reason": "timeout"}\n\n'),
    ],
)
def test_the_final_frame_names_its_reason_as_event_and_data(reason: str, rest: bytes) -> None:
    assert _without_retry(final_frame(reason))[1] == rest


def test_terminated_sends_no_retry_hint() -> None:
    # Clients should close their EventSource: no reconnection delay is suggested.
    assert final_frame(reasons.TERMINATED).startswith(b"event: terminated\n")
    assert b"retry:" not in final_frame(reasons.TERMINATED)


@pytest.mark.parametrize("reason", [reasons.SHUTDOWN, reasons.TIMEOUT])
def test_shutdown_and_timeout_retry_hints_are_jittered_between_1_and_2_seconds(
    reason: str,
) -> None:
    retries = set()
    for _ in range(200):
        retry, _rest = _without_retry(final_frame(reason))
        assert retry is not None
        assert RECONNECT_AFTER_MS <= retry <= 2 * RECONNECT_AFTER_MS
        retries.add(retry)
    # 200 draws from 1001 values: all equal has a chance of about 1001**-199.
    assert len(retries) > 1  # clients do not all reconnect at the same moment


def test_the_jitter_covers_both_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[int, int]] = []

    def randint(low: int, high: int) -> int:
        seen.append((low, high))
        return high

    monkeypatch.setattr(random, "randint", randint)
    assert final_frame(reasons.SHUTDOWN).startswith(b"retry: 2000\n")
    assert seen == [(1000, 2000)]


def test_the_error_frame_has_the_message_and_error_id_only_without_debug() -> None:
    frame = error_frame(RuntimeError("secret internal detail"), "abcd1234")
    assert frame == (
        b'event: error\ndata: {"message": "The event stream failed on the server.", '
        b'"error_id": "abcd1234"}\n\n'
    )
    assert ERROR_MESSAGE.encode() in frame
    assert b"secret" not in frame and b"RuntimeError" not in frame


@override_settings(DEBUG=True)
def test_the_error_frame_has_the_exception_text_with_debug() -> None:
    frame = error_frame(ValueError("bad\nvalue"), "abcd1234")
    assert frame == (
        b'event: error\ndata: {"message": "The event stream failed on the server.", '
        b'"error_id": "abcd1234", "detail": "ValueError: bad\\nvalue"}\n\n'
    )  # a newline in the message stays inside the JSON: one data line, no injected field
