"""A throwaway PostgreSQL cluster on 127.0.0.1 for the multi-process tests.

``PostgresCluster`` runs ``initdb`` into a temporary directory, starts the server with
``pg_ctl`` on a free port of 127.0.0.1 (no Unix socket outside that directory, ``fsync``
off: the data is thrown away), creates a database, and at the end stops the server by the
pid it wrote in its own ``postmaster.pid``: never anything found by name. ``stop_fast()`` and
``start_again()`` restart it on the same port with its data (the fault tests). PostgreSQL
refuses to run as root, so as root every command runs as the ``postgres`` user.

When the binaries are missing the ``postgres`` fixture skips with the reason, except in CI
(``CI=true``), where ``.ci/run`` installs them and a missing server must fail.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.processes import pid_alive
from tests.support.servers import HOST, REPO_ROOT, free_port

START_TIMEOUT = 30
STOP_TIMEOUT = 30.0
DATABASE = "flosse"
SUPERUSER = "postgres"


def find_binaries() -> Path | None:
    """The directory holding initdb, pg_ctl and postgres (PATH first, then Debian's)."""
    found = shutil.which("initdb")
    if found:
        directory = Path(os.path.realpath(found)).parent
        if (directory / "pg_ctl").exists():
            return directory
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    return Path(candidates[-1]).parent if candidates else None


class PostgresCluster:
    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.port = 0
        self.pid: int | None = None
        self.root = Path(tempfile.mkdtemp(prefix="flosse-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._as_postgres = os.geteuid() == 0

    def env(self) -> dict[str, str]:
        """What ``tests.settings_pg`` reads to reach this cluster."""
        return {
            "FLOSSE_PG_HOST": HOST,
            "FLOSSE_PG_PORT": str(self.port),
            "FLOSSE_PG_NAME": DATABASE,
            "FLOSSE_PG_USER": SUPERUSER,
        }

    def _run(self, *args: str) -> None:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=self.root)
        if done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}\n{self.logs()}"
            )

    def start(self) -> PostgresCluster:
        if self._as_postgres:
            entry = pwd.getpwnam("postgres")
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self._run(
            "initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth=trust",
            "--encoding=UTF8", "--no-sync", "--no-instructions",
        )  # fmt: skip
        for _attempt in range(3):
            self.port = free_port()
            try:
                self._pg_ctl_start()
                break
            except RuntimeError:
                if "already in use" not in self.logs():
                    raise
        self._create_database()
        return self

    def _pg_ctl_start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses={HOST} -k {self.root} "
            "-c fsync=off -c full_page_writes=off -c synchronous_commit=off"
        )
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options,
            "-w", "-t", str(START_TIMEOUT), "start",
        )  # fmt: skip
        self.pid = int((self.data / "postmaster.pid").read_text().splitlines()[0])

    def stop_fast(self) -> None:
        """``pg_ctl -m fast stop``: every session is ended, the server exits (a restart,
        a failover); ``start_again()`` brings it back on the same port with its data."""
        self._run(
            "pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", str(int(STOP_TIMEOUT)), "stop"
        )
        self.pid = None

    def start_again(self) -> None:
        self._pg_ctl_start()

    def connect(self, autocommit: bool = False) -> Any:
        """A psycopg connection to the test database (close it, or use it in ``with``)."""
        import psycopg

        return psycopg.connect(
            host=HOST, port=self.port, user=SUPERUSER, dbname=DATABASE, autocommit=autocommit
        )

    def _create_database(self) -> None:
        import psycopg

        with psycopg.connect(
            host=HOST, port=self.port, user=SUPERUSER, dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(f"CREATE DATABASE {DATABASE}")

    def migrate(self, settings_module: str) -> None:
        done = subprocess.run(
            [sys.executable, "-m", "django", "migrate", "--noinput", "-v", "0"],
            env={**os.environ, **self.env(), "DJANGO_SETTINGS_MODULE": settings_module},
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            raise RuntimeError(f"migrate failed:\n{done.stdout}\n{done.stderr}")

    def logs(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        """Fast shutdown (SIGINT) of our postmaster, by its pid; SIGKILL if it hangs."""
        pid, self.pid = self.pid, None
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGINT)
                deadline = time.monotonic() + STOP_TIMEOUT
                while pid_alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.05)
                if pid_alive(pid):
                    os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def running_cluster(settings_module: str = "tests.settings_pg") -> Iterator[PostgresCluster]:
    """A started cluster, migrated with ``settings_module``; skips (fails in CI) without
    the binaries. The session's ``postgres`` fixture is one; a test that restarts the
    server takes one of its own."""
    bindir = find_binaries()
    if bindir is None:
        reason = "PostgreSQL server binaries (initdb, pg_ctl) not found"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; .ci/run should have installed them")
        pytest.skip(f"{reason}; install postgresql to run the PostgreSQL variant")
    cluster = PostgresCluster(bindir)
    try:
        cluster.start()
        cluster.migrate(settings_module)
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session", name="postgres")
def postgres_fixture() -> Iterator[PostgresCluster]:
    """A migrated PostgreSQL database for ``tests.settings_pg``, for the whole session."""
    with running_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="module", name="own_postgres")
def own_postgres_fixture() -> Iterator[PostgresCluster]:
    """A migrated cluster of one test module only: its tests may stop and restart it."""
    with running_cluster() as cluster:
        yield cluster
