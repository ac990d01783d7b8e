"""ASGI entry point of the demo: `make demo` serves it with uvicorn."""

from __future__ import annotations

import os

from django.conf import settings
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo.settings")

application = get_asgi_application()

if settings.DEBUG:
    # uvicorn serves no files: in DEBUG, Django's staticfiles handler answers /static/ (as
    # runserver does), with no collectstatic step. A deployment uses whitenoise or its proxy.
    application = ASGIStaticFilesHandler(application)
