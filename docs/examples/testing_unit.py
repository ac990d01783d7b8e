"""A unit test that calls a stream view directly, without URLs or middleware."""

from django.contrib.auth.models import AnonymousUser
from django.test import RequestFactory

from django_flosse.testing import collect_events

from .quickstart import job_progress  # your view


def test_job_progress_unit():
    request = RequestFactory().get("/jobs/7/progress/")
    request.user = AnonymousUser()  # no middleware ran: set what permission classes read
    response = job_progress(request, job_id=7)

    events = collect_events(response, max_events=10)

    assert events[-1].event == "done"
