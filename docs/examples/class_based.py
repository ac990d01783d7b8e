"""@sse_stream on a method of a class-based view."""

from django.views import View

from django_flosse import sse_stream


class NotificationsView(View):
    greeting = "welcome"

    @sse_stream(name="notifications")
    def get(self, request):
        yield ("greeting", {"text": self.greeting, "path": request.path})
