"""``run.py``'s fan-out phase: F1 for every fan-out peer, then F2 with PostgreSQL and Redis.

The databases of F2 are the test suite's (``tests/support/postgres.py`` and ``redis.py``):
a throwaway cluster and a ``redis-server`` on free ports of 127.0.0.1, each stopped by its
own pid at the end. Without their binaries F2 is skipped, with the reason in the table.
The SQLite file of the run gets the tables of ours and of django-eventstream's storage.
"""

from __future__ import annotations

import contextlib
import importlib.util
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fanout
from fanpeers import F1_PEERS, F2_PEERS, FanPeer, fan_peer_named
from loadgen import run_async
from peers import APPS_DIR, Server, pid_alive


def migrate(env: dict[str, str]) -> None:
    """Create ours' and (when installed) django-eventstream's tables in the database
    ``env`` names."""
    with_storage = importlib.util.find_spec("django_eventstream") is not None
    peer = fan_peer_named("eventstream-storage" if with_storage else "ours-memory")
    full = Server(peer, Path(tempfile.gettempdir())).environment()
    full.update(env, BENCH_FLOSSE_APP="1")
    subprocess.run(
        [sys.executable, "-m", "django", "migrate", "--noinput", "-v", "0"],
        cwd=APPS_DIR, env=full, check=True, timeout=180,
    )  # fmt: skip


@contextlib.contextmanager
def shared_engines(names: set[str], db: str) -> Iterator[tuple[dict[str, str] | None, str]]:
    """PostgreSQL and/or Redis on 127.0.0.1 for F2 (``names``): the servers' environment
    (without PostgreSQL their database is the run's SQLite file), or None and why not."""
    from tests.support.postgres import PostgresCluster, find_binaries
    from tests.support.redis import RedisServer
    from tests.support.redis import find_binary as find_redis

    pg_bin = find_binaries() if "postgres" in names else None
    redis_bin = find_redis() if "redis" in names else None
    if ("postgres" in names and pg_bin is None) or ("redis" in names and redis_bin is None):
        yield None, "PostgreSQL (initdb, pg_ctl) or redis-server not found"
        return
    cluster = PostgresCluster(pg_bin) if pg_bin is not None else None
    redis = RedisServer(redis_bin) if redis_bin is not None else None
    env = {"BENCH_DB": db}
    try:
        if cluster is not None:
            cluster.start()
            env["BENCH_PG_PORT"] = str(cluster.port)
            migrate(env)
        if redis is not None:
            redis.start()
            env["BENCH_REDIS_URL"] = redis.url
        yield env, ""
    finally:
        if redis is not None:
            with contextlib.suppress(Exception):
                redis.stop()
        if cluster is not None:
            cluster.stop()


def run(
    sizes: fanout.FanSizes, out: Path, db: str, cpu: int | None, names: str | None,
    workloads: str,
) -> dict[str, Any]:  # fmt: skip
    """Every fan-out workload in ``workloads`` ("F1", "F2" or both) for the peers ``names``."""
    log_dir = out / "logs"
    result: dict[str, Any] = {"sizes": sizes.__dict__, "F1": [], "F2": [], "pids": []}
    migrate({"BENCH_DB": db})
    # django-eventstream's storage gets a file of its own (bench_settings: WAL journal).
    storage_db = db + ".eventstream"
    migrate({"BENCH_DB": storage_db})
    if "F1" in workloads:
        for peer in fanout.peers_named(names, F1_PEERS):
            print(f"-- F1 {peer.name} ({peer.label})", flush=True)
            own = {"BENCH_DB": storage_db if peer.fan == "eventstream-storage" else db}
            row = run_async(fanout.f1_peer(peer, sizes, log_dir, own, cpu))
            result["F1"].append(row)
            result["pids"] += row["pids"]
    f2_peers = fanout.peers_named(names, F2_PEERS) if "F2" in workloads else []
    if f2_peers:
        engines = {name for peer in f2_peers for name in peer.engines}
        with shared_engines(engines, db) as (env, why):
            if env is None:
                result["F2_skipped"] = why
            for peer in f2_peers if env is not None else []:
                print(f"-- F2 {peer.name} ({peer.label})", flush=True)
                own = {k: v for k, v in env.items() if k == "BENCH_DB" or _uses(peer, k)}
                if peer.fan == "eventstream-storage":
                    own["BENCH_DB"] = storage_db
                row = run_async(fanout.f2_peer(peer, sizes, log_dir, own, cpu))
                result["F2"].append(row)
                result["pids"] += row["pids"]
    result["leftovers"] = [pid for pid in result["pids"] if pid_alive(pid)]
    return result


def _uses(peer: FanPeer, variable: str) -> bool:
    return (variable == "BENCH_PG_PORT" and "postgres" in peer.engines) or (
        variable == "BENCH_REDIS_URL" and "redis" in peer.engines
    )


def failures(result: dict[str, Any]) -> list[str]:
    """Ours must deliver every event to every subscriber exactly once, in every workload."""
    found = []
    rows = [(r, size, m) for r in result.get("F1", []) for size, m in r["sizes"].items()]
    rows += [(r, "F2", r["result"]) for r in result.get("F2", []) if "result" in r]
    for row, size, measured in rows:
        if row["impl"] != "ours" or "skipped" in measured:
            continue
        if "error" in measured:
            found.append(f"{row['peer']} {size}: {measured['error']}")
        elif not measured["exactly_once"]:
            found.append(
                f"{row['peer']} {size}: {measured['lost']} lost, "
                f"{measured['duplicates']} duplicates"
            )
    return found


def profile(
    sizes: fanout.FanSizes, out: Path, db: str, cpu: int | None, subscribers: int,
    seconds: float,
) -> dict[str, Any]:  # fmt: skip
    """A profile of ours (memory backend) while it publishes to ``subscribers`` subscribers."""
    import spy

    migrate({"BENCH_DB": db})
    peer: FanPeer = fan_peer_named("ours-memory")
    print(f"-- profiling F1 {peer.name} at {subscribers:,} subscribers", flush=True)
    server = Server(peer, out / "logs", extra_env={"BENCH_DB": db}, cpu=cpu)
    try:
        with server:
            found = run_async(spy.profile_fanout(peer, server, out, sizes, subscribers, seconds))
    except Exception as exc:
        found = {"error": f"{type(exc).__name__}: {exc}"}
        traceback.print_exc()
    found["pids"] = sorted(server.pids_seen)
    return found
