"""WSGI entry point of the Django peers (gunicorn gthread)."""

from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench_settings")

application = get_wsgi_application()
