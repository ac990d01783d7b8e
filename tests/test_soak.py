"""The soak run's broadcast phase (``bench/soak_broadcast.py``) still runs end to end: one
cycle with 20 subscribers, not a soak. No figure is asserted (this machine is shared); what
must hold: the cycle ran through (a worker killed, drops, PostgreSQL restarted), every
subscriber counted every event once, and the run says so with exit status 0.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.postgres import find_binaries

REPO = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.slow,
    pytest.mark.server,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
]


@pytest.mark.timeout(180)
def test_one_broadcast_cycle_loses_nothing() -> None:
    if find_binaries() is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found")
    run = subprocess.run(
        [sys.executable, str(REPO / "bench" / "soak.py"), "--duration", "0",
         "--broadcast-duration", "1", "--broadcast-subscribers", "20"],
        cwd=REPO, capture_output=True, text=True, timeout=170, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-4000:]
    assert "cycles                     1, 20 subscribers" in out, out[-4000:]
    assert "lost / duplicated / resets 0 / 0 / 0" in out
    assert "kill: 10 moved" in out and "failures                   0" in out
