"""The peers of the fan-out workloads (F1 in one process, F2 across processes).

Each is one app module under ``bench/apps/`` on uvicorn (uvloop, httptools), serving the
same broadcast at ``/fan`` and answering ``/publish`` (F1: the schedule, published inside
the server process) and ``/active`` (its subscribers). They are ``peers.Peer``s, so
``peers.Server`` starts, measures and stops them like every other peer.
"""

from __future__ import annotations

from dataclasses import dataclass

from peers import APPS_DIR, Peer

#: Subscribers a peer is run with at most in F1 (``max_subscribers``): the slower ones
#: would take minutes per size on a shared 2-core machine; their memory per subscriber
#: barely depends on N.
ALL = 10_000


@dataclass(frozen=True)
class FanPeer(Peer):
    module: str = ""  # the app module under bench/apps (its urlpatterns, or its ASGI app)
    fan: str = ""  # BENCH_FAN for bench_settings: ours | eventstream[-storage] | channels | ""
    backend: str | None = None  # ours: FLOSSE["BROADCAST_BACKEND"]
    engines: tuple[str, ...] = ()  # F2: what it shares across processes (postgres, redis)
    max_subscribers: int = ALL

    @property
    def path(self) -> str:
        return "/fan"

    def app(self) -> str:
        if self.impl == "raw":
            return "fan_raw:app"
        if self.impl == "sse-starlette":
            return "fan_starlette:app"
        if self.impl == "channels":
            return "fan_channels:application"
        return "django_asgi:application"

    def env(self) -> dict[str, str]:
        env = {"PYTHONPATH": str(APPS_DIR), "PYTHONUNBUFFERED": "1", "BENCH_FAN": self.fan}
        if self.impl not in ("raw", "sse-starlette"):
            env["DJANGO_SETTINGS_MODULE"] = "bench_settings"
            env["BENCH_URLCONF"] = self.module
        if self.impl == "ours":
            env["BENCH_FLOSSE_APP"] = "1"
            env["BENCH_BROADCAST_BACKEND"] = self.backend or "memory"
        return env

    @property
    def label(self) -> str:
        return self.note


def _peer(name: str, impl: str, module: str, note: str, **kwargs: object) -> FanPeer:
    return FanPeer(name, impl, "uvicorn", "async", "uvloop", note=note, module=module,
                   **kwargs)  # type: ignore[arg-type]  # fmt: skip


#: F1: every subscriber and the publisher in one server process.
F1_PEERS: list[FanPeer] = [
    _peer("raw-asgi", "raw", "fan_raw",
          "bare ASGI: one pre-encoded frame sent to every open stream (the limit)"),
    _peer("django-queue", "django", "fan_django",
          "async StreamingHttpResponse + hand-written asyncio.Queue per subscriber",
          max_subscribers=5_000),
    _peer("django-floor", "django", "fan_floor",
          "async StreamingHttpResponse, one future per idle subscriber, shared frames "
          "(the floor of a Django view, not a broadcaster to use)", max_subscribers=5_000),
    _peer("sse-starlette-queue", "sse-starlette", "fan_starlette",
          "EventSourceResponse + hand-written asyncio.Queue per subscriber",
          needs=("sse_starlette",), max_subscribers=5_000),
    _peer("eventstream", "eventstream", "fan_eventstream",
          "django-eventstream 5: its view, send_event, no storage",
          fan="eventstream", needs=("django_eventstream",), max_subscribers=5_000),
    _peer("eventstream-storage", "eventstream", "fan_eventstream",
          "django-eventstream 5 with DjangoModelStorage (reliable mode, SQLite)",
          fan="eventstream-storage", needs=("django_eventstream",), max_subscribers=1_000),
    _peer("channels", "channels", "fan_channels",
          "Channels 4: AsyncHttpConsumer + group_send, InMemoryChannelLayer(capacity=1000)",
          fan="channels", needs=("channels",), max_subscribers=1_000),
    _peer("ours-memory", "ours", "fan_ours",
          "subscribe() + abroadcast(), memory backend, observability on",
          fan="ours", backend="memory"),
]  # fmt: skip

#: F2: two server processes, the publisher in a third (``apps/fan_publisher.py``).
#: django-eventstream's storage is the run's SQLite file, not PostgreSQL: each of its open
#: streams holds a database connection (its reads run on the request's thread, whose
#: connection Django closes when the response ends), so 1,000 subscribers exceed
#: PostgreSQL's default max_connections (100): only 100 ever registered.
F2_PEERS: list[FanPeer] = [
    _peer("ours-postgres", "ours", "fan_ours",
          "subscribe() + abroadcast(), database backend on PostgreSQL (LISTEN/NOTIFY)",
          fan="ours", backend="database", engines=("postgres",), needs=("psycopg",)),
    _peer("ours-redis", "ours", "fan_ours",
          "subscribe() + abroadcast(), redis backend (Redis Streams)",
          fan="ours", backend="redis", engines=("redis",), needs=("redis",)),
    _peer("eventstream-redis", "eventstream", "fan_eventstream",
          "django-eventstream 5: EVENTSTREAM_REDIS + DjangoModelStorage (SQLite file)",
          fan="eventstream-storage", engines=("redis",),
          needs=("django_eventstream", "redis")),
    _peer("channels-redis", "channels", "fan_channels",
          "Channels 4: channels_redis RedisChannelLayer(capacity=1000, max_connections)",
          fan="channels", engines=("redis",), needs=("channels_redis",)),
]  # fmt: skip

#: The row every F1 ratio is taken against.
LIMIT = "raw-asgi"
#: The least any Django view pays per subscriber and event (a reference, like the limit:
#: not one of the peers ours must beat).
FLOOR = "django-floor"


def fan_peer_named(name: str) -> FanPeer:
    for peer in F1_PEERS + F2_PEERS:
        if peer.name == name:
            return peer
    known = ", ".join(p.name for p in F1_PEERS + F2_PEERS)
    raise SystemExit(f"unknown fan-out peer {name!r}; known: {known}")
