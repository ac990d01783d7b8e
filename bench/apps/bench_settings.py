"""Django settings shared by every Django-based peer of the benchmark.

One settings module for plain Django, django-flosse 0.2.0 and ours, so that the only
difference between them is the view. Environment variables (set by ``bench/run.py``):

``BENCH_URLCONF``
    The peer's module (views and ``urlpatterns``): ``plain_django``, ``flosse020`` or ``ours``.
``BENCH_FLOSSE_APP``
    ``1``: add ``django_flosse`` to ``INSTALLED_APPS`` (ours; its models need migrations).
``BENCH_OBSERVABILITY``
    ``off``: ``FLOSSE = {"OBSERVERS": [], "PERSISTENCE": False}`` (no metrics, no logs, no
    connection history); anything else: the defaults, everything on.
``BENCH_DB``
    The SQLite file (ours is migrated into it before its servers start).
``BENCH_FAN``
    The fan-out peers (``fanout.py``): ``eventstream`` or ``eventstream-storage`` add
    ``django_eventstream`` (the latter with its ``DjangoModelStorage``); ``channels`` sets
    ``CHANNEL_LAYERS``; ``ours`` sets ``FLOSSE["BROADCAST_BACKEND"]`` from
    ``BENCH_BROADCAST_BACKEND``.
``BENCH_PG_PORT``, ``BENCH_REDIS_URL``
    Across processes (F2): the PostgreSQL database on 127.0.0.1 (the default database
    instead of SQLite) and the Redis server the peers share.

The middleware is ``startproject``'s, as in a real project: it costs every peer the same per
request and nothing per event.
"""

from __future__ import annotations

import os

SECRET_KEY = "django-flosse-bench-not-a-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "django.contrib.messages",
]
if os.environ.get("BENCH_FLOSSE_APP") == "1":
    INSTALLED_APPS.append("django_flosse")

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

ROOT_URLCONF = os.environ.get("BENCH_URLCONF", "plain_django")

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("BENCH_DB", ":memory:"),
    }
}

if os.environ.get("BENCH_PG_PORT"):
    DATABASES["default"] = {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": "127.0.0.1",
        "PORT": os.environ["BENCH_PG_PORT"],
        "NAME": os.environ.get("BENCH_PG_NAME", "flosse"),
        "USER": os.environ.get("BENCH_PG_USER", "postgres"),
    }

USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

FLOSSE: dict[str, object] = {}
if os.environ.get("BENCH_OBSERVABILITY") == "off":
    FLOSSE.update({"OBSERVERS": [], "PERSISTENCE": False})

_FAN = os.environ.get("BENCH_FAN", "")
_REDIS_URL = os.environ.get("BENCH_REDIS_URL")
if _FAN == "ours":
    FLOSSE["BROADCAST_BACKEND"] = os.environ.get("BENCH_BROADCAST_BACKEND", "memory")
    if _REDIS_URL:
        FLOSSE["BROADCAST_REDIS_URL"] = _REDIS_URL
if _FAN.startswith("eventstream"):
    INSTALLED_APPS.append("django_eventstream")
    if _FAN == "eventstream-storage":
        EVENTSTREAM_STORAGE_CLASS = "django_eventstream.storage.DjangoModelStorage"
        if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
            # Its own file (fanrun.py): every open stream reads it after each event while
            # a publisher writes, which SQLite's default journal refuses ("database is
            # locked"); write-ahead logging lets readers and the writer overlap.
            DATABASES["default"]["OPTIONS"] = {
                "init_command": "PRAGMA journal_mode=WAL;", "timeout": 30,
            }  # fmt: skip
    if _REDIS_URL:
        _host, _port = _REDIS_URL.split("//", 1)[1].split("/", 1)[0].split(":")
        EVENTSTREAM_REDIS = {"host": _host, "port": int(_port), "db": 0}
if _FAN == "channels":
    # capacity above the burst: a full channel makes group_send drop silently.
    CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels.layers.InMemoryChannelLayer",
                    "CONFIG": {"capacity": 1000}},
    }  # fmt: skip
    if _REDIS_URL:
        # redis-py's async pool holds at most 100 connections unless told otherwise.
        CHANNEL_LAYERS["default"] = {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [{"address": _REDIS_URL, "max_connections": 20_000}],
                       "capacity": 1000},
        }  # fmt: skip

# Connection logs (ours: two lines per connection, never one per event) go to the server's
# stderr, which run.py keeps in a file: a deployment writes them somewhere too.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(levelname)s %(name)s %(message)s"}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        "django_flosse": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
    },
}
