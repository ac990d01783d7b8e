"""The test project's URLs plus the views of the storm tests (``storm_views``)."""

from __future__ import annotations

from django.urls import path

from tests.reliability import storm_views
from tests.urls import urlpatterns as project_urls

urlpatterns = [
    *project_urls,
    path("storm/feed/<str:topic>/", storm_views.storm_feed),
    path("storm/report/", storm_views.storm_report),
]
