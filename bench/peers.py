"""The peers of the benchmark and the server processes that serve them.

Each peer is one app module under ``bench/apps/`` on one server (uvicorn or gunicorn
gthread), started as its own process on 127.0.0.1, pinned to one CPU, with its output kept
in a log file. A server is only ever signalled through the pid it was started with (and
its own process group, which ``start_new_session`` made and nobody else is in).

Stopping a server, free ports and ``/proc`` readings are the test suite's
(``tests/support/``, standard library only): the repository root goes on ``sys.path``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import resource
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))

from tests.support.processes import cpu_seconds, proc_status, stop_process  # noqa: E402
from tests.support.processes import pid_alive as pid_alive  # noqa: E402 (bench/run.py's)
from tests.support.servers import HOST, free_port, gunicorn_has_control_socket  # noqa: E402

APPS_DIR = BENCH_DIR / "apps"
FLOSSE020_DIR = BENCH_DIR / ".flosse020"

START_TIMEOUT = 30.0
STOP_TIMEOUT = 8.0
GUNICORN_THREADS = 64  # B needs 50 streams at once, one thread each

try:
    import psutil
except ImportError:  # the test suite's venv: read /proc instead
    psutil = None


@dataclass(frozen=True)
class Peer:
    name: str
    impl: str  # raw | django | sse-starlette | flosse020 | ours
    server: str  # uvicorn | gunicorn
    view: str  # async | sync
    loop: str | None = None  # uvicorn's loop
    observability: str | None = None  # ours only: on | off
    note: str = ""
    needs: tuple[str, ...] = ()  # modules the server imports beyond Django and uvicorn

    @property
    def path(self) -> str:
        return "/stream" if self.view == "async" else "/sync-stream"

    @property
    def holds_idle(self) -> bool:
        """Workload C: async views on uvicorn (gunicorn spends a thread per connection)."""
        return self.server == "uvicorn" and self.view == "async"

    @property
    def label(self) -> str:
        parts = [f"{self.view} view", self.server]
        if self.loop:
            parts.append(self.loop)
        if self.observability:
            parts.append(f"observability {self.observability}")
        return ", ".join(parts)

    def app(self) -> str:
        if self.impl == "raw":
            return "raw_asgi:app"
        if self.impl == "sse-starlette":
            return "starlette_sse:app"
        return "django_asgi:application" if self.server == "uvicorn" else "django_wsgi:application"

    def env(self) -> dict[str, str]:
        env = {"PYTHONPATH": str(APPS_DIR), "PYTHONUNBUFFERED": "1"}
        if self.impl in ("django", "flosse020", "ours"):
            env["DJANGO_SETTINGS_MODULE"] = "bench_settings"
            env["BENCH_URLCONF"] = {"django": "plain_django"}.get(self.impl, self.impl)
        if self.impl == "flosse020":
            # First on the path, for this process only: it never shadows ours anywhere else.
            env["PYTHONPATH"] = f"{FLOSSE020_DIR}{os.pathsep}{APPS_DIR}"
        if self.impl == "ours":
            env["BENCH_FLOSSE_APP"] = "1"
            env["BENCH_OBSERVABILITY"] = self.observability or "on"
        return env

    def missing(self) -> list[str]:
        """What this peer needs that is not installed here (it is skipped, with the reason)."""
        absent = [m for m in self.needs if importlib.util.find_spec(m) is None]
        if self.loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
            absent.append("uvloop")
        if self.impl == "flosse020" and not (FLOSSE020_DIR / "django_flosse").is_dir():
            absent.append(f"django-flosse 0.2.0 in {FLOSSE020_DIR}")
        return absent


def _ours(view: str, server: str, loop: str | None, obs: str) -> Peer:
    name = f"ours-{view}-{server}"
    if loop == "asyncio":
        name += "-asyncio"
    if obs == "off":
        name += "-obsoff"
    return Peer(name, "ours", server, view, loop, obs)


PEERS: list[Peer] = [
    Peer("raw-asgi-uvicorn", "raw", "uvicorn", "async", "uvloop",
         note="pre-encoded frames, one ASGI message per event: the server's ceiling"),
    Peer("django-async-uvicorn", "django", "uvicorn", "async", "uvloop",
         note="StreamingHttpResponse over an async generator"),
    Peer("django-sync-gunicorn", "django", "gunicorn", "sync",
         note="StreamingHttpResponse over a sync generator"),
    Peer("sse-starlette-uvicorn", "sse-starlette", "uvicorn", "async", "uvloop",
         note='EventSourceResponse(sep="\\n")', needs=("sse_starlette",)),
    Peer("flosse020-async-uvicorn", "flosse020", "uvicorn", "async", "uvloop"),
    Peer("flosse020-sync-gunicorn", "flosse020", "gunicorn", "sync"),
    *(
        _ours(view, server, loop, obs)
        for obs in ("on", "off")
        for view, server, loop in (
            ("async", "uvicorn", "uvloop"),
            ("async", "uvicorn", "asyncio"),
            ("sync", "uvicorn", "uvloop"),
            ("async", "gunicorn", None),
            ("sync", "gunicorn", None),
        )
    ),
]  # fmt: skip

#: The row every ratio in the table is taken against.
REFERENCE = "ours-async-uvicorn"


def peer_named(name: str) -> Peer:
    for peer in PEERS:
        if peer.name == name:
            return peer
    known = ", ".join(p.name for p in PEERS)
    raise SystemExit(f"unknown peer {name!r}; known peers: {known}")


# -- server processes ------------------------------------------------------------------------


@dataclass
class Server:
    """One peer's server process. Use as a context manager: it is stopped on every exit."""

    peer: Peer
    log_dir: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    cpu: int | None = None  # pin the server to this CPU
    python: str = sys.executable
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    pids_seen: set[int] = field(default_factory=set)
    _log: IO[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"{self.peer.name}.log"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def command(self) -> list[str]:
        peer = self.peer
        if peer.server == "uvicorn":
            cmd = [
                self.python, "-m", "uvicorn", peer.app(), "--host", HOST, "--port", str(self.port),
                "--no-access-log", "--lifespan", "off", "--log-level", "warning",
                "--timeout-graceful-shutdown", "2",
            ]  # fmt: skip
            if importlib.util.find_spec("httptools") is not None:
                cmd += ["--http", "httptools"]
            if peer.loop:
                cmd += ["--loop", peer.loop]
            return cmd
        cmd = [
            self.python, "-m", "gunicorn", peer.app(), "-k", "gthread",
            "--threads", str(GUNICORN_THREADS), "-w", "1", "-b", f"{HOST}:{self.port}",
            "--graceful-timeout", "3", "--timeout", "300", "--log-level", "warning",
        ]  # fmt: skip
        if gunicorn_has_control_socket():
            cmd.append("--no-control-socket")  # else one fixed socket path for every server
        return cmd

    def environment(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "DJANGO_SETTINGS_MODULE") and not k.startswith("BENCH_")
        }
        env.update(self.peer.env())
        env.update(self.extra_env)
        return env

    def _pin(self) -> None:  # runs in the child, before exec
        if self.cpu is not None:
            os.sched_setaffinity(0, {self.cpu})
        # The fan-out workloads hold 10,000 connections: as many descriptors as allowed.
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    def start(self) -> Server:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        for attempt in range(3):
            self.port = free_port()
            self._log.write(f"$ {' '.join(self.command())}\n".encode())
            self._log.flush()
            self.proc = subprocess.Popen(
                self.command(),
                cwd=APPS_DIR,
                env=self.environment(),
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=self._log,
                start_new_session=True,
                preexec_fn=self._pin,
            )
            self.pids_seen.add(self.proc.pid)
            try:
                self._wait_ready()
                self.pids_seen.update(self.tree())
                return self
            except RuntimeError:
                self.stop()
                if "address already in use" in self.log_tail().lower() and attempt < 2:
                    self._log = open(self.log_path, "ab")  # noqa: SIM115
                    continue
                raise
        raise AssertionError("unreachable")

    def _wait_ready(self) -> None:
        """Until ``/active`` answers 200 (gunicorn accepts before its worker loaded Django)."""
        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.peer.name} exited with code {self.proc.returncode}:\n{self.log_tail()}"
                )
            if self._answers():
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.peer.name} did not answer within {START_TIMEOUT:g} s")

    def _answers(self) -> bool:
        request = f"GET /active HTTP/1.0\r\nHost: {HOST}\r\n\r\n".encode()
        try:
            with socket.create_connection((HOST, self.port), timeout=2) as sock:
                sock.sendall(request)
                status_line = sock.recv(32)
                return status_line.startswith(b"HTTP/") and b" 200 " in status_line
        except OSError:
            return False

    def stop(self) -> int | None:
        """SIGTERM, wait, then SIGKILL; then whatever is left of its own process group."""
        proc = self.proc
        if proc is None:
            return None
        try:
            if proc.poll() is None:
                self.pids_seen.update(self.tree())
                stop_process(proc, STOP_TIMEOUT, STOP_TIMEOUT)
        finally:
            if self._log is not None and not self._log.closed:
                self._log.close()
        return proc.returncode

    def __enter__(self) -> Server:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text("utf-8", "replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # -- what the server uses ----------------------------------------------------------------
    def tree(self) -> list[int]:
        """The server's pid and its descendants' (gunicorn: master and worker)."""
        if self.proc is None or self.proc.poll() is not None:
            return []
        return [self.proc.pid, *_descendants(self.proc.pid)]

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the whole tree so far."""
        return sum(_cpu_seconds(pid) for pid in self.tree())

    def rss_bytes(self) -> int:
        return sum(_rss_bytes(pid) for pid in self.tree())

    def fd_count(self) -> int:
        total = 0
        for pid in self.tree():
            with contextlib.suppress(OSError):
                total += len(os.listdir(f"/proc/{pid}/fd"))
        return total


def _descendants(pid: int) -> list[int]:
    if psutil is not None:
        with contextlib.suppress(psutil.Error):
            return [c.pid for c in psutil.Process(pid).children(recursive=True)]
        return []
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def _cpu_seconds(pid: int) -> float:
    if psutil is not None:
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(pid).cpu_times()
            return float(times.user + times.system)
        return 0.0
    with contextlib.suppress(OSError, IndexError, ValueError):
        return cpu_seconds(pid)
    return 0.0


def _rss_bytes(pid: int) -> int:
    if psutil is not None:
        with contextlib.suppress(psutil.Error):
            return int(psutil.Process(pid).memory_info().rss)
        return 0
    with contextlib.suppress(OSError, IndexError, ValueError, AssertionError):
        return proc_status(pid, "VmRSS") * 1024
    return 0
