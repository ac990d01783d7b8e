"""``settings_broadcast`` on the PostgreSQL cluster of ``tests/support/postgres.py``."""

from __future__ import annotations

from tests import settings_pg
from tests.reliability.settings_broadcast import *  # noqa: F403

DATABASES = settings_pg.DATABASES
