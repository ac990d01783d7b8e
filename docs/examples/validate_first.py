"""Return 404 before streaming: look up in a plain view, stream from a decorated one."""

from django.contrib.auth import get_user_model
from django.shortcuts import get_object_or_404

from django_flosse import sse_stream


def user_activity(request, username):
    user = get_object_or_404(get_user_model(), username=username)  # a real 404
    return _activity_stream(request, user)


@sse_stream
def _activity_stream(request, user):
    yield ("user", {"username": user.username, "joined": user.date_joined})
