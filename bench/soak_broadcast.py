"""The broadcast phase of the soak run: a thousand subscribers through drops, a worker kill
and a backend restart, cycle after cycle (``python bench/soak.py --broadcast-duration 600``).

Two uvicorn workers on a throwaway PostgreSQL (``tests/support/postgres.py``; the
``database`` backend, connection history in the same database), ``--broadcast-subscribers``
followers (``tests/support/fleet.py``: they reconnect with their last id, like browsers)
split between them, a publisher process publishing two topics without pause and retrying
what fails. Worker A lives through the whole phase; worker B dies in every cycle:

1. **kill**: SIGKILL of B; its subscribers resume on A with their last id;
2. **replace and drop**: a new B starts; the subscribers that moved are dropped (RST) from A
   and held back until A has cleaned their streams up (the time back to zero, as the
   other soak cycles measure it), then they reconnect, to B;
3. **restart**: PostgreSQL is stopped (``pg_ctl -m fast``) and started again once the
   publisher has failed and every stream has had a heartbeat since;
4. **check**: every subscriber has caught up with the history as it was at that moment,
   nothing came twice or out of order (each subscriber counts, by the publisher's own
   sequence numbers), B's history rows of the last cycle are closed as ``lost``; A's
   settled RSS and Python objects are recorded.

At the end the publisher stops and every subscriber's count must equal the history's, per
topic. A failure is recorded (non-zero exit), never retried away.

That is the ``postgres`` variant (:class:`Phase`); ``--broadcast-backend redis`` runs the same
cycles on the ``redis`` backend with Redis SIGKILLed and started again empty in step 3
(``soak_broadcast_redis.RedisPhase``), ``both`` (the default) runs one after the other, each
for half the duration.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterable

from soak import log
from soak_broadcast_report import (
    BroadcastFigures,
    check_trends,
    first_failure,
    last,
    summary,
)

from tests.support.broadcast_publisher import Publisher
from tests.support.fleet import (
    PATHS,
    SETTINGS,
    TOPICS,
    Follower,
    history_rows,
    spread,
    start_id,
    topics_of,
)
from tests.support.observe import state
from tests.support.postgres import PostgresCluster, find_binaries
from tests.support.processes import settled_rss
from tests.support.servers import LiveServer

WAIT = 60.0  # seconds any one step may take before it counts as a failure
SLOW = 10.0  # seconds after which a step's details are printed
#: Only the async view: a sync view holds a thread per stream, and a thousand threads in
#: two workers would measure thread scheduling on two cores, not broadcast.
SOAK_PATHS = tuple(p for p in PATHS if "/async/" in p)


async def until(check: Callable[[], bool], timeout: float = WAIT) -> float | None:
    """Seconds until ``check()``, or None after ``timeout``."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            return None
        await asyncio.sleep(0.05)
    return time.monotonic() - start


class Phase:
    """The cycles on the ``database`` backend: PostgreSQL is restarted in step 3."""

    engine = "PostgreSQL"
    recovery = "caught up"  # what the time after the restart measures

    def __init__(self, cluster: PostgresCluster, subscribers: int, figures: BroadcastFigures):
        self.cluster = cluster
        self.figures = figures
        figures.engine = self.engine
        self.env = {"DJANGO_SETTINGS_MODULE": SETTINGS, **cluster.env(), **self.backend_env()}
        self.a = self._worker()
        self.b = self._worker()
        self.followers = [
            Follower(p, topics_of(p), self.first_id(topics_of(p)), keep=False)
            for p in spread(SOAK_PATHS, subscribers)
        ]
        for f in self.followers:
            f.max_connections = 10_000  # minutes of drops and kills, each a reconnection
        self.home_b = set(self.followers[len(self.followers) // 2 :])
        self.stop = asyncio.Event()
        self.publisher = Publisher(self.env, ",".join(TOPICS), "p", interval=0.2)

    def backend_env(self) -> dict[str, str]:
        return {"FLOSSE_FAULTS_BACKEND": "database"}

    def first_id(self, topics: tuple[str, ...]) -> str:
        return start_id("d", topics, 0, str)

    def _worker(self) -> LiveServer:
        server = LiveServer("uvicorn", env=self.env)
        server.start()
        return server

    def route(self, f: Follower) -> int:
        server = self.b if f in self.home_b else self.a
        if server.returncode is not None:
            server = self.a if server is self.b else self.b
        return server.port

    def history_counts(self) -> dict[str, int]:
        with self.cluster.connect() as conn:
            rows = conn.execute(
                "SELECT topic, count(*) FROM django_flosse_broadcastmessage GROUP BY topic"
            ).fetchall()
        return {topic: count for topic, count in rows}

    def target(self) -> Callable[[Follower], bool]:
        """Whether a subscriber has everything published so far (read now, in a thread)."""
        counts = self.history_counts()
        return lambda f: all(f.tally.get(t, 0) >= counts.get(t, 0) for t in f.topics)

    async def caught_up(self) -> float | None:
        """Seconds until every subscriber has what was published when called (None: never)."""
        ok = await asyncio.to_thread(self.target)
        took = await until(lambda: all(ok(f) for f in self.followers))
        if took is None:
            self.figures.fail(f"subscribers did not catch up: {self.behind(ok)}")
        elif took > SLOW:
            log(f"  slow catch-up ({took:.1f} s); at the end: {self.behind(ok)}")
        return took

    async def start(self) -> None:
        self.tasks = [asyncio.ensure_future(f.run(self.route, self.stop)) for f in self.followers]
        took = await until(lambda: all(f.events >= 1 for f in self.followers))
        if took is None:
            raise RuntimeError("not every subscriber streams")

    async def cycle(self) -> None:
        figures = self.figures
        # 1. kill B: its subscribers resume on A.
        on_b = [f for f in self.followers if f.port == self.b.port]
        process = f"{socket.gethostname()}:{self.b.pid}"
        # The history writer inserts rows in batches: wait until B's connections have theirs,
        # or a connection opened just before the kill would have no row to close as lost.
        # (Closed rows of B are those its Redis restart ended: the clients came back.)
        if await until(lambda: self.rows(process).get(None) == len(on_b)) is None:
            figures.fail(f"worker B's open rows before the kill: {self.rows(process)}")
        marks = {f: (f.connections, f.events) for f in on_b}
        killed = time.monotonic()
        self.b.send_signal(signal.SIGKILL)
        await asyncio.to_thread(self.b.wait, WAIT)

        def resumed(f: Follower) -> bool:
            return f.connections > marks[f][0] and f.events > marks[f][1]

        took = await until(lambda: all(resumed(f) for f in on_b))
        if took is None or took > SLOW:
            late = [f for f in on_b if not resumed(f)]
            what = [(f.port, f.connections - marks[f][0], f.errors[-1:]) for f in late[:3]]
            log(f"  {len(late)} not resumed after {time.monotonic() - killed:.1f} s: {what}")
        if took is None:
            figures.fail(f"{sum(not resumed(f) for f in on_b)} subscribers did not resume")
        else:
            figures.moved.append(len(on_b))
            figures.resumed.append(time.monotonic() - killed)
        self.b.close()
        # 2. a new B; the moved ones dropped from A, held until A cleaned them up.
        self.b = await asyncio.to_thread(self._worker)
        expected = len(self.followers) - len(on_b)
        for f in on_b:
            f.drop(hold=True)
        dropped = time.monotonic()
        zero = await until(lambda: state(self.a)["active"] == expected)
        if zero is None:
            figures.fail(f"worker A not back to {expected} streams: {state(self.a)['active']}")
        else:
            figures.zero.append(time.monotonic() - dropped)
        for f in on_b:
            f.release()
        await self.settled_on_b(on_b)
        # 3. the engine restarted.
        await self.restart_engine()
        # 4. checks
        lost_rows = await until(
            lambda: (rows := self.rows(process)).get("lost") == len(on_b) and None not in rows
        )
        if lost_rows is None:
            figures.fail(f"the killed worker's rows: {self.rows(process)}")
        a = state(self.a, gc=True)
        figures.rss.append(settled_rss(self.a.pid))
        figures.objects.append(a["gc_objects"])
        log(
            f"  kill: {len(on_b)} moved, resumed after {last(figures.resumed)} s; drop: back "
            f"to zero after {last(figures.zero)} s; {self.engine} outage {last(figures.outages)} "
            f"s, {self.recovery} {last(figures.recovered)} s after; A: RSS "
            f"{figures.rss[-1]:.1f} MB, {figures.objects[-1]} objects"
        )

    async def settled_on_b(self, moved: list[Follower]) -> None:
        """Wait until ``moved`` stream on B and have replayed what they missed: each cycle's
        restart then meets the same state, streams that wait live. (A stream still
        replaying when Redis goes waits too: ``tests/test_broadcast_redis_rejoin.py``.)"""
        events = {f: f.events for f in moved}

        def on_b(f: Follower) -> bool:
            return f.port == self.b.port and f.events > events[f]

        if await until(lambda: all(on_b(f) for f in moved)) is None:
            astray = [(f.port, f.errors[-1:]) for f in moved if not on_b(f)]
            self.figures.fail(f"{len(astray)} moved subscribers not streaming on B: {astray[:3]}")
            return
        await self.caught_up()  # what was published once they had all joined

    async def restart_engine(self) -> None:
        back = await self.outage(self.cluster.stop_fast, self.cluster.start_again)
        if await self.caught_up() is not None:
            self.figures.recovered.append(time.monotonic() - back)

    async def outage(self, stop: Callable[[], object], start: Callable[[], object]) -> float:
        """``stop()`` the engine, wait until the publisher has failed and every stream has
        had a heartbeat since (it stays open), ``start()`` it again; the moment it was back."""
        refused = len(self.publisher.failures)
        marks = {f: (len(f.ends), f.error_events) for f in self.followers}
        went = time.monotonic()
        await asyncio.to_thread(stop)

        def beating(f: Follower) -> bool:
            return f.heartbeats_between(went, time.monotonic()) >= 1

        if (
            await until(
                lambda: (
                    len(self.publisher.failures) > refused
                    and all(beating(f) for f in self.followers)
                )
            )
            is None
        ):
            silent = [f for f in self.followers if not beating(f)]
            ended = [f for f in silent if len(f.ends) > marks[f][0]]
            errors = sum(f.error_events - marks[f][1] for f in silent)
            self.figures.fail(
                f"{len(self.publisher.failures) - refused} publishes refused; {len(silent)} "
                f"streams without a heartbeat during the outage ({len(ended)} of them ended "
                f"since it began, {errors} error events; by port "
                f"{dict(Counter(f.port for f in silent))}, A {self.a.port}): "
                f"{[f.errors[-1:] for f in silent[:2]]}"
            )
            server = self.a if silent[0].port == self.a.port else self.b
            log(first_failure(server.logs()))
        await asyncio.to_thread(start)
        back = time.monotonic()
        self.figures.outages.append(back - went)
        return back

    def behind(self, ok: Callable[[Follower], bool]) -> str:
        """Who is not ``ok``, by worker (for a failure or a slow step)."""
        late = [f for f in self.followers if not ok(f)]
        by_port: dict[int, int] = {}
        for f in late:
            by_port[f.port] = by_port.get(f.port, 0) + 1
        errors = [e for f in late for e in f.errors[-1:]][:3]
        return f"{len(late)} behind, by port {by_port} (A {self.a.port}, B {self.b.port}) {errors}"

    def rows(self, process: str) -> dict[str | None, int]:
        return history_rows(self.cluster.connect, process)

    async def finish(self) -> None:
        figures = self.figures
        await asyncio.to_thread(self.publisher.finish, WAIT)
        await self.caught_up()
        self.stop.set()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        figures.subscribers = len(self.followers)
        figures.refused = len(self.publisher.failures)
        for f in self.followers:
            figures.received += f.events
            figures.resets += len(f.resets)
            figures.duplicated += f.disorder
            figures.failed_streams += f.error_events
        await asyncio.to_thread(self.count_losses)

    def count_losses(self) -> None:
        """Published, lost and duplicated: each subscriber's counts against the history's."""
        figures = self.figures
        counts = self.history_counts()
        figures.published = sum(counts.values())
        for f in self.followers:
            for topic in f.topics:
                got, want = f.tally.get(topic, 0), counts.get(topic, 0)
                figures.lost += max(0, want - got)
                figures.duplicated += max(0, got - want)

    def close(self) -> None:
        self.stop.set()
        self.publisher.kill()
        for server in (self.a, self.b):
            server.close()


def run_phase(duration: float, subscribers: int, backend: str = "postgres") -> BroadcastFigures:
    """The phase on ``backend`` (``postgres`` or ``redis``), for about ``duration`` seconds
    (whole cycles, at least one). The ``redis`` one keeps the connection history in
    PostgreSQL too (the killed worker's rows are checked there)."""
    figures = BroadcastFigures()
    phase_class: type[Phase] = Phase
    if backend == "redis":
        from soak_broadcast_redis import RedisPhase

        phase_class = RedisPhase
    figures.engine = phase_class.engine
    bindir = find_binaries()
    if bindir is None:
        figures.fail("PostgreSQL server binaries (initdb, pg_ctl) not found: phase not run")
        return figures
    cluster = PostgresCluster(bindir)
    try:
        cluster.start()
        cluster.migrate("tests.settings_pg")
        asyncio.run(_run(phase_class, cluster, duration, subscribers, figures))
    except Exception as exc:
        figures.fail(f"{type(exc).__name__}: {exc}")
    finally:
        cluster.stop()
    return figures


async def _run(
    phase_class: type[Phase],
    cluster: PostgresCluster,
    duration: float,
    subscribers: int,
    figures: BroadcastFigures,
) -> None:
    started = time.monotonic()
    phase = await asyncio.to_thread(phase_class, cluster, subscribers, figures)
    try:
        await phase.start()
        log(
            f"broadcast: {subscribers} subscribers on 2 uvicorn workers (A pid {phase.a.pid}), "
            f"{phase.engine}, {duration:.0f} s"
        )
        while len(figures.failures) < 3 and (
            figures.cycles == 0 or time.monotonic() - started < duration
        ):
            figures.cycles += 1
            log(f"broadcast cycle {figures.cycles} ({time.monotonic() - started:.0f} s)")
            await phase.cycle()
        await phase.finish()
        # Tracebacks of the outage's log lines are expected; an error a request met is not.
        if "Exception in ASGI application" in phase.a.logs():
            figures.fail("a request of worker A failed")
    finally:
        with contextlib.suppress(Exception):
            phase.close()


def main(duration: float, subscribers: int, backends: Iterable[str]) -> list[BroadcastFigures]:
    """The phase on each of ``backends`` in turn, sharing ``duration`` evenly."""
    # The ids the subscribers start from are made with django_flosse's own IdFormat.
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    import django

    django.setup()
    chosen = list(backends)
    results = []
    for backend in chosen:
        figures = run_phase(duration / len(chosen), subscribers, backend)
        check_trends(figures)
        summary(figures)
        results.append(figures)
    return results
