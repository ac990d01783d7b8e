"""WSGI entry point of the demo: `make demo-wsgi` serves it with gunicorn (gthread)."""

from __future__ import annotations

import os

from django.conf import settings
from django.contrib.staticfiles.handlers import StaticFilesHandler
from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo.settings")

application = get_wsgi_application()

if settings.DEBUG:
    # gunicorn serves no files: in DEBUG, Django's staticfiles handler answers /static/ (as
    # runserver does), with no collectstatic step. A deployment uses whitenoise or its proxy.
    application = StaticFilesHandler(application)
