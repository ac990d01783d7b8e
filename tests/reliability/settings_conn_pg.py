"""``settings_conn`` on the PostgreSQL cluster of ``tests/support/postgres.py`` (``FLOSSE_PG_*``)."""

from __future__ import annotations

from tests import settings_pg
from tests.reliability.settings_conn import *  # noqa: F403

DATABASES = {"default": {**settings_pg.DATABASES["default"], "CONN_MAX_AGE": 600}}
