"""Real server processes for end-to-end tests: one way to start them, one pool to share them.

``LiveServer`` starts uvicorn, daphne, hypercorn or granian (ASGI) or gunicorn gthread or
granian (WSGI) in a child process on a free port of 127.0.0.1, serving ``tests.asgi`` /
``tests.wsgi`` with ``tests.settings``, and waits until it answers HTTP. It only ever signals
the process it started (and that process's own session, for the worker processes of
gunicorn, hypercorn and granian): never anything found by name.

    with LiveServer("uvicorn", loop="asyncio") as server:
        httpx.get(server.url + "/some/stream/")
        ...
        if something_failed:
            print(server.logs())

The child's stdout and stderr go to temporary files, readable at any time with ``logs()``,
also after the server stopped (until ``close()``).

``ServerPool`` is how the suite holds them: ``get()`` starts a server on first use, one per
(kind, settings module, loop), and hands the same one to every later caller; ``start()``
starts a fresh one for a test that will kill it or needs odd arguments. ``close()`` stops
them all. conftest.py gives each test module a pool (``server_pool``) and each test one for
its own servers (``live_server_factory``); ``bench/soak.py`` uses ``LiveServer`` directly.

Only the standard library is imported here (``tests.settings`` lazily): the soak run and
the benchmark import this module from ``bench/.venv``, which has no pytest.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal

from tests.support.processes import POLL_INTERVAL, stop_process

REPO_ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"

START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0

#: The settings of a plain server: the test project, with connection history on.
SETTINGS = "tests.settings"
#: ``tests.settings`` plus a LOGGING config that prints the ``django_flosse`` logger's
#: records to stderr, where ``logs()`` reads them (``tests.support.observe`` parses them).
LOGGING_SETTINGS = "tests.settings_server"

Kind = Literal["uvicorn", "gunicorn", "daphne", "hypercorn", "granian-asgi", "granian-wsgi"]
KINDS: tuple[Kind, ...] = (
    "uvicorn", "gunicorn", "daphne", "hypercorn", "granian-asgi", "granian-wsgi",
)  # fmt: skip

# Every server started and not yet stopped, so the session fixture in conftest.py can stop
# leftovers (a test that crashed between start() and stop()).
_RUNNING: set[LiveServer] = set()


class ServerStartError(RuntimeError):
    """The server exited or did not answer HTTP within the start timeout."""


def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


class LiveServer:
    """A server process (one of ``KINDS``) serving the test project on 127.0.0.1.

    Arguments:
        kind: ``"uvicorn"``, ``"daphne"``, ``"hypercorn"`` (asyncio worker),
            ``"granian-asgi"`` (ASGI), ``"gunicorn"`` (gthread worker) or ``"granian-wsgi"``.
        loop: uvicorn only: ``"uvloop"`` or ``"asyncio"`` (``None``: uvicorn's default).
        env: extra environment variables, on top of ``os.environ`` and
            ``DJANGO_SETTINGS_MODULE=tests.settings``.
        extra_args: appended to the server's command line.
        threads: gunicorn's threads, granian-wsgi's blocking threads (one per open stream).
        workers: worker processes of gunicorn, hypercorn and granian (hypercorn: 0 serves
            in the main process itself).
        app: override the application (default ``tests.asgi:application`` /
            ``tests.wsgi:application``).
    """

    def __init__(
        self,
        kind: Kind = "uvicorn",
        *,
        loop: Literal["uvloop", "asyncio"] | None = None,
        env: dict[str, str] | None = None,
        extra_args: list[str] | tuple[str, ...] = (),
        threads: int = 8,
        workers: int = 1,
        app: str | None = None,
        start_timeout: float = START_TIMEOUT,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
        if loop is not None and kind != "uvicorn":
            raise ValueError("loop= applies to uvicorn only")
        if loop not in (None, "uvloop", "asyncio"):
            raise ValueError(f"loop must be 'uvloop', 'asyncio' or None, not {loop!r}")
        self.kind: Kind = kind
        self.loop = loop
        self.extra_env = dict(env or {})
        self.extra_args = list(extra_args)
        self.threads = threads
        self.workers = workers
        self.app = app
        self.start_timeout = start_timeout
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._stdout: IO[bytes] | None = None
        self._stderr: IO[bytes] | None = None

    # -- public API ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL without a trailing slash, e.g. ``http://127.0.0.1:54321``."""
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        return self._require_proc().pid

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def command(self) -> list[str]:
        if self.kind == "daphne":
            cmd = [
                sys.executable, "-m", "daphne", "-b", HOST, "-p", str(self.port),
                self.app or "tests.asgi:application",
            ]  # fmt: skip
        elif self.kind == "uvicorn":
            cmd = [
                sys.executable, "-m", "uvicorn", self.app or "tests.asgi:application",
                "--host", HOST, "--port", str(self.port),
                "--no-access-log", "--lifespan", "off",
            ]  # fmt: skip
            if self.loop is not None:
                cmd += ["--loop", self.loop]
        elif self.kind == "hypercorn":
            cmd = [
                sys.executable, "-m", "hypercorn", self.app or "tests.asgi:application",
                "-b", f"{HOST}:{self.port}", "-k", "asyncio", "-w", str(self.workers),
            ]  # fmt: skip
        elif self.kind in ("granian-asgi", "granian-wsgi"):
            interface = self.kind.removeprefix("granian-")
            cmd = [
                sys.executable, "-m", "granian", "--interface", interface,
                "--host", HOST, "--port", str(self.port), "--workers", str(self.workers),
                "--no-ws", "--log-level", "warning",
                self.app or f"tests.{interface}:application",
            ]  # fmt: skip
            if interface == "wsgi":
                # Each open stream holds one blocking thread for as long as it lasts.
                cmd[-1:-1] = ["--blocking-threads", str(self.threads)]
        else:
            cmd = [
                sys.executable, "-m", "gunicorn", self.app or "tests.wsgi:application",
                "-k", "gthread", "--threads", str(self.threads), "-w", str(self.workers),
                "-b", f"{HOST}:{self.port}", "--graceful-timeout", "5",
            ]  # fmt: skip
            if gunicorn_has_control_socket():
                # One fixed path per user by default: concurrent servers would fight over it.
                cmd.append("--no-control-socket")
        return cmd + self.extra_args

    def environment(self) -> dict[str, str]:
        if "FLOSSE_TEST_DB" not in os.environ:
            # Importing the settings exports FLOSSE_TEST_DB, so parent and child share the DB.
            import tests.settings  # noqa: F401
        env = dict(os.environ)
        env["DJANGO_SETTINGS_MODULE"] = SETTINGS
        env["PYTHONUNBUFFERED"] = "1"
        env["FLOSSE_TEST_SERVER"] = "1"  # servers write connection history (tests.settings)
        env.update(self.extra_env)
        return env

    def start(self) -> LiveServer:
        """Start the process and wait until it answers HTTP (or raise ServerStartError)."""
        if self.proc is not None:
            raise RuntimeError("server already started")
        for attempt in range(3):
            self.port = free_port()
            self._open_logs()
            self.proc = subprocess.Popen(
                self.command(),
                cwd=REPO_ROOT,
                env=self.environment(),
                stdin=subprocess.DEVNULL,
                stdout=self._stdout,
                stderr=self._stderr,
                # Its own session: a Ctrl-C in the terminal does not reach it, and gunicorn's
                # workers can be found through its process group, which is nobody else's.
                start_new_session=True,
            )
            _RUNNING.add(self)
            try:
                self._wait_ready()
                return self
            except ServerStartError:
                logs = self.logs()
                self.stop()
                # Another process took the port between free_port() and bind(): try again.
                if "address already in use" in logs.lower() and attempt < 2:
                    self.proc = None
                    continue
                raise
        raise AssertionError("unreachable")

    def send_signal(self, sig: int) -> None:
        """Send a signal to the server process only (e.g. SIGTERM to test shutdown)."""
        proc = self._require_proc()
        if proc.poll() is None:
            proc.send_signal(sig)

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the process to exit; raise subprocess.TimeoutExpired after timeout."""
        return self._require_proc().wait(timeout)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL. Returns the exit code."""
        proc = self.proc
        if proc is None:
            return None
        try:
            return stop_process(proc, timeout, STOP_TIMEOUT)
        finally:
            _RUNNING.discard(self)

    def logs(self) -> str:
        """The server's stdout and stderr so far, for printing when a test fails."""
        parts = [f"$ {' '.join(self.command())}  (pid {self.proc.pid if self.proc else '-'})"]
        for name, stream in (("stdout", self._stdout), ("stderr", self._stderr)):
            if stream is None or stream.closed:
                continue
            stream.flush()
            with open(stream.name, "rb") as f:
                text = f.read().decode("utf-8", "replace")
            parts.append(f"--- {self.kind} {name} ---\n{text}")
        return "\n".join(parts)

    def close(self) -> None:
        """Stop the server and delete its log files."""
        self.stop()
        for stream in (self._stdout, self._stderr):
            if stream is not None and not stream.closed:
                stream.close()
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(stream.name)

    def __enter__(self) -> LiveServer:
        try:
            return self.start()
        except BaseException:
            self.close()  # the exception already carries the logs
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "not started" if self.proc is None else f"pid {self.proc.pid}"
        return f"<LiveServer {self.kind} {self.url} {state}>"

    # -- internals ----------------------------------------------------------------------

    def _require_proc(self) -> subprocess.Popen[bytes]:
        if self.proc is None:
            raise RuntimeError("server not started")
        return self.proc

    def _open_logs(self) -> None:
        for stream in (self._stdout, self._stderr):
            if stream is not None and not stream.closed:
                stream.close()
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(stream.name)
        # They live as long as the server object (closed in close()): no `with` block.
        prefix = f"flosse-{self.kind}-"
        self._stdout = tempfile.NamedTemporaryFile(prefix=prefix, suffix=".out", delete=False)  # noqa: SIM115
        self._stderr = tempfile.NamedTemporaryFile(prefix=prefix, suffix=".err", delete=False)  # noqa: SIM115

    def _wait_ready(self) -> None:
        """Poll until the port accepts a connection and an HTTP request gets any answer.

        gunicorn's master accepts connections before its worker has loaded Django, so a
        bare connect is not enough: a 404 for a path nobody routes proves the app is up.
        """
        proc = self._require_proc()
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ServerStartError(
                    f"{self.kind} exited with code {proc.returncode} before it was ready\n"
                    + self.logs()
                )
            if self._answers_http(min(2.0, max(0.1, deadline - time.monotonic()))):
                return
            time.sleep(POLL_INTERVAL)
        raise ServerStartError(
            f"{self.kind} did not answer on {self.url} within {self.start_timeout:g} s\n"
            + self.logs()
        )

    def _answers_http(self, timeout: float) -> bool:
        request = f"GET /__flosse_ready__ HTTP/1.0\r\nHost: {HOST}:{self.port}\r\n\r\n"
        try:
            with socket.create_connection((HOST, self.port), timeout=timeout) as sock:
                sock.sendall(request.encode("ascii"))
                return sock.recv(16).startswith(b"HTTP/")
        except OSError:
            return False


def gunicorn_has_control_socket() -> bool:
    """gunicorn 25.1 added a control socket, on by default (``--no-control-socket``)."""
    try:
        version = importlib.metadata.version("gunicorn")
    except importlib.metadata.PackageNotFoundError:
        return False
    parts = tuple(int(x) for x in re.findall(r"\d+", version)[:2])
    return parts >= (25, 1)


def stop_all() -> None:
    """Stop every LiveServer still running (used by the session fixture)."""
    for server in list(_RUNNING):
        server.close()


class ServerPool:
    """Servers shared on first use, and fresh ones on demand; ``close()`` stops them all.

    ``get(kind, settings, loop)`` starts one server per key the first time it is asked
    for and returns that same server afterwards: tests that only talk to a server share
    it (starting one takes a second or two). ``start(...)`` takes any ``LiveServer``
    arguments and always starts a new server, for tests that signal, kill or load it.
    """

    def __init__(self) -> None:
        self._shared: dict[tuple[str, str, str | None], LiveServer] = {}
        self._started: list[LiveServer] = []

    def get(
        self,
        kind: str,
        settings: str = SETTINGS,
        loop: Literal["uvloop", "asyncio"] | None = None,
    ) -> LiveServer:
        """``loop=None``: uvicorn's default (uvloop when installed, as with uvicorn[standard])."""
        key = (kind, settings, loop)
        if key not in self._shared:
            self._shared[key] = self.start(
                kind, loop=loop, env={"DJANGO_SETTINGS_MODULE": settings}
            )
        return self._shared[key]

    def start(self, *args: Any, **kwargs: Any) -> LiveServer:
        """A new ``LiveServer(*args, **kwargs)``, started (it is stopped by ``close()``)."""
        server = LiveServer(*args, **kwargs)
        self._started.append(server)
        return server.start()

    def shared(self) -> list[LiveServer]:
        """The servers ``get()`` started, in order."""
        return list(self._shared.values())

    def close(self) -> None:
        for server in self._started:
            server.close()
        self._started.clear()
        self._shared.clear()
