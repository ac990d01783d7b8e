"""``make demo-cluster`` (example/cluster.py): its arguments, its message when no engine is
installed, and, where PostgreSQL or Redis and their broadcast backend are there, one run:
every note of the publisher process reaches the streams of all three server processes.
"""

from __future__ import annotations

import importlib.util
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from httpx_sse import EventSource

from tests.support.processes import pid_alive, stop_process
from tests.support.servers import HOST, REPO_ROOT

SCRIPT = REPO_ROOT / "example" / "cluster.py"


@pytest.fixture
def cluster() -> ModuleType:
    """example/cluster.py as a module (it is a script, not a package)."""
    spec = importlib.util.spec_from_file_location("demo_cluster", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- arguments


def test_help_names_every_option() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    for option in ("--engine", "--port", "--every", "--duration"):
        assert option in done.stdout


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--engine", "mysql"], "invalid choice: 'mysql'"),
        (["--port", "eighty"], "invalid int value: 'eighty'"),
        (["--port", "65535"], "--port must leave room for three ports; got 65535"),
        (["--every", "0"], "--every must be positive; got 0.0"),
        (["--duration", "-1"], "--duration must be 0 or positive; got -1.0"),
        (["--workers", "3"], "unrecognized arguments: --workers 3"),
    ],
)
def test_bad_arguments_are_refused(
    cluster: ModuleType, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        cluster.main(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_defaults(cluster: ModuleType) -> None:
    args = cluster.parse_args([])
    assert (args.engine, args.port, args.every, args.duration) == ("auto", 8000, 1.0, 0.0)


def test_make_passes_port_and_arguments() -> None:
    if shutil.which("make") is None:
        pytest.skip("no make on this machine")
    shown = subprocess.run(
        [
            "make",
            "-n",
            "-f",
            str(REPO_ROOT / "Makefile"),
            "demo-cluster",
            "PORT=9100",
            "CLUSTER_ARGS=--engine redis --every 0.5",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "example/cluster.py --port 9100 --engine redis --every 0.5" in shown


# --------------------------------------------------------------------------- no engine


@pytest.mark.parametrize(
    ("engine", "found"),
    [
        ("auto", "found neither PostgreSQL (initdb, pg_ctl) nor redis-server"),
        ("postgres", "found no PostgreSQL server binaries (initdb, pg_ctl)"),
        ("redis", "found no redis-server"),
    ],
)
def test_missing_engine_says_what_to_install(
    cluster: ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    engine: str,
    found: str,
) -> None:
    monkeypatch.setattr(cluster, "find_postgres", lambda: None)
    monkeypatch.setattr(cluster, "find_redis", lambda: None)
    started = []
    monkeypatch.setattr(cluster, "Cluster", lambda *a: started.append(a))  # must not start
    with pytest.raises(SystemExit) as exited:
        cluster.main(["--engine", engine])
    assert exited.value.code == 2
    err = " ".join(capsys.readouterr().err.split())
    assert (
        f"make demo-cluster needs a broadcast engine to share between processes, and {found}" in err
    )
    assert "apt-get install postgresql-common postgresql" in err
    assert "apt-get install redis-server" in err
    assert "`make demo` shows broadcast in one process" in err
    assert started == []


def test_engine_choice_prefers_postgres(cluster: ModuleType, monkeypatch: Any) -> None:
    monkeypatch.setattr(cluster, "find_postgres", lambda: Path("/pg/bin"))
    monkeypatch.setattr(cluster, "find_redis", lambda: Path("/usr/bin/redis-server"))
    assert cluster.choose_engine("auto") == ("postgres", Path("/pg/bin"))
    assert cluster.choose_engine("redis") == ("redis", Path("/usr/bin/redis-server"))
    monkeypatch.setattr(cluster, "find_postgres", lambda: None)
    assert cluster.choose_engine("auto") == ("redis", Path("/usr/bin/redis-server"))


# --------------------------------------------------------------------------- one run

NOTES = 4  # notes every stream must receive, in order, with no gap
RUN_TIMEOUT = 120.0


def _require(cluster: ModuleType, engine: str) -> None:
    find = {"postgres": cluster.find_postgres, "redis": cluster.find_redis}[engine]
    if find() is None:
        if os.environ.get("CI") == "true":  # .ci/run installs both engines
            pytest.fail(f"{engine} is not installed; .ci/run should have installed it")
        pytest.skip(f"{engine} is not installed")


def _three_free_ports() -> int:
    """A port P such that P, P+1 and P+2 are free now (the script takes three in a row)."""
    import socket

    for _attempt in range(50):
        with socket.socket() as probe:
            probe.bind((HOST, 0))
            base = probe.getsockname()[1]
        if base > 65000:
            continue
        sockets = []
        try:
            for port in (base, base + 1, base + 2):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind((HOST, port))
            return base
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    pytest.fail("no three consecutive free ports")


def _lines(process: subprocess.Popen[str]) -> tuple[queue.Queue[str], threading.Thread]:
    """The script's output lines, read by a thread (it ends at the script's end)."""
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return lines, reader


def _notes(url: str, deadline: float) -> Iterator[tuple[int, str, int]]:
    """``(note number, id, publisher pid)`` of each note a pane's stream gets, from the
    instant it joined (a made-up id's reset says so)."""
    with (
        httpx.Client(timeout=10) as client,
        client.stream("GET", url + "?lastEventId=made-up") as response,
    ):
        assert response.status_code == 200
        events = (e for e in EventSource(response).iter_sse() if e.event != "message")
        assert next(events).event == "hello"
        assert next(events).event == "flosse-reset"
        for event in events:
            assert time.monotonic() < deadline
            data = event.json()
            number = int(re.fullmatch(r"note (\d+) from the publisher", data["text"])[1])  # type: ignore[index]
            yield number, event.id, data["pid"]


@pytest.mark.server
@pytest.mark.slow
@pytest.mark.timeout(int(RUN_TIMEOUT) + 60)
@pytest.mark.parametrize("engine", ["postgres", "redis"])
def test_one_event_reaches_every_process(cluster: ModuleType, engine: str) -> None:
    _require(cluster, engine)
    base = _three_free_ports()
    process = subprocess.Popen(
        [
            sys.executable,
            str(SCRIPT),
            "--engine",
            engine,
            "--port",
            str(base),
            "--every",
            "0.2",
            "--duration",
            str(RUN_TIMEOUT),
        ],
        cwd=REPO_ROOT,
        env={k: v for k, v in os.environ.items() if not k.startswith(("DEMO_", "DJANGO_"))},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    output: list[str] = []
    lines, reader = _lines(process)
    try:
        deadline = time.monotonic() + RUN_TIMEOUT / 2
        while not output or "Ctrl-C stops everything" not in output[-1]:
            assert time.monotonic() < deadline, "".join(output)
            try:
                output.append(lines.get(timeout=1))
            except queue.Empty:
                assert process.poll() is None, "".join(output)
        servers = re.findall(r"(\S+):\s+(http://\S+/broadcast/)\s+\(pid (\d+)\)", "".join(output))
        assert [name for name, _url, _pid in servers] == ["uvicorn-1", "uvicorn-2", "gunicorn"]
        deadline = time.monotonic() + RUN_TIMEOUT / 2
        received = {}
        for name, url, _pid in servers:
            stream = url.replace("/broadcast/", "/stream/news/")
            notes = _notes(stream, deadline)
            try:
                received[name] = [next(notes) for _ in range(NOTES)]
            finally:
                notes.close()  # the connection closes here, not when collected
        # Each process: consecutive notes (no gap, no duplicate), one publisher process.
        for notes in received.values():
            numbers = [number for number, _id, _pid in notes]
            assert numbers == list(range(numbers[0], numbers[0] + NOTES)), received
        assert len({pid for notes in received.values() for _n, _id, pid in notes}) == 1
        # The same event has the same id in every process.
        ids: dict[int, set[str]] = {}
        for notes in received.values():
            for number, event_id, _pid in notes:
                ids.setdefault(number, set()).add(event_id)
        assert all(len(seen) == 1 for seen in ids.values()), ids
    except BaseException:
        print("".join(output))
        raise
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGINT)  # what Ctrl-C does
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                stop_process(process, 10, 10)  # type: ignore[arg-type]
        reader.join(10)
        assert process.stdout is not None
        process.stdout.close()
        while not lines.empty():
            output.append(lines.get())
    assert "stopped." in "".join(output), "".join(output)
    assert process.returncode == 0
    for _name, _url, pid in servers:
        assert not pid_alive(int(pid)), f"{_name} (pid {pid}) outlived the script"
