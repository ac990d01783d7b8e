"""``tests.settings_admin`` on the PostgreSQL cluster that ``tests/support/postgres.py`` starts.

The cluster's address comes from the environment (``FLOSSE_PG_*``), which the fixture
passes to the servers and commands it runs.
"""

from __future__ import annotations

import os

from tests.settings_admin import *  # noqa: F403

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": os.environ.get("FLOSSE_PG_HOST", "127.0.0.1"),
        "PORT": os.environ.get("FLOSSE_PG_PORT", "5432"),
        "NAME": os.environ.get("FLOSSE_PG_NAME", "flosse"),
        "USER": os.environ.get("FLOSSE_PG_USER", "postgres"),
    }
}
