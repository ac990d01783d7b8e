"""The shipped monitoring (``monitoring/``): Prometheus rules and the Grafana dashboard.

The rules pass ``promtool check rules`` and their unit tests (``promtool test rules``: each
alert fires on the series that should fire it and not on a near miss). Every alert has a
summary and a runbook section in ``docs/operations.md``. Every query of the dashboard and of
the rules is evaluated by a real Prometheus that scrapes a real server which has streamed,
failed, refused and broadcast: a query error, or a metric name the server does not export,
fails the test.
"""

from __future__ import annotations

import json
import re
import subprocess
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.support.observe import wait_until
from tests.support.prometheus import DASHBOARD, RULE_TESTS, RULES, Prometheus, require
from tests.support.servers import HOST, REPO_ROOT, LiveServer
from tests.support.wire import raw_open, raw_read_until, raw_request, rst_close

pytestmark = pytest.mark.timeout(240)

OPERATIONS = REPO_ROOT / "docs" / "operations.md"
METRICS_PATH = "/flosse/metrics/"


def _rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def _alerts() -> list[dict[str, Any]]:
    return [rule for rule in _rules() if "alert" in rule]


def _panel_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]


def _concrete(expr: str) -> str:
    """A panel's query as Grafana sends it: every stream, a one-minute rate window."""
    return expr.replace("$stream", ".*").replace("$__rate_interval", "1m")


# ------------------------------------------------------------------ promtool


def test_the_rules_pass_promtool_check() -> None:
    done = subprocess.run(
        [require("promtool"), "check", "rules", str(RULES)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in done.stdout


def test_the_rules_pass_their_unit_tests() -> None:
    done = subprocess.run(
        [require("promtool"), "test", "rules", str(RULE_TESTS)],
        capture_output=True,
        text=True,
        cwd=RULE_TESTS.parent,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_alert_is_unit_tested_firing() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert fired == {alert["alert"] for alert in _alerts()}


def test_every_alert_has_a_summary_and_a_runbook_section() -> None:
    headings = {
        line.lstrip("#").strip().lower()
        for line in OPERATIONS.read_text().splitlines()
        if line.startswith("### ")
    }
    for alert in _alerts():
        annotations = alert["annotations"]
        assert annotations["summary"] and annotations["description"], alert["alert"]
        anchor = annotations["runbook"].rpartition("#")[2]
        assert anchor == alert["alert"].lower()
        assert anchor in headings, f"docs/operations.md has no section for {alert['alert']}"


def test_the_dashboard_is_importable_grafana_json() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert variables == {"datasource", "stream"}


# ------------------------------------------------------------------ a real Prometheus


def _post(server: LiveServer, path: str, body: bytes) -> None:
    request = urllib.request.Request(server.url + path, data=body, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


def _last_id(raw: bytes) -> str:
    return re.findall(rb"id: (\S+)", raw)[-1].decode()


@pytest.fixture(scope="module")
def scraped() -> Iterator[tuple[Prometheus, LiveServer]]:
    """A server that has done everything the dashboard draws, and a Prometheus scraping it."""
    require("prometheus")
    server = LiveServer("uvicorn", env={"DJANGO_SETTINGS_MODULE": "tests.settings_monitoring"})
    server.start()
    prometheus = Prometheus(f"{HOST}:{server.port}", METRICS_PATH)
    held: list[Any] = []
    try:
        assert raw_request(server, "/obs/count/?n=3")[0] == 200  # completed
        assert raw_request(server, "/obs/fails/")[0] == 200  # error
        assert raw_request(server, "/obs/forbidden/")[0] == 403  # forbidden
        hold = raw_open(server.port, "/obs/held/")
        held.append(hold)
        raw_read_until(hold, b"event: tick", 10)
        assert raw_request(server, "/obs/held/")[0] == 503  # stream_limit
        # Broadcast: live deliveries (lag), a reset, a replay.
        subscriber = raw_open(server.port, "/broadcast/async/mon/")
        held.append(subscriber)
        raw_read_until(subscriber, b": keep-alive", 10)  # subscribed (heartbeat 1 s)
        for n in range(3):
            _post(server, "/broadcast/publish/mon/", f"event {n}".encode())
        received = raw_read_until(subscriber, b"data: event 2", 10)
        first_id = re.findall(rb"id: (\S+)", received)[0].decode()
        reset = raw_open(server.port, "/broadcast/async/mon/", {"Last-Event-ID": "bogus"})
        raw_read_until(reset, b"event: flosse-reset", 10)
        rst_close(reset)
        replay = raw_open(server.port, "/broadcast/async/mon/", {"Last-Event-ID": first_id})
        raw_read_until(replay, b"data: event 2", 10)
        rst_close(replay)
        prometheus.start()
        yield prometheus, server
    finally:
        for sock in held:
            rst_close(sock)
        prometheus.stop()
        server.stop()


def _scraped_enough(prometheus: Prometheus) -> bool:
    up = prometheus.vector('up{job="django-flosse"}')
    # Rates need two samples; recording rules a first evaluation after them.
    return (
        bool(up)
        and up[0]["value"][1] == "1"
        and bool(prometheus.vector("count_over_time(flosse_connections_active[1m]) >= 3"))
        and bool(prometheus.vector("stream:flosse_connections_active:sum"))
    )


def test_every_dashboard_and_rule_query_evaluates(scraped: tuple[Prometheus, LiveServer]) -> None:
    prometheus, _server = scraped
    assert wait_until(lambda: _scraped_enough(prometheus), timeout=60), prometheus.logs()
    exported = prometheus.metric_names()
    recorded = {rule["record"] for rule in _rules() if "record" in rule}
    queries = [(f"panel {title!r}", _concrete(e)) for title, e in _panel_queries()]
    queries += [(rule.get("alert") or rule["record"], rule["expr"]) for rule in _rules()]
    for where, expr in queries:
        answer = prometheus.query(expr)
        assert answer["status"] == "success", (where, expr, answer)
        assert not answer.get("warnings"), (where, expr, answer)
        for name in re.findall(r"[a-z_:]*flosse_[a-z_:0-9]*", expr):
            known = recorded if ":" in name else exported
            assert name in known, f"{where} names {name}, which nothing exports or records"


def test_the_dashboard_shows_what_the_server_did(scraped: tuple[Prometheus, LiveServer]) -> None:
    prometheus, _server = scraped
    assert wait_until(lambda: _scraped_enough(prometheus), timeout=60), prometheus.logs()

    def by(expr: str, label: str) -> dict[str, float]:
        return {s["metric"].get(label, ""): float(s["value"][1]) for s in prometheus.vector(expr)}

    active = by("sum by (stream) (flosse_connections_active)", "stream")
    assert active["obs.held"] == 1
    assert active["tests.broadcast_async"] >= 1
    closed = by('sum by (reason) (flosse_connections_closed_total{stream=~".*"})', "reason")
    assert closed["completed"] >= 1 and closed["error"] >= 1
    rejected = by("sum by (reason) (flosse_connections_rejected_total)", "reason")
    assert rejected["forbidden"] >= 1 and rejected["stream_limit"] >= 1
    delivered = by("sum by (stream) (flosse_broadcast_delivered_total)", "stream")
    assert delivered["tests.broadcast_async"] >= 3 + 2  # live, then the replay
    assert by("sum(flosse_broadcast_resets_total)", "")[""] >= 1
    assert by("sum(flosse_broadcast_lag_seconds_count)", "")[""] >= 3


def test_increase_counts_the_first_error_after_a_start() -> None:
    """The series are at 0 before anything happens, so Prometheus has a starting sample and
    ``increase()`` sees the very first error of a fresh server (it would see nothing if the
    series appeared at its first increment)."""
    require("prometheus")
    server = LiveServer("uvicorn", env={"DJANGO_SETTINGS_MODULE": "tests.settings_monitoring"})
    server.start()
    prometheus = Prometheus(f"{HOST}:{server.port}", METRICS_PATH)
    try:
        prometheus.start()
        series = 'flosse_connections_closed_total{stream="obs.fails", reason="error"}'
        # Two scrapes at zero before the error.
        assert wait_until(
            lambda: bool(prometheus.vector(f"count_over_time({series}[1m]) >= 2")), timeout=60
        ), prometheus.logs()
        assert prometheus.vector(f"max_over_time({series}[1m])")[0]["value"][1] == "0"
        assert raw_request(server, "/obs/fails/")[0] == 200  # the first error
        first = f"increase({series}[1m])"
        assert wait_until(
            lambda: any(float(s["value"][1]) >= 1 for s in prometheus.vector(first)), timeout=60
        ), prometheus.vector(first)
    finally:
        prometheus.stop()
        server.stop()
