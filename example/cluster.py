"""``make demo-cluster``: the demo on three server processes sharing one broadcast engine.

    python example/cluster.py [--engine auto|postgres|redis] [--port 8000] [--every 1.0]

Starts, all on 127.0.0.1, each in a session of its own:

- the engine: a throwaway PostgreSQL cluster (``initdb`` into a temporary directory, with the
  server binaries on the PATH or Debian's in ``/usr/lib/postgresql/*/bin``; the demo's
  database and the ``database`` broadcast backend), or ``redis-server`` without persistence
  (the ``redis`` backend; the demo's database is then a temporary SQLite file);
- two uvicorn processes (``--port`` and the next one) and one gunicorn gthread process (the
  port after), all serving the demo project;
- a publisher process, ``manage.py demo_publish``, broadcasting a note every ``--every``
  seconds.

It prints the URLs, then waits. Ctrl-C (or ``--duration`` seconds, or a process that dies)
stops everything it started, by pid, and removes the temporary directory. Demo only.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent
REPO = EXAMPLE.parent
HOST = "127.0.0.1"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0

MISSING = """\
make demo-cluster needs a broadcast engine to share between processes, and found {what}.
Install one (Debian/Ubuntu):

    sudo apt-get install postgresql-common postgresql   # initdb, pg_ctl: the 'database' backend
    sudo apt-get install redis-server                   # the 'redis' backend

Nothing system-wide is used or started: the demo runs its own throwaway server on
127.0.0.1 and stops it on Ctrl-C. Without either, `make demo` shows broadcast in one
process, on SQLite.
"""


# --------------------------------------------------------------------------- finding engines
def find_postgres() -> Path | None:
    """The directory holding initdb, pg_ctl and postgres (PATH first, then Debian's)."""
    found = shutil.which("initdb")
    if found and (Path(os.path.realpath(found)).parent / "pg_ctl").exists():
        return Path(os.path.realpath(found)).parent
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    return Path(candidates[-1]).parent if candidates else None


def find_redis() -> Path | None:
    found = shutil.which("redis-server")
    return Path(found) if found else None


def choose_engine(wanted: str) -> tuple[str, Path]:
    """``(engine, binary path)``, or exit 2 with a message that says what to install."""
    postgres = find_postgres() if wanted in ("auto", "postgres") else None
    redis = find_redis() if wanted in ("auto", "redis") else None
    if postgres is not None:
        _need("psycopg", "pip install 'psycopg[binary]' (make's .venv has it)")
        return "postgres", postgres
    if redis is not None:
        _need("redis", "pip install 'django-flosse[redis]'")
        return "redis", redis
    what = {
        "auto": "neither PostgreSQL (initdb, pg_ctl) nor redis-server",
        "postgres": "no PostgreSQL server binaries (initdb, pg_ctl)",
        "redis": "no redis-server",
    }[wanted]
    sys.stderr.write(MISSING.format(what=what))
    raise SystemExit(2)


def _need(module: str, how: str) -> None:
    if importlib.util.find_spec(module) is None:
        sys.stderr.write(f"make demo-cluster: the Python package {module!r} is missing: {how}\n")
        raise SystemExit(2)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


# --------------------------------------------------------------------------- the processes
class Cluster:
    """Everything started, in order, so that ``stop()`` can undo it (by pid)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.postmaster: int | None = None
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "demo.settings",
            "PYTHONPATH": os.pathsep.join([str(REPO), str(EXAMPLE)]),
            "PYTHONUNBUFFERED": "1",
        }
        self.env.pop("PROMETHEUS_MULTIPROC_DIR", None)

    # -- engines ------------------------------------------------------------------------
    def start_postgres(self, bindir: Path) -> None:
        as_postgres = os.geteuid() == 0  # PostgreSQL refuses to run as root

        def run(*args: str) -> None:
            cmd = [str(bindir / args[0]), *args[1:]]
            if as_postgres:
                cmd = ["runuser", "-u", "postgres", "--", *cmd]
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=self.root)
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout}{done.stderr}")

        data = self.root / "pg"
        if as_postgres:
            import pwd

            entry = pwd.getpwnam("postgres")
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        print("starting a throwaway PostgreSQL in", data)
        run(
            "initdb",
            "-D",
            str(data),
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "--no-instructions",
            "--encoding=UTF8",
        )
        port = free_port()
        options = f"-p {port} -c listen_addresses={HOST} -k {self.root} -c fsync=off"
        run(
            "pg_ctl",
            "-D",
            str(data),
            "-l",
            str(self.root / "postgres.log"),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        )
        self.postmaster = int((data / "postmaster.pid").read_text().splitlines()[0])
        run("createdb", "-h", HOST, "-p", str(port), "-U", "postgres", "demo")
        self.env["DEMO_DATABASE_URL"] = f"postgresql://postgres@{HOST}:{port}/demo"
        self.env["DEMO_BROADCAST_BACKEND"] = "database"

    def start_redis(self, binary: Path) -> None:
        port = free_port()
        print("starting a throwaway redis-server on port", port)
        self.spawn(
            "redis",
            [
                str(binary),
                "--port",
                str(port),
                "--bind",
                HOST,
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.root),
            ],
        )
        deadline = time.monotonic() + START_TIMEOUT
        while not _answers_tcp(port):
            self.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.1)
        self.env["DEMO_DB"] = str(self.root / "demo.sqlite3")
        self.env["DEMO_BROADCAST_BACKEND"] = "redis"
        self.env["DEMO_REDIS_URL"] = f"redis://{HOST}:{port}/0"

    # -- Django processes ---------------------------------------------------------------
    def manage(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, str(EXAMPLE / "manage.py"), *args],
            env=self.env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if done.returncode != 0:
            raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{done.stderr}")
        return done.stdout

    def spawn(self, name: str, command: list[str]) -> subprocess.Popen[bytes]:
        """Start ``command``; its output goes to ``<name>.log`` (the publisher's to the
        console, one line per note)."""
        to_console = name == "publisher"
        with (self.root / f"{name}.log").open("wb") as log:
            process = subprocess.Popen(
                command,
                env=self.env,
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=None if to_console else log,
                stderr=None if to_console else subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches this script only: it stops them
            )
        self.children.append((name, process))
        return process

    def check_alive(self) -> None:
        for name, process in self.children:
            if process.poll() is not None:
                raise RuntimeError(f"{name} (pid {process.pid}) exited:\n{self.log_tail(name)}")

    def log_tail(self, name: str) -> str:
        try:
            return "".join((self.root / f"{name}.log").read_text(errors="replace")[-3000:])
        except OSError:
            return ""

    def wait_http(self, port: int) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            self.check_alive()
            with (
                contextlib.suppress(OSError, urllib.error.URLError),
                urllib.request.urlopen(f"http://{HOST}:{port}/", timeout=2) as response,
            ):
                if response.status == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing answered on port {port}")
            time.sleep(0.2)

    def stop(self) -> None:
        """Every child by its pid (publisher and servers first), then the engine."""
        for _name, process in reversed(self.children):
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT
        for _name, process in reversed(self.children):
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        if self.postmaster is not None:
            pid, self.postmaster = self.postmaster, None
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGINT)  # fast shutdown
                deadline = time.monotonic() + STOP_TIMEOUT
                while _alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.05)
                if _alive(pid):
                    os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its parent) is not running any more.
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    return True


def _answers_tcp(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) == 0


# --------------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="make demo-cluster",
        description="The demo on two uvicorn processes and one gunicorn process sharing "
        "PostgreSQL or Redis, with a publisher process.",
    )
    parser.add_argument(
        "--engine",
        choices=["auto", "postgres", "redis"],
        default="auto",
        help="auto: PostgreSQL if its server binaries are installed, else redis-server",
    )
    parser.add_argument(
        "--port", type=int, default=8000, help="the first server's port; the others follow"
    )
    parser.add_argument("--every", type=float, default=1.0, help="seconds between two notes")
    parser.add_argument(
        "--duration", type=float, default=0.0, help="stop after this many seconds (0: Ctrl-C)"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.port <= 65533:
        parser.error(f"--port must leave room for three ports; got {args.port}")
    if args.every <= 0:
        parser.error(f"--every must be positive; got {args.every}")
    if args.duration < 0:
        parser.error(f"--duration must be 0 or positive; got {args.duration}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    engine, binary = choose_engine(args.engine)
    cluster = Cluster(Path(tempfile.mkdtemp(prefix="flosse-demo-cluster-")))

    def stop_on_signal(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop_on_signal)
    try:
        if engine == "postgres":
            cluster.start_postgres(binary)
        else:
            cluster.start_redis(binary)
        cluster.manage("migrate", "--noinput", "-v", "0")
        login = [
            line.strip()
            for line in cluster.manage("demo_setup", "--port", str(args.port)).splitlines()
            if "admin login" in line
        ]
        ports = [args.port, args.port + 1, args.port + 2]
        servers = []
        for n, port in enumerate(ports[:2], start=1):
            name = f"uvicorn-{n}"
            cluster.spawn(
                name,
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "demo.asgi:application",
                    "--app-dir",
                    str(EXAMPLE),
                    "--host",
                    HOST,
                    "--port",
                    str(port),
                    "--lifespan",
                    "off",
                    "--timeout-graceful-shutdown",
                    "2",
                ],
            )
            servers.append((name, port))
        cluster.spawn(
            "gunicorn",
            [
                sys.executable,
                "-m",
                "gunicorn",
                "demo.wsgi:application",
                "--chdir",
                str(EXAMPLE),
                "--config",
                str(EXAMPLE / "gunicorn.conf.py"),
                "--worker-class",
                "gthread",
                "--workers",
                "1",
                "--threads",
                "32",
                "--bind",
                f"{HOST}:{ports[2]}",
                "--graceful-timeout",
                "2",
            ],
        )
        servers.append(("gunicorn", ports[2]))
        for _name, port in servers:
            cluster.wait_http(port)
        pids = dict((name, process.pid) for name, process in cluster.children)
        lines = ["", f"  django-flosse demo cluster ({engine})", ""]
        for name, port in servers:
            lines.append(f"  {name + ':':11} http://{HOST}:{port}/broadcast/  (pid {pids[name]})")
        lines += [
            "",
            f"  live dashboard: http://{HOST}:{ports[0]}/admin/django_flosse/streamconnection/"
            "dashboard/",
            f"  {login[0] if login else ''}",
            f"  server logs:    {cluster.root}/*.log (removed on exit)",
            "",
            "  Open the broadcast page on each server: every note reaches every one.",
            "  Ctrl-C stops everything.",
            "",
        ]
        print("\n".join(lines), flush=True)
        cluster.spawn(
            "publisher",
            [
                sys.executable,
                str(EXAMPLE / "manage.py"),
                "demo_publish",
                "--every",
                str(args.every),
            ],
        )
        deadline = time.monotonic() + args.duration if args.duration else None
        while deadline is None or time.monotonic() < deadline:
            cluster.check_alive()
            time.sleep(0.2)
        return 0
    except KeyboardInterrupt:
        return 0
    except RuntimeError as exc:
        sys.stderr.write(f"demo-cluster: {exc}\n")
        return 1
    finally:
        print("stopping the demo cluster…", flush=True)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut this short
        cluster.stop()
        print("stopped.", flush=True)


if __name__ == "__main__":
    sys.exit(main())
