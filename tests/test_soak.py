"""The soak run's broadcast phase (``bench/soak_broadcast.py``) still runs end to end: one
cycle with 20 subscribers per backend restart, not a soak. No figure is asserted (this
machine is shared); what must hold:

- ``postgres``: the cycle ran through (a worker killed, drops, PostgreSQL restarted), every
  subscriber counted every event once, no reset;
- ``redis``: the same with Redis SIGKILLed and started again empty: each subscriber got
  exactly one ``flosse-reset``, nothing was lost within a life of the history or repeated;

and the run says so with exit status 0.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.postgres import find_binaries
from tests.support.redis import find_binary

REPO = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.slow,
    pytest.mark.server,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
]

#: What the summary of each variant must say, besides its cycle and no failure.
EXPECTED = {
    "postgres": ("PostgreSQL", ["lost / duplicated / resets 0 / 0 / 0"]),
    "redis": (
        "Redis",
        [
            "lost / duplicated / resets 0 / 0 / 20",
            "resets per restart         subscribers x resets each: 20 x 1",
            "unrecoverable              ",
        ],
    ),
}


@pytest.mark.timeout(180)
@pytest.mark.parametrize("backend", ["postgres", "redis"])
def test_one_broadcast_cycle_loses_nothing(backend: str) -> None:
    if find_binaries() is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found")
    if backend == "redis" and find_binary() is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server not found; .ci/run should have installed it")
        pytest.skip("redis-server not found")
    run = subprocess.run(
        [sys.executable, str(REPO / "bench" / "soak.py"), "--duration", "0",
         "--broadcast-duration", "1", "--broadcast-subscribers", "20",
         "--broadcast-backend", backend],
        cwd=REPO, capture_output=True, text=True, timeout=170, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-4000:]
    engine, lines = EXPECTED[backend]
    summary = out.partition(f"=== broadcast phase: {engine} ===")[2]
    assert "cycles                     1, 20 subscribers" in summary, out[-4000:]
    for line in lines:
        assert line in summary, (line, out[-4000:])
    assert "kill: 10 moved" in out and "failures                   0" in summary
