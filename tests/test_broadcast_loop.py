"""The loop of a broadcast backend's thread (``django_flosse/broadcasting/backends/_loop.py``).

The Redis backend's reader is cancelled to issue its ``XREAD`` again (a join brought a new
topic) or to stop (``close()``). Its command is redis-py's: a send inside
``asyncio.wait_for``, then a read that blocks. Before Python 3.12, ``wait_for`` drops a cancel
that comes just as the send finished (CPython gh-86296), and the read then blocked to its end:
found by ``test_close_stops_the_thread_and_ends_subscriptions`` in CI's matrix.
"""

from __future__ import annotations

import asyncio

import pytest

from django_flosse.broadcasting.backends._loop import cancel_surely

#: Loop turns a cancelled task may take to end (it ends in two: the cancel, its cleanup).
TURNS = 10


async def _command(sent: list[str]) -> None:
    """What redis-py does for one command: send within ``wait_for``, then a blocking read."""
    await asyncio.wait_for(asyncio.sleep(0), 10)
    sent.append("sent")
    await asyncio.sleep(3600)  # the XREAD BLOCK


async def _turns(count: int) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


@pytest.mark.parametrize("after_turns", range(6))
async def test_cancel_surely_ends_a_command_at_any_moment(after_turns: int) -> None:
    """Whatever loop turn the cancel comes on (before, during or after the send), the
    command ends within a few turns instead of blocking in its read."""
    sent: list[str] = []
    task = asyncio.ensure_future(_command(sent))
    await _turns(after_turns)
    cancel_surely(task)
    await _turns(TURNS)
    try:
        assert task.cancelled(), f"still running after the send ({sent})"
    finally:
        task.cancel()


async def test_cancel_surely_leaves_a_finished_task_alone() -> None:
    task = asyncio.ensure_future(asyncio.sleep(0, result="done"))
    await task
    cancel_surely(task)
    await _turns(TURNS)
    assert task.result() == "done"
