"""The benchmark harness (``bench/run.py``) still runs end to end: a smoke run, not a benchmark.

Only two peers, with what ``.[test]`` installs (uvicorn, Django; no sse-starlette, no psutil,
no django-flosse 0.2.0), at the smallest sizes. No figure is asserted: this machine is shared
and noisy. What must hold: the table and the JSON are written, every peer sent exactly the
reference bytes, every workload produced a number, and no server process is left running.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.processes import pid_alive

REPO = Path(__file__).resolve().parent.parent
PEERS = ("ours-async-uvicorn", "ours-async-uvicorn-obsoff", "django-async-uvicorn")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.server,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
]


@pytest.mark.timeout(150)
def test_quick_run_writes_table_and_json_and_stops_every_server(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, str(REPO / "bench" / "run.py"), "--quick", "--sizes", "tiny",
         "--peers", ",".join(PEERS), "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    data = json.loads((tmp_path / "latest.json").read_text())
    table = (tmp_path / "latest.md").read_text()

    assert data["identity_ok"] is True
    rows = {row["peer"]: row for row in data["peers"]}
    assert set(rows) == set(PEERS)
    for name, row in rows.items():
        assert row["status"] == "ok", (name, row.get("error"), row.get("log_tail"))
        assert row["identity"]["ok"], (name, row["identity"])
        for workload in ("A", "B"):
            assert row[workload]["complete"], (name, workload, row[workload])
            assert row[workload]["events_per_s"] > 0
        assert row["C"]["closed_after_s"] is not None, (name, row["C"])
        assert row["D"]["median_ms"] > 0
        assert row["flood"]["count"] > 0
        assert f"| `{name}` |" in table
        assert row["pids"], name

    # The side-by-side phase: D for every peer, observability on/off alternated.
    side = data["side_by_side"]
    rounds = data["sizes"]["d"]
    assert {name: side["D"][name]["count"] for name in PEERS} == dict.fromkeys(PEERS, rounds)
    pair = side["observability"]["ours-async-uvicorn"]
    for workload in ("A", "B"):
        for name in ("ours-async-uvicorn", "ours-async-uvicorn-obsoff"):
            assert pair[workload][name]["complete"], (workload, name, pair[workload][name])
            assert pair[workload][name]["events_per_s"] > 0
    assert not [pid for pid in side["pids"] if pid_alive(pid)]

    assert "## Goals of issue 6" in table
    assert (
        "observability costs < 5% (`ours-async-uvicorn` vs `ours-async-uvicorn-obsoff`, alternated)"
        in table
    )
    assert "A: `ours-async-uvicorn` ≥ 3x `django-async-uvicorn`" in table
    assert data["machine"]["python"]
    assert not [pid for row in rows.values() for pid in row["pids"] if pid_alive(pid)]


FAN_PEERS = ("raw-asgi", "django-queue", "django-floor", "ours-memory", "ours-redis")


@pytest.mark.timeout(150)
def test_fanout_run_delivers_every_event_once_and_stops_every_process(tmp_path: Path) -> None:
    """F1 (one process) and F2 (two servers, Redis, a publisher process), tiny sizes."""
    pytest.importorskip("redis", reason="F2 of ours needs redis-py (pip install .[redis])")
    run = subprocess.run(
        [sys.executable, str(REPO / "bench" / "run.py"), "--sizes", "tiny",
         "--workloads", "F1,F2", "--fan-peers", ",".join(FAN_PEERS), "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    fan = json.loads((tmp_path / "latest.json").read_text())["fanout"]
    table = (tmp_path / "latest.md").read_text()
    sizes = fan["sizes"]
    f1 = {row["peer"]: row for row in fan["F1"]}
    assert set(f1) == {"raw-asgi", "django-queue", "django-floor", "ours-memory"}
    for name, row in f1.items():
        assert row["status"] == "ok", (name, row)
        for n in sizes["subscribers"]:
            measured = row["sizes"][str(n)]
            assert "error" not in measured, (name, measured)
            assert measured["exactly_once"], (name, n, measured["lost"], measured["duplicates"])
            assert measured["received"] == n * (sizes["spaced"] + sizes["burst"])
            assert measured["deliveries_per_s"] > 0
            assert measured["spaced_p50_ms"] > 0
            assert f"| `{name}` | {n:,} |" in table

    if fan.get("F2_skipped"):  # no redis-server or PostgreSQL binaries here
        assert fan["F2_skipped"] in table
    else:
        (f2,) = fan["F2"]
        assert f2["peer"] == "ours-redis" and f2["result"]["exactly_once"], f2
        assert f2["result"]["received"] == sizes["across"] * (sizes["spaced"] + sizes["burst"])
    assert "### Goals of issue 14" in table
    assert fan["pids"] and not [pid for pid in fan["pids"] if pid_alive(pid)]
