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

USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

if os.environ.get("BENCH_OBSERVABILITY") == "off":
    FLOSSE = {"OBSERVERS": [], "PERSISTENCE": False}

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
