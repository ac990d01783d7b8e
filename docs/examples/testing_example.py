"""Tests for the quick start's streams, with Django's test client and django_flosse.testing.

Collected by pytest with pytest-django (the `client` and `async_client` fixtures), against a
URLconf that includes the quick start's urlpatterns.
"""

from django.urls import reverse

from django_flosse.testing import acollect_events, collect_events


def test_job_progress(client):
    response = client.get(reverse("job-progress", args=[7]))
    assert response.status_code == 200

    # The job sends six events and ends: we get all six, well before max_events.
    events = collect_events(response, max_events=10)

    assert [event.event for event in events] == ["progress"] * 5 + ["done"]
    assert [event.json()["percent"] for event in events[:5]] == [0, 25, 50, 75, 100]
    assert events[-1].json() == {"job": 7}
    assert events[0].retry == 2000  # the stream's retry: frame


async def test_server_time(async_client):
    response = await async_client.get(reverse("server-time"))

    # An endless stream: stop after two events. The stream is then closed as if the
    # client went away, so the view's cleanup has run when this returns.
    events = await acollect_events(response, max_events=2, timeout=5)

    assert [event.event for event in events] == ["time", "time"]
    assert events[0].json()["now"].endswith("Z")
