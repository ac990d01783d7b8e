"""Daemon threads for sync generators, reused while connections keep coming.

Each ``def`` view's generator runs on a thread of its own (see ``_bridge.py``). Starting a
thread costs about as much as the rest of a short connection, so a finished thread waits a
moment (:data:`IDLE_EXIT_SECONDS`) for the next generator before it exits. The threads are
daemons: a generator stuck in a blocking call never holds up the server's exit, and idle
threads go away by themselves, so nothing is left running once the streams are gone.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

__all__ = ["IDLE_EXIT_SECONDS", "run_in_worker"]

#: Seconds an idle worker waits for more work before it exits.
IDLE_EXIT_SECONDS = 1.0

_lock = threading.Lock()
_idle: list[_Worker] = []


class _Worker:
    def __init__(self) -> None:
        self._work: Callable[[], None] | None = None
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="flosse-sync-stream", daemon=True)

    def give(self, work: Callable[[], None]) -> None:
        self._work = work
        self._ready.set()

    def _loop(self) -> None:
        while True:
            work, self._work = self._work, None
            if work is not None:
                work()
            with _lock:
                _idle.append(self)
            if not self._ready.wait(IDLE_EXIT_SECONDS):
                with _lock:
                    if self in _idle:  # nobody took it meanwhile: exit
                        _idle.remove(self)
                        return
                self._ready.wait()  # taken at the last moment: its work is coming
            self._ready.clear()


def run_in_worker(work: Callable[[], None]) -> threading.Thread:
    """Run ``work`` on an idle worker, or on a new one; returns the thread running it."""
    with _lock:
        worker = _idle.pop() if _idle else None
    if worker is None:
        worker = _Worker()
        worker._work = work
        worker.thread.start()
    else:
        worker.give(work)
    return worker.thread
