"""``settings_conn`` on the PostgreSQL cluster of ``tests/postgres.py`` (``FLOSSE_PG_*``)."""

from __future__ import annotations

import os

from tests.reliability.settings_conn import *  # noqa: F403

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": os.environ.get("FLOSSE_PG_HOST", "127.0.0.1"),
        "PORT": os.environ.get("FLOSSE_PG_PORT", "5432"),
        "NAME": os.environ.get("FLOSSE_PG_NAME", "flosse"),
        "USER": os.environ.get("FLOSSE_PG_USER", "postgres"),
        "CONN_MAX_AGE": 600,
    }
}
