"""Settings for the django-flosse demo (`make demo`). Local development only.

Environment variables (all optional):

- ``DEMO_DB``: path of the SQLite database (default ``example/db.sqlite3``); the tests
  point it at a temporary file.
- ``DEMO_LOG_LEVEL``: level of the console log (default ``INFO``).
- ``DEMO_DATABASE_URL``: ``postgresql://user@host:port/name`` to use PostgreSQL instead of
  SQLite (``make demo-cluster`` sets it).
- ``DEMO_BROADCAST_BACKEND``: ``FLOSSE["BROADCAST_BACKEND"]`` (default: the documented
  default, ``database``); ``DEMO_REDIS_URL``: the ``redis`` backend's server.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from urllib.parse import unquote, urlsplit

from demo.logconf import JSON_FORMATTER, configure_structlog

BASE_DIR = Path(__file__).resolve().parent.parent

# Demo only: this project never runs anywhere but 127.0.0.1.
SECRET_KEY = "django-insecure-flosse-demo-only"
DEBUG = True
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_flosse",
    "demo",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "demo.urls"
ASGI_APPLICATION = "demo.asgi.application"
WSGI_APPLICATION = "demo.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    }
]

# SQLite, the embedded default. WAL lets the streams' history writer and the pages read
# and write side by side; the timeout rides out the short write locks.
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DEMO_DB") or BASE_DIR / "db.sqlite3",
        "OPTIONS": {"init_command": "PRAGMA journal_mode=WAL;", "timeout": 20},
    }
}
if os.environ.get("DEMO_DATABASE_URL"):
    _pg = urlsplit(os.environ["DEMO_DATABASE_URL"])
    DATABASES["default"] = {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": _pg.hostname or "127.0.0.1",
        "PORT": str(_pg.port or 5432),
        "NAME": _pg.path.lstrip("/"),
        "USER": unquote(_pg.username or "postgres"),
        "PASSWORD": unquote(_pg.password or ""),
    }

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# Served in DEBUG by Django's staticfiles handler, wrapped around the application in
# asgi.py and wsgi.py: neither uvicorn nor gunicorn serves files, and no collectstatic.
STATIC_URL = "static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LOGIN_URL = "admin:login"

# django-flosse settings, merged over the documented defaults. The metrics view answers
# loopback clients and staff users by default, which is all a local demo needs.
FLOSSE: dict[str, object] = {
    "HEARTBEAT": 10,
}
# The broadcast page runs on the default backend, "database": here SQLite, polled every
# BROADCAST_POLL_INTERVAL (0.25 s). make demo-cluster picks PostgreSQL or Redis.
if os.environ.get("DEMO_BROADCAST_BACKEND"):
    FLOSSE["BROADCAST_BACKEND"] = os.environ["DEMO_BROADCAST_BACKEND"]
if os.environ.get("DEMO_REDIS_URL"):
    FLOSSE["BROADCAST_REDIS_URL"] = os.environ["DEMO_REDIS_URL"]

# --------------------------------------------------------------------------- logging
# JSON on the console, one object per line, for django-flosse's events (sse.connection.*)
# and for every stdlib logger (Django, uvicorn) alike: see demo/logconf.py.
configure_structlog()

# Python warnings (e.g. Django's "must consume ... iterators") as JSON log lines too.
logging.captureWarnings(True)

_LOG_LEVEL = os.environ.get("DEMO_LOG_LEVEL", "INFO").upper()

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": JSON_FORMATTER},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "json"},
    },
    "root": {"handlers": ["console"], "level": _LOG_LEVEL},
    "loggers": {
        # Django's own loggers propagate to the root. uvicorn installed plain-text handlers
        # on its loggers before Django was set up: replace them.
        "uvicorn": {"handlers": ["console"], "level": _LOG_LEVEL, "propagate": False},
        "uvicorn.error": {"handlers": [], "level": _LOG_LEVEL, "propagate": True},
        "uvicorn.access": {"handlers": ["console"], "level": _LOG_LEVEL, "propagate": False},
        # One line per SQL query is too much for a demo console.
        "django.db.backends": {"level": "WARNING"},
    },
}
