"""A throwaway ``redis-server`` on 127.0.0.1 for the broadcast tests.

``RedisServer`` starts Debian's ``redis-server`` on a free port of 127.0.0.1 with no
persistence (``--save '' --appendonly no``) in a temporary directory, and stops it by the
pid of the process it started: never anything found by name. ``kill()`` + ``start()``
restart it on the same port with its data gone (a crash without persistence);
``shutdown_saving()`` + ``start()`` restart it with its data kept (a crash with it).

When ``redis-server`` is missing the ``redis_server`` fixture skips with the reason, except
in CI (``CI=true``), where ``.ci/run`` installs it and a missing server must fail.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.servers import HOST, free_port

START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0


class RedisServer:
    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.root = Path(tempfile.mkdtemp(prefix="flosse-redis-"))
        self.log = self.root / "server.log"

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def env(self) -> dict[str, str]:
        """What ``tests.settings_redis`` reads to reach this server."""
        return {"FLOSSE_REDIS_URL": self.url}

    def client(self) -> Any:
        """A plain sync redis-py client (close it, or use it in ``with``)."""
        import redis

        return redis.Redis(host=HOST, port=self.port, socket_timeout=10)

    def start(self) -> RedisServer:
        """Start (again, on the same port once it has one) and wait until it answers PING."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("redis-server already running")
        for attempt in range(3):
            if not self.port or attempt:
                self.port = free_port()
            command = [
                self.binary, "--bind", HOST, "--port", str(self.port),
                "--save", "", "--appendonly", "no", "--dir", str(self.root),
                "--logfile", str(self.log), "--daemonize", "no",
            ]  # fmt: skip
            self.proc = subprocess.Popen(
                command,
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            if self._wait_ready():
                return self
            self.proc.wait(STOP_TIMEOUT)
            if "Address already in use" not in self.logs():
                break
        raise RuntimeError(f"redis-server did not start on port {self.port}:\n{self.logs()}")

    def _wait_ready(self) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and self.proc.poll() is None:
            with contextlib.suppress(OSError), socket.create_connection((HOST, self.port), 1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return True
            time.sleep(0.02)
        return False

    def kill(self) -> None:
        """SIGKILL: the data is gone (no persistence); ``start()`` brings up an empty one."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(STOP_TIMEOUT)

    def shutdown_saving(self) -> None:
        """Save a snapshot and exit (``SHUTDOWN SAVE``): ``start()`` loads it again."""
        with self.client() as client, contextlib.suppress(Exception):
            client.shutdown(save=True)
        assert self.proc is not None
        self.proc.wait(STOP_TIMEOUT)

    def logs(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        """End it for good: its data directory goes with it, so nothing needs saving.

        SIGKILL, not SIGTERM: a Redis that a test switched to ``appendonly yes`` refuses
        SIGTERM while it writes its first AOF ("Writing initial AOF, can't exit"), which cost
        a 10 s wait per such test."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(STOP_TIMEOUT)
        shutil.rmtree(self.root, ignore_errors=True)


def find_binary() -> str | None:
    return shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None
    )


@contextlib.contextmanager
def own_redis_server() -> Iterator[RedisServer]:
    """A Redis of one test only (it may kill and restart it); skips without the binary."""
    binary = find_binary()
    if binary is None:
        pytest.skip("redis-server not found")
    pytest.importorskip("redis", reason="redis-py is not installed (pip install .[redis])")
    server = RedisServer(binary).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session", name="redis_server")
def redis_server_fixture() -> Iterator[RedisServer]:
    """A running ``redis-server`` for the whole session (tests flush what they use)."""
    binary = find_binary()
    if binary is None:
        reason = "redis-server not found"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; .ci/run should have installed it")
        pytest.skip(f"{reason}; install redis-server to run the Redis broadcast tests")
    pytest.importorskip("redis", reason="redis-py is not installed (pip install .[redis])")
    server = RedisServer(binary)
    try:
        yield server.start()
    finally:
        server.stop()


def broadcast_after_restart(topic: str, data: Any) -> None:
    """``broadcast(topic, data)`` right after a Redis restart, as users retry a failed publish.

    redis-py before 8.2 (the newest on Python 3.10) may hand the first command after a
    restart to a pooled connection of the dead server: that publish raises, nothing is
    published, and the retry (docs/broadcast.md) goes through."""
    import redis as redis_py

    from django_flosse import broadcast

    try:
        broadcast(topic, data)
    except redis_py.ConnectionError:
        broadcast(topic, data)
