"""A worker dies (SIGKILL) holding hundreds of broadcast subscribers.

Two uvicorn workers on one PostgreSQL (the ``database`` backend, and the connection history
in the same database). ``DOOMED`` subscribers stream from the first worker, ``SURVIVING``
from the second, all of topics ``t1``, ``t2`` or both, async and sync views, while a
publisher process publishes without pause. The first worker is killed with SIGKILL: its
clients reconnect to the survivor with their last id (half with the ``Last-Event-ID``
header, half with ``?lastEventId=``), as browsers and pages do, and every subscriber ends
with every event of its topics once, in order, without a reset. The dead worker's history
rows are closed as ``lost`` by the survivor (``LOST_AFTER`` is 3 s in these settings).

500 subscribers die with the worker (``FLOSSE_FAULTS_DOOMED`` to change it): about 20 s on
two cores. ``make soak`` repeats it in every cycle of its broadcast phase.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from collections.abc import Callable

import pytest

from tests.support.broadcast_publisher import Publisher
from tests.support.fleet import (
    PATHS,
    SETTINGS,
    TOPICS,
    Follower,
    exactly_once,
    history_rows,
    servers_for,
    spread,
    start_id,
    table_history,
    topics_of,
    wait_for,
)
from tests.support.postgres import PostgresCluster
from tests.support.postgres import own_postgres_fixture as own_postgres_fixture  # the fixture
from tests.support.servers import LiveServer

pytestmark = [
    pytest.mark.server,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.timeout(240),
]

WAIT = 60.0  # seconds any one condition may take on a loaded machine (never reached)
DOOMED = int(os.environ.get("FLOSSE_FAULTS_DOOMED", "500"))
SURVIVING = 50


async def test_a_killed_worker_s_subscribers_resume_on_the_survivor_exactly(
    own_postgres: PostgresCluster,
    live_server_factory: Callable[..., LiveServer],
    figure: Callable[[str], None],
) -> None:
    env = {"DJANGO_SETTINGS_MODULE": SETTINGS, "FLOSSE_FAULTS_BACKEND": "database"}
    env.update(own_postgres.env())
    doomed, survivor = await servers_for(live_server_factory, env)
    process = f"{socket.gethostname()}:{doomed.pid}"
    followers = [
        Follower(path, topics_of(path), start_id("d", topics_of(path), 0, str), query=i % 2 == 1)
        for i, path in enumerate(spread(PATHS, DOOMED + SURVIVING))
    ]
    home = {f: doomed if i < DOOMED else survivor for i, f in enumerate(followers)}
    moved = followers[:DOOMED]

    killed: list[float] = []  # set just before the SIGKILL

    # By the test's own knowledge, not the process's exit status: the kernel closes the
    # dying worker's sockets before ``poll()`` sees it exit, so a client that reconnected in
    # between would try the dead port once (a third connection: failed once in ten runs).
    def route(f: Follower) -> int:
        return survivor.port if killed or home[f] is survivor else doomed.port

    stop = asyncio.Event()
    tasks = [asyncio.ensure_future(f.run(route, stop)) for f in followers]
    # At most 20 events a second: 550 subscribers parse them all in this process.
    publisher = Publisher(env, ",".join(TOPICS), "p", interval=0.05)
    try:
        streaming = await wait_for(lambda: all(len(f.received) >= 3 for f in followers), WAIT)
        assert streaming, [(f.path, len(f.received), f.errors) for f in followers][:5]
        # Its rows are written (the worker's writer flushes every second).
        written = await wait_for(
            lambda: history_rows(own_postgres.connect, process).get(None) == DOOMED, WAIT
        )
        assert written, history_rows(own_postgres.connect, process)
        before = {f: len(f.received) for f in moved}
        killed.append(time.monotonic())
        doomed.send_signal(signal.SIGKILL)
        await asyncio.to_thread(doomed.wait, WAIT)

        def resumed(f: Follower) -> bool:
            return f.connections >= 2 and len(f.received) > before[f] and f.statuses[-1] == 200

        back = await wait_for(lambda: all(resumed(f) for f in moved), WAIT)
        assert back, [(f.path, f.connections, f.errors) for f in moved if not resumed(f)][:5]
        recovery = time.monotonic() - killed[0]
        all_lost = await wait_for(
            lambda: history_rows(own_postgres.connect, process) == {"lost": DOOMED},
            WAIT,
            interval=0.2,
        )
        assert all_lost, history_rows(own_postgres.connect, process)
        lost_after = time.monotonic() - killed[0]
        await asyncio.to_thread(publisher.finish, WAIT)
        history, positions = await asyncio.to_thread(table_history, own_postgres.connect, TOPICS)
        last = {topic: events[-1] for topic, events in history.items()}

        def complete(f: Follower) -> bool:
            return all(last[t] in f.received for t in f.topics)

        done = await wait_for(lambda: all(complete(f) for f in followers), WAIT)
        assert done, [(f.path, f.port, len(f.received)) for f in followers if not complete(f)][:5]
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        publisher.kill()

    losses = duplicates = 0
    for f in followers:
        for topic in f.topics:
            missing, twice = exactly_once(f.datas(topic), history[topic])
            losses, duplicates = losses + missing, duplicates + twice
            assert f.datas(topic) == history[topic], (f.path, topic, missing, twice)
        assert f.resets == [], (f.path, f.resets)
    assert all(f.connections == 2 and f.port == survivor.port for f in moved)
    assert all(f.connections == 1 for f in followers[DOOMED:])
    for topic in TOPICS:
        assert positions[topic] == list(range(1, len(positions[topic]) + 1))

    figure(
        f"worker SIGKILL: {DOOMED} subscribers moved to the survivor with their last id "
        f"({SURVIVING} more stayed there), {sum(len(e) for e in history.values())} events "
        f"published, {sum(len(f.received) for f in followers)} received, {losses} lost, "
        f"{duplicates} duplicated, 0 resets; every moved subscriber streaming again "
        f"{recovery:.2f} s after the kill; its {DOOMED} history rows closed as lost after "
        f"{lost_after:.1f} s (LOST_AFTER 3 s)"
    )
