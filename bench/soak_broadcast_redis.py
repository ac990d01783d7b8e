"""The broadcast phase's Redis cycles: Redis SIGKILLed and started again empty in each cycle
(``python bench/soak.py --broadcast-backend redis``).

The cycles of ``soak_broadcast.Phase`` (a worker killed, drops, then the engine restarted)
on the ``redis`` backend (``tests/support/redis.py``'s server: no persistence), with the
connection history in PostgreSQL (the killed worker's rows must close as ``lost``). Step 3
SIGKILLs Redis, which takes its history with it, and starts it again on the same port once
the publisher has failed and every stream has had a heartbeat. When it is back each
worker's reader finds a new epoch and ends its streams; every subscriber comes back with an
id of the old life, which cannot be placed: it must get exactly one ``flosse-reset`` per
restart, then every later event, once.

What a subscriber could not get is counted apart, as unrecoverable, not as lost: the events
between its last one and its reset (the tail of the old life that died with Redis before
it was delivered, and the head of the new life published before its stream was back). The
reset is the promise for those: reload. Everything else is judged as on PostgreSQL: an event
skipped within one life is lost, one that comes twice or out of order is duplicated, and at
the end every subscriber has each topic's last event.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections import Counter
from collections.abc import Callable

from soak_broadcast import Phase, until
from soak_broadcast_report import BroadcastFigures

from tests.support.fleet import TOPICS, Follower, start_id
from tests.support.postgres import PostgresCluster
from tests.support.redis import RedisServer, find_binary


class RedisPhase(Phase):
    engine = "Redis"
    recovery = "every subscriber reset and live"

    def __init__(self, cluster: PostgresCluster, subscribers: int, figures: BroadcastFigures):
        from django_flosse.broadcasting.backends.redis import EPOCH_KEY

        binary = find_binary()
        if binary is None:
            raise RuntimeError("redis-server not found: the Redis cycles need it")
        self.redis = RedisServer(binary).start()
        # A known epoch, so that the subscribers can start from an id of the first event.
        self.epoch = secrets.token_hex(4)
        try:
            with self.redis.client() as client:
                client.set(EPOCH_KEY, self.epoch)
            super().__init__(cluster, subscribers, figures)
        except BaseException:
            self.redis.stop()
            raise

    def backend_env(self) -> dict[str, str]:
        return {
            "FLOSSE_FAULTS_BACKEND": "redis",
            "FLOSSE_FAULTS_HISTORY": "postgres",
            **self.redis.env(),
        }

    def first_id(self, topics: tuple[str, ...]) -> str:
        from django_flosse.broadcasting.backends.redis import _format_id

        return start_id("r" + self.epoch, topics, (0, 0), _format_id)

    def last_published(self) -> dict[str, int]:
        """Per topic, the publisher's number of its last event published so far."""
        last = {topic: TOPICS.index(topic) - len(TOPICS) for topic in TOPICS}
        for data in list(self.publisher.oks):
            topic, _, name = data.partition(":")
            last[topic] = max(last[topic], int(name.rpartition("-")[2]))
        return last

    def target(self) -> Callable[[Follower], bool]:
        last = self.last_published()
        return lambda f: all(f.last_index(t) >= last[t] for t in f.topics)

    async def restart_engine(self) -> None:
        figures = self.figures
        resets = {f: len(f.resets) for f in self.followers}
        back = await self.outage(self.redis.kill, self.redis.start)

        def reset_then_live(f: Follower) -> bool:
            return len(f.resets) > resets[f] and f.events > f.resets[-1]

        if await until(lambda: all(reset_then_live(f) for f in self.followers)) is None:
            figures.fail(
                f"no reset and live event after the restart: {self.behind(reset_then_live)}"
            )
        else:
            figures.recovered.append(time.monotonic() - back)
        await self.caught_up()
        got = Counter(len(f.resets) - resets[f] for f in self.followers)
        figures.restart_resets.append(dict(got))
        if set(got) != {1}:
            figures.fail(f"resets per subscriber in a restart: {dict(got)} (one each expected)")

    def count_losses(self) -> None:
        """Lost: skipped within a life, or short of a topic's last event at the end."""
        figures = self.figures
        last = self.last_published()
        figures.published = len(self.publisher.oks)
        for f in self.followers:
            figures.lost += f.gaps
            figures.unrecoverable += f.unrecoverable
            for topic in f.topics:
                figures.lost += max(0, (last[topic] - f.last_index(topic)) // len(TOPICS))

    def close(self) -> None:
        try:
            super().close()
        finally:
            with contextlib.suppress(Exception):
                self.redis.stop()
