"""The test side of ``storm_views``: waiting for a storm server to be idle again."""

from __future__ import annotations

from tests.support.observe import state, wait_until
from tests.support.servers import LiveServer
from tests.support.wire import get_json

#: Seconds a server may take to close every stream and expire its kept history pages.
IDLE_WITHIN = 30.0


def settle_idle(server: LiveServer) -> None:
    """Until every stream of ``server`` has closed (its clients have gone) and the history
    pages its backend keeps for resumes have expired (``base.KEEP_PAGES_SECONDS``), so
    that its memory can be compared with a baseline."""
    active = wait_until(lambda: state(server)["active"] == 0, IDLE_WITHIN, 0.1)
    assert active is not None, state(server)
    kept = wait_until(
        lambda: get_json(server, "/storm/report/")["kept_pages"] == 0, IDLE_WITHIN, 0.2
    )
    assert kept is not None, get_json(server, "/storm/report/")
