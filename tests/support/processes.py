"""Processes we started: stopping one by its pid, and what ``/proc`` says about it.

Shared by the tests, the soak run (``bench/soak.py``) and the benchmark (``bench/peers.py``),
so it imports nothing beyond the standard library: ``bench/.venv`` has no pytest. Linux only.

A process is only ever signalled through the ``Popen`` that started it, and its process
group only while the process is an unreaped zombie: then its pid, which is the group's id
(``start_new_session=True``), cannot have been reused by anyone else.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

POLL_INTERVAL = 0.05


def exited_unreaped(pid: int, timeout: float, *, reaped_ok: bool = True) -> bool:
    """Wait up to ``timeout`` s for ``pid`` to exit, leaving it a zombie (not reaped).

    A child already reaped elsewhere counts as exited only if ``reaped_ok``.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return True
        except ChildProcessError:  # already reaped by someone
            return reaped_ok
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_INTERVAL)


def stop_process(proc: subprocess.Popen[bytes], timeout: float, kill_timeout: float) -> int | None:
    """SIGTERM, wait up to ``timeout`` s, then SIGKILL; then what is left of its own group.

    The process must have been started with ``start_new_session=True``. Returns its exit code.
    """
    if proc.returncode is None:
        if not exited_unreaped(proc.pid, 0):
            proc.send_signal(signal.SIGTERM)
        if not exited_unreaped(proc.pid, timeout):
            proc.kill()
            exited_unreaped(proc.pid, kill_timeout)
        # Exited but not reaped, so its pid (= its process group id) cannot have been
        # reused: kill what is left of its own group (gunicorn workers whose master was
        # killed), then reap it.
        if exited_unreaped(proc.pid, 0, reaped_ok=False):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(kill_timeout)
    return proc.returncode


def pid_alive(pid: int) -> bool:
    """Is ``pid`` a live process (not gone, not a zombie)?"""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def proc_status(pid: int, key: str) -> int:
    """One number of ``/proc/<pid>/status`` (``VmRSS`` in kB, ``Threads``, ...)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {key} in /proc/{pid}/status")


def thread_count(pid: int) -> int:
    return proc_status(pid, "Threads")


def rss_mb(pid: int) -> float:
    return proc_status(pid, "VmRSS") / 1024


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far (from /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _settle(
    read: Callable[[], float],
    moved: Callable[[float, float], bool],
    stable: float,
    timeout: float,
    interval: float,
) -> float:
    """Read until the value has not ``moved`` for ``stable`` s (bounded); the last value."""
    deadline = time.monotonic() + timeout
    last, since = read(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(interval)
        now = read()
        if moved(last, now):
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= stable:
            break
    return last


def settled_rss(pid: int, stable: float = 1.0, timeout: float = 6.0) -> float:
    """RSS once it stopped moving by more than 1% for ``stable`` seconds (bounded)."""
    _settle(lambda: rss_mb(pid), lambda a, b: abs(b - a) > a * 0.01, stable, timeout, 0.1)
    return rss_mb(pid)


def settled_thread_count(pid: int, stable: float = 1.5, timeout: float = 8.0) -> int:
    """The thread count once it stopped changing for ``stable`` seconds (bounded).

    Some threads outlive a request by about a second (the servers' and asgiref's
    executors winding down): waiting for a longer quiet spell gives the real floor.
    """
    return int(_settle(lambda: thread_count(pid), lambda a, b: a != b, stable, timeout, 0.05))
