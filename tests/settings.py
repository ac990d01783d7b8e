"""Minimal Django settings for the test suite.

The database is a file, not ``:memory:``: tests start real uvicorn/gunicorn processes
(``tests/support/servers.py``) that must see the same tables. The first process that imports this
module picks the file and exports it in ``FLOSSE_TEST_DB``, so the servers it starts inherit it
and two test runs on one machine never share a database.
"""

from __future__ import annotations

import os
import tempfile

_DB_FILE = os.environ.setdefault(
    "FLOSSE_TEST_DB",
    os.path.join(tempfile.gettempdir(), f"django-flosse-test-{os.getpid()}.sqlite3"),
)

SECRET_KEY = "django-flosse-tests-not-a-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "django.contrib.admin",
    "django.contrib.messages",
    "django_flosse",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

ROOT_URLCONF = "tests.urls"

# The connection history writer runs in the servers the tests start (so the dashboard sees
# their streams), not in the test process, where a background thread writing rows would
# outlive the test that made them. Persistence tests turn it on with override_settings.
FLOSSE = {"PERSISTENCE": os.environ.get("FLOSSE_TEST_SERVER") == "1"}

# TEST NAME == NAME: pytest-django creates and migrates this very file, so server processes
# started by the tests (which open NAME) see the test tables. WAL and a busy timeout let them
# write while the test process reads.
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": _DB_FILE,
        "TEST": {"NAME": _DB_FILE},
        "OPTIONS": {
            "timeout": 20,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL;",
        },
    }
}

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
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

USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
