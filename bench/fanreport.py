"""The fan-out part of the report: the F1 and F2 tables and the goals of issue 14."""

from __future__ import annotations

from typing import Any

from fanpeers import FLOOR, LIMIT
from report import _fmt, _ratio, _x

Goal = tuple[str, str, bool | None]


def f1_rows(fan: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """peer -> subscribers (as text) -> what was measured."""
    return {row["peer"]: row.get("sizes", {}) for row in fan.get("F1", [])}


def _get(rows: dict[str, dict[str, dict[str, Any]]], peer: str, n: int, key: str) -> Any:
    return rows.get(peer, {}).get(str(n), {}).get(key)


HEAD = [
    "| peer | subscribers | spaced p50 ms | spaced p99 ms | burst p99 ms | burst deliveries/s "
    "| x limit | server CPU ms / 1,000 deliveries | KiB / idle subscriber | lost | duplicates "
    "| subscribers with loss / duplicates | exactly once |",
    "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
]


def _line(name: str, n: str, m: dict[str, Any], limit_rate: float | None) -> str:
    if "skipped" in m:
        return f"| `{name}` | {int(n):,} | {m['skipped']} |" + " |" * 10
    if "error" in m:
        return f"| `{name}` | {int(n):,} | FAILED: {m['error']} |" + " |" * 10
    rate = m.get("deliveries_per_s")
    once = "yes" if m["exactly_once"] else "**NO**"
    if m.get("timed_out"):
        once += f" (still receiving after {m.get('timeout', 0):g} s: the rest counts as lost)"
    return (
        f"| `{name}` | {int(n):,} | {_fmt(m['spaced_p50_ms'])} | {_fmt(m['spaced_p99_ms'])} "
        f"| {_fmt(m['burst_p99_ms'])} | {_fmt(rate)} | {_x(_ratio(rate, limit_rate))} "
        f"| {_fmt(m['cpu_ms_per_1000_deliveries'])} "
        f"| {_fmt(m['rss_idle_kib_per_subscriber'])} | {m['lost']:,} | {m['duplicates']:,} "
        f"| {m['subscribers_with_loss']:,} / {m['subscribers_with_duplicates']:,} | {once} |"
    )


def markdown(fan: dict[str, Any]) -> list[str]:
    if not fan:
        return []
    sizes = fan["sizes"]
    lines = [
        "", "## Fan-out (issue 14)", "",
        f"One topic, N idle subscribers; {sizes['spaced']} events {sizes['interval'] * 1e3:g} ms "
        f"apart, then {sizes['burst']} back to back. Latency: publish to the last "
        "subscriber's copy (CLOCK_MONOTONIC in the event, read again by the client). "
        "Deliveries/s: N x burst over the time from the burst's first publish to the last copy "
        f"of its last event; x limit: to `{LIMIT}` at the same N in the same run.",
        "", "### F1: one process, the publisher inside it", "", *HEAD,
    ]  # fmt: skip
    rows = f1_rows(fan)
    for row in fan.get("F1", []):
        if row.get("status") == "skipped":
            lines.append(f"| `{row['peer']}` | skipped: {row['reason']} |" + " |" * 11)
            continue
        for n, m in row["sizes"].items():
            lines.append(_line(row["peer"], n, m, _get(rows, LIMIT, int(n), "deliveries_per_s")))
    if fan.get("F2") or fan.get("F2_skipped"):
        lines += ["", f"### F2: two server processes, the publisher in a third "
                  f"({sizes['across']:,} subscribers)", ""]  # fmt: skip
        if fan.get("F2_skipped"):
            lines.append(f"Skipped: {fan['F2_skipped']}.")
        else:
            lines += HEAD
            ours = _get(rows, "ours-memory", sizes["across"], "deliveries_per_s")
            for row in fan["F2"]:
                if row.get("status") == "skipped":
                    lines.append(f"| `{row['peer']}` | skipped: {row['reason']} |" + " |" * 11)
                    continue
                lines.append(_line(row["peer"], str(sizes["across"]), row["result"], None))
            lines += ["", f"x limit is left out in F2; ours in one process (`ours-memory`, "
                      f"{sizes['across']:,} subscribers): {_fmt(ours)} deliveries/s."]  # fmt: skip
    lines += ["", "### Goals of issue 14", "", "| goal | measured | holds |", "|---|---|---|"]
    for goal, measured, holds in goals(fan):
        mark = "-" if holds is None else ("yes" if holds else "**no**")
        lines.append(f"| {goal} | {measured} | {mark} |")
    lines += ["", *NOTES]
    return lines


NOTES = [
    "What the fan-out columns mean:",
    "",
    '- Every peer broadcasts `event: tick` with data `{"i": n, "t": ns}`; ours adds an '
    "`id:` line (the resume position), django-eventstream an `id:` line, a padding comment and "
    "`stream-open`. The client counts only the data lines, per subscriber and event: lost = "
    "(subscriber, event) pairs never received, duplicates = extra copies.",
    "- server CPU: user + system seconds of the server process(es) from the first publish to "
    "the last copy collected, per 1,000 copies received.",
    "- KiB / idle subscriber: (RSS with the N subscribers registered - RSS before) / N.",
    "- The slower peers run up to 1,000 or 5,000 subscribers (a larger N takes minutes per "
    "size here); a size left out says so in its row.",
]


def _spaced(rows: dict[str, Any], peer: str, n: int) -> tuple[float | None, float | None]:
    return _get(rows, peer, n, "spaced_p50_ms"), _get(rows, peer, n, "spaced_p99_ms")


def goals(fan: dict[str, Any]) -> list[Goal]:
    rows = f1_rows(fan)
    found: list[Goal] = []
    sizes = [int(n) for n in rows.get("ours-memory", {})]
    for n in (1_000, 5_000):
        if n not in sizes:
            continue
        ours = _get(rows, "ours-memory", n, "deliveries_per_s")
        limit = _get(rows, LIMIT, n, "deliveries_per_s")
        django = _get(rows, "django-queue", n, "deliveries_per_s")
        r = _ratio(ours, limit)
        found.append((f"F1 {n:,}: burst deliveries/s ≥ 0.8x the raw limit", _x(r),
                      None if r is None else r >= 0.8))  # fmt: skip
        r = _ratio(ours, django)
        found.append((f"F1 {n:,}: burst deliveries/s ahead of `django-queue`", _x(r),
                      None if r is None else r > 1.0))  # fmt: skip
    measured = [
        m for row in fan.get("F1", []) + fan.get("F2", []) if row.get("impl") == "ours"
        for m in (row.get("sizes", {}).values() if "sizes" in row else [row.get("result", {})])
        if "skipped" not in m
    ]  # fmt: skip
    if measured:
        bad = sum(1 for m in measured if not m.get("exactly_once"))
        found.append(("ours: every subscriber gets every event exactly once, every workload",
                      f"{len(measured) - bad} of {len(measured)} runs", bad == 0))  # fmt: skip
    if 1_000 in sizes:
        p50, p99 = _spaced(rows, "ours-memory", 1_000)
        l50, l99 = _spaced(rows, LIMIT, 1_000)
        r50, r99 = _ratio(p50, l50), _ratio(p99, l99)
        holds = None if r50 is None or r99 is None else r50 <= 1.5 and r99 <= 1.5
        found.append(("F1 1,000: spaced latency p50 and p99 ≤ 1.5x the raw limit's",
                      f"p50 {_x(r50)}, p99 {_x(r99)}", holds))  # fmt: skip
        f50, f99 = _spaced(rows, FLOOR, 1_000)
        if f50 is not None:
            # Not a goal: how near the limit a Django view can get at all (see fan_floor.py).
            floor = f"p50 {_x(_ratio(f50, l50))}, p99 {_x(_ratio(f99, l99))}"
            ours = f"ours / floor p50 {_x(_ratio(p50, f50))}, p99 {_x(_ratio(p99, f99))}"
            what = f"F1 1,000: spaced latency of `{FLOOR}` against the raw limit's (context)"
            found.append((what, f"{floor}; {ours}", None))
        others = [p for p in rows if p not in ("ours-memory", LIMIT, FLOOR)]
        worse = [
            p for p in others
            if (_spaced(rows, p, 1_000)[0] or float("inf")) <= (p50 or 0)
            or (_spaced(rows, p, 1_000)[1] or float("inf")) <= (p99 or 0)
        ]  # fmt: skip
        found.append(("F1 1,000: spaced latency p50 and p99 below every peer's",
                      "beaten by: " + (", ".join(f"`{p}`" for p in worse) or "none"),
                      None if p50 is None else not worse))  # fmt: skip
    top = max(sizes, default=0)
    if top:
        mine = _get(rows, "ours-memory", top, "rss_idle_kib_per_subscriber")
        # The plain-Django peer at the largest N it ran with (its KiB barely depend on N).
        django = rows.get("django-queue", {})
        measured_n = [int(n) for n, m in django.items() if "rss_idle_kib_per_subscriber" in m]
        their_n = max(measured_n, default=top)
        theirs = _get(rows, "django-queue", their_n, "rss_idle_kib_per_subscriber")
        once = _get(rows, "ours-memory", top, "exactly_once")
        found.append((f"F1 {top:,}: held by one process, every event to every subscriber",
                      "yes" if once else "no", bool(once)))  # fmt: skip
        found.append((f"F1 {top:,}: KiB per idle subscriber ≤ `django-queue`'s (at {their_n:,})",
                      f"{_fmt(mine)} vs {_fmt(theirs)} KiB",
                      None if mine is None or theirs is None else mine <= theirs))  # fmt: skip
    f2 = {row["peer"]: row.get("result", {}) for row in fan.get("F2", [])}
    across = fan["sizes"]["across"]
    one_process = _get(rows, "ours-memory", across, "deliveries_per_s")
    for ours in ("ours-postgres", "ours-redis"):
        if ours not in f2:
            continue
        rate = f2[ours].get("deliveries_per_s")
        for peer in ("eventstream-redis", "channels-redis"):
            r = _ratio(rate, f2.get(peer, {}).get("deliveries_per_s"))
            found.append((f"F2: `{ours}` deliveries/s ≥ 10x `{peer}`", _x(r),
                          None if r is None else r >= 10))  # fmt: skip
        r = _ratio(one_process, rate)
        found.append((f"F2: `{ours}` within 2x of ours in one process (p99 burst "
                      f"{_fmt(f2[ours].get('burst_p99_ms'))} ms, spaced "
                      f"{_fmt(f2[ours].get('spaced_p99_ms'))} ms)",
                      f"one process / F2 = {_x(r)}", None if r is None else r <= 2))  # fmt: skip
    return found
