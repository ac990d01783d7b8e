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
