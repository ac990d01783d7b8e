from __future__ import annotations

from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class FlosseConfig(AppConfig):
    name = "django_flosse"
    label = "django_flosse"
    verbose_name = _("Server-sent event streams")
    default_auto_field = "django.db.models.BigAutoField"
