"""What each idle stream keeps, by allocation site: ours against plain Django (issue 14).

    bench/.venv/bin/python bench/conn_memory.py                 # 500 idle streams each
    bench/.venv/bin/python bench/conn_memory.py --streams 1000 --top 40

Workload C says how much RSS an idle connection costs; this says where it goes. Each peer's
uvicorn server (the benchmark's apps, ``apps/tracemalloc_app.py`` around them) runs with
tracemalloc on; after a warm-up a snapshot is taken, ``--streams`` connections are opened
and held after their first event (``loadgen.IdleConnections``, as in C), and a second
snapshot is taken. Printed: the traced bytes per connection of each peer, then the
allocation sites (file and line of the innermost frame) where ours keeps more or less than
plain Django, per connection. tracemalloc sees the Python heap only (not thread stacks or
the kernel's socket buffers): it explains the difference between the two, not C's totals.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import re
import tempfile
import time
import tracemalloc
from pathlib import Path

import loadgen
from peers import Peer, Server, peer_named
from run import migrate

PEERS = ("ours-async-uvicorn", "django-async-uvicorn")
REPOSITORY = str(Path(__file__).resolve().parent.parent)


@dataclasses.dataclass(frozen=True)
class TracedPeer(Peer):
    """The same peer, served through ``apps/tracemalloc_app.py``."""

    def app(self) -> str:
        return "tracemalloc_app:application"


async def hold_idle(port: int, streams: int, timeout: float) -> int:
    """Snapshot ``before``, hold ``streams`` idle streams, snapshot ``idle``; how many got
    their first event."""
    warm = loadgen.IdleConnections()  # the first requests fill caches that then stay
    await warm.open(port, "/stream", 20, timeout)
    warm.drop()
    await asyncio.sleep(1.0)  # let the server notice the resets and close them
    await loadgen.fetch(port, "/__snapshot?before", timeout)
    idle = loadgen.IdleConnections()
    try:
        got = await idle.open(port, "/stream", streams, timeout)
        await asyncio.sleep(1.0)  # the history writer's first flush, the metrics' fold
        await loadgen.fetch(port, "/__snapshot?idle", timeout)
    finally:
        idle.drop()
    return got


def per_site(folder: Path, streams: int) -> collections.Counter[str]:
    """Bytes per connection kept between the two snapshots, by innermost frame."""
    before = tracemalloc.Snapshot.load(str(folder / "before.snap"))
    idle = tracemalloc.Snapshot.load(str(folder / "idle.snap"))
    sites: collections.Counter[str] = collections.Counter()
    for stat in idle.compare_to(before, "lineno"):
        frame = stat.traceback[0]
        name = frame.filename.split("site-packages/")[-1].removeprefix(f"{REPOSITORY}/")
        name = re.sub(r"^.*/lib/python3\.\d+/", "", name)  # the standard library's
        sites[f"{name}:{frame.lineno}"] += stat.size_diff / streams
    return sites


def measure(name: str, streams: int, out: Path, db: str) -> collections.Counter[str]:
    peer = peer_named(name)
    traced = TracedPeer(**{f.name: getattr(peer, f.name) for f in dataclasses.fields(peer)})
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    env = {"BENCH_SNAPSHOT_DIR": str(folder), "BENCH_DB": db}
    with Server(traced, out, extra_env=env) as server:
        got = asyncio.run(hold_idle(server.port, streams, timeout=120.0))
    if got < streams:
        raise SystemExit(f"{name}: only {got} of {streams} streams got their first event")
    return per_site(folder, streams)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=500)
    parser.add_argument("--top", type=int, default=30, help="allocation sites to print")
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="flosse-conn-memory-"))
    db = str(out / "ours.sqlite3")
    migrate(db)
    started = time.monotonic()
    ours, plain = (measure(name, args.streams, out, db) for name in PEERS)
    print(f"{args.streams} idle streams per peer, traced Python heap per connection:")
    for name, sites in zip(PEERS, (ours, plain), strict=True):
        print(f"  {name}: {sum(sites.values()) / 1024:.2f} KiB")
    print(f"where {PEERS[0]} keeps more (+) or less (-) than {PEERS[1]}, bytes/connection:")
    difference = {site: ours[site] - plain[site] for site in ours.keys() | plain.keys()}
    for site, size in sorted(difference.items(), key=lambda item: -abs(item[1]))[: args.top]:
        print(f"  {size:+7.0f}  {site}")
    print(f"({time.monotonic() - started:.0f} s; snapshots and server logs in {out})")


if __name__ == "__main__":
    main()
