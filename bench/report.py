"""The benchmark's report: machine facts, the markdown table and the goals of issue 6."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from peers import BENCH_DIR, FLOSSE020_DIR, REFERENCE

PACKAGES = (
    "django-flosse", "Django", "asgiref", "uvicorn", "uvloop", "httptools", "h11", "gunicorn",
    "sse-starlette", "starlette", "anyio", "prometheus-client", "structlog", "psutil", "py-spy",
    "django-eventstream", "channels", "channels-redis", "redis", "psycopg",
)  # fmt: skip


def machine_facts(server_cpu: int | None, client_cpu: int | None) -> dict[str, Any]:
    models = [
        line.split(":", 1)[1].strip()
        for line in _read("/proc/cpuinfo").splitlines()
        if line.startswith("model name")
    ]
    model = models[0] if models else platform.processor() or "unknown"
    mem_kib = next(
        (int(line.split()[1]) for line in _read("/proc/meminfo").splitlines()
         if line.startswith("MemTotal")),
        0,
    )  # fmt: skip
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    flosse020 = next(
        (d.version for d in importlib.metadata.distributions(path=[str(FLOSSE020_DIR)])), None
    )
    versions["django-flosse (0.2.0 peer)"] = flosse020
    client_loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    return {
        "cpu_model": model,
        "cpus": os.cpu_count(),
        "memory_gib": round(mem_kib / 2**20, 1),
        "kernel": platform.release(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "packages": versions,
        "client_loop": client_loop,
        "pinning": (
            f"server on CPU {server_cpu}, client on CPU {client_cpu} (sched_setaffinity)"
            if server_cpu is not None
            else "none"
        ),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "commit": _git_commit(),
    }


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _git_commit() -> str | None:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=BENCH_DIR, capture_output=True,
            text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "django_flosse"], cwd=BENCH_DIR.parent,
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return head + (" + uncommitted changes in django_flosse/" if dirty else "")


# -- reading results ---------------------------------------------------------------------------


def _get(rows: dict[str, dict[str, Any]], peer: str, workload: str, key: str) -> float | None:
    value = rows.get(peer, {}).get(workload, {}).get(key)
    return float(value) if isinstance(value, (int, float)) else None


def _first_event(
    rows: dict[str, dict[str, Any]], side: dict[str, Any], peer: str, key: str
) -> float | None:
    """D: the side-by-side figure when there is one (see sidebyside.py), else the peer's own."""
    value = side.get("D", {}).get(peer, {}).get(key)
    return float(value) if isinstance(value, (int, float)) else _get(rows, peer, "D", key)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


# -- the markdown ------------------------------------------------------------------------------


def markdown(data: dict[str, Any]) -> str:
    rows = {r["peer"]: r for r in data["peers"]}
    sizes = data["sizes"]
    lines = [
        "# django-flosse benchmark",
        "",
        f"Run {data['started']} ({data['seconds']} s), sizes `{sizes['name']}`: "
        f"A = 1 stream x {sizes['a']:,} events, B = {sizes['b_streams']} streams x "
        f"{sizes['b_events']:,} events, C = {sizes['c']:,} idle connections, D = {sizes['d']} "
        f"sequential connections, flood = {sizes['flood_samples']} samples. "
        f"Ratios (xours) are to `{REFERENCE}` in the same run. Every figure comes from one run "
        "on a shared, noisy 2-core machine: compare ratios, not absolute times.",
        "",
        "## Results",
        "",
        "| peer | setup | same bytes | A events/s | A xours | A server CPU s/100k | "
        "B events/s | B xours | C KiB/conn | C all closed after (s) | C RSS after drop (MiB) | "
        "D median ms | D p99 ms | D xours | flooded/idle first event |",
        "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    ref_a = _get(rows, REFERENCE, "A", "events_per_s")
    ref_b = _get(rows, REFERENCE, "B", "events_per_s")
    side = data.get("side_by_side") or {}
    ref_d = _first_event(rows, side, REFERENCE, "median_ms")
    skipped = []
    for row in data["peers"]:
        name = row["peer"]
        if row.get("status") == "skipped":
            skipped.append(f"- `{name}`: {row.get('reason')}")
            continue
        if row.get("status") == "failed":
            skipped.append(f"- `{name}`: FAILED: {row.get('error')}")
        a = _get(rows, name, "A", "events_per_s")
        b = _get(rows, name, "B", "events_per_s")
        d = _first_event(rows, side, name, "median_ms")
        ident = row.get("identity", {})
        same = "yes" if ident.get("ok") else ("NO" if ident else "-")
        c = row.get("C", {})
        lines.append(
            f"| `{name}` | {row['label']}{'; ' + row['note'] if row.get('note') else ''} | {same} "
            f"| {_fmt(a)} | {_x(_ratio(a, ref_a))} "
            f"| {_fmt(_get(rows, name, 'A', 'server_cpu_s_per_100k'))} "
            f"| {_fmt(b)} | {_x(_ratio(b, ref_b))} "
            f"| {_fmt(c.get('kib_per_connection')) if c else 'n/a'} "
            f"| {_fmt(c.get('closed_after_s')) if c else 'n/a'} "
            f"| {_fmt(c.get('rss_after_mib')) if c else 'n/a'} "
            f"| {_fmt(d)} | {_fmt(_first_event(rows, side, name, 'p99_ms'))} "
            f"| {_x(_ratio(d, ref_d))} "
            f"| {_x(_get(rows, name, 'flood', 'ratio'))} |"
        )
    errors = [
        f"- `{r['peer']}` {w}: {r[w]['error']}"
        for r in data["peers"]
        for w in ("A", "B", "C", "D", "flood")
        if isinstance(r.get(w), dict) and "error" in r[w]
    ]
    if skipped or errors:
        lines += ["", "Not measured:", "", *skipped, *errors]
    lines += ["", "## Goals of issue 6", "", "| goal | measured | holds |", "|---|---|---|"]
    for goal, measured, holds in goals(rows, side):
        mark = "-" if holds is None else ("yes" if holds else "**no**")
        lines.append(f"| {goal} | {measured} | {mark} |")
    lines += ["", *NOTES]
    if not data["peers"]:  # only the fan-out workloads ran
        lines = lines[:3]
    import fanreport  # it uses this module's helpers

    lines += fanreport.markdown(data.get("fanout") or {})
    lines += ["", "## Machine", ""]
    facts = data["machine"]
    for key in ("cpu_model", "cpus", "memory_gib", "kernel", "python", "client_loop", "pinning",
                "load_average_at_start", "commit"):  # fmt: skip
        lines.append(f"- {key.replace('_', ' ')}: {facts.get(key)}")
    packages = ", ".join(f"{k} {v}" for k, v in facts["packages"].items() if v)
    lines.append(f"- packages: {packages}")
    lines += _profile_sections(data.get("profiles") or {})
    return "\n".join(lines) + "\n"


def profiles_markdown(profiles: dict[str, Any], facts: dict[str, Any]) -> str:
    lines = ["# django-flosse benchmark: profiles", "", f"Commit: {facts.get('commit')}."]
    return "\n".join(lines + _profile_sections(profiles)) + "\n"


def _profile_sections(profiles: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for name, prof in profiles.items():
        cprofile = prof.get("profiler") == "cProfile"
        tool = "cProfile, F1" if cprofile else "py-spy, workload A"
        lines += ["", f"## Profile: `{name}` ({tool})", ""]
        if "error" in prof:
            lines.append(f"failed: {prof['error']}")
            continue
        if cprofile:
            lines.append(
                f"cProfile on the server's event loop thread while it published one schedule "
                f"to {prof['subscribers']:,} subscribers and delivered it "
                f"({prof['seconds']:.1f} s of profiled self time; lost {prof['lost']}, "
                f"duplicates {prof['duplicates']}; garbage collections meanwhile: "
                f"{prof.get('gc')}); percentages are of that time, and "
                "cProfile's own cost per call inflates functions called often. Stats: "
                f"`{Path(prof['pstats']).name}`."
            )
        else:
            lines.append(
                f"{prof['samples']} samples of the streaming threads "
                f"({', '.join(prof.get('streaming_threads', [])) or '-'}; other threads and "
                f"waits left out) while the server streamed {prof.get('events_per_s', 0):,.0f} "
                "events/s under py-spy; percentages are of those samples. Flame graph: "
                f"`{Path(prof['svg']).name}`, raw stacks: `{Path(prof['raw']).name}`."
            )
        lines += ["", "By function, highest self time first:", "",
                  "| function | self % | total % |", "|---|--:|--:|"]  # fmt: skip
        for entry in prof["top"]:
            lines.append(f"| `{entry['function']}` | {entry['self']:.1f} | {entry['total']:.1f} |")
        lines += ["", "By function, highest total (inclusive) time first:", "",
                  "| function | self % | total % |", "|---|--:|--:|"]  # fmt: skip
        for entry in prof["top_total"]:
            lines.append(f"| `{entry['function']}` | {entry['self']:.1f} | {entry['total']:.1f} |")
        lines += ["", "Self time by file:", "", "| file | self % |", "|---|--:|"]
        for entry in prof["by_file"]:
            lines.append(f"| `{entry['file']}` | {entry['self']:.1f} |")
    return lines


NOTES = [
    "## What the columns mean",
    "",
    '- same bytes: the body of `?n=5` is exactly `event: tick\\ndata: {"i": 0}\\n\\n` ... '
    '`{"i": 4}` (checked before anything is measured).',
    "- A: one stream read as fast as the client can, best of several runs (other load only "
    "slows a run down); server CPU is user + system seconds of the server process tree "
    '(psutil or /proc) over all runs, per 100k events. "per server CPU-s" in the goals '
    "compares events per CPU second: it barely moves with other load on the machine.",
    "- B: aggregate events/s of concurrent streams, from the first request to the last byte "
    "(best run).",
    "- Observability costs (goals): A and B run again with both servers up, alternating "
    "between ours with observability on and off (`sidebyside.py`); best run against best "
    "run.",
    "- C: (RSS with the idle streams - RSS before) / streams; then every client socket is "
    "closed with SO_LINGER 0 (RST) at once, and the server's own count of open streams is "
    "polled every 10 ms until 0 (ours with observability on: `flosse_connections_active` on "
    "`/flosse/metrics/`; every other peer: its generator's `try/finally`, read at `/active`). "
    "Only async views on uvicorn hold idle streams here (gunicorn gthread needs a thread per "
    "connection).",
    "- D: from just before connect() to the first complete event of a one-event stream, "
    "connections opened one after the other, taken side by side: every server up at once, "
    "one connection to each in turn (see `sidebyside.py`), so that all peers share the same "
    "minutes of a machine whose speed drifts. flooded/idle: the median while another "
    "client reads an endless stream as fast as it can, divided by the peer's own D median "
    "taken just before (alone on the machine, like the flood). The flood ends by "
    "itself after its set duration: a flooded time close to that duration means the second "
    "stream got nothing until the flood was over (the event loop never turned).",
]


Goal = tuple[str, str, bool | None]


def goals(rows: dict[str, dict[str, Any]], side: dict[str, Any] | None = None) -> list[Goal]:
    found: list[Goal] = []
    side = side or {}

    def ratio_goal(text: str, ours: str, other: str, workload: str, minimum: float) -> None:
        r = _ratio(
            _get(rows, ours, workload, "events_per_s"), _get(rows, other, workload, "events_per_s")
        )
        per_cpu = _ratio(
            _get(rows, ours, workload, "events_per_cpu_s"),
            _get(rows, other, workload, "events_per_cpu_s"),
        )
        found.append(
            (f"{workload}: `{ours}` ≥ {minimum:g}x `{other}` ({text})",
             f"{_x(r)} (per server CPU-s: {_x(per_cpu)})", None if r is None else r >= minimum)
        )  # fmt: skip

    for w in ("A", "B"):
        ratio_goal("async view, uvicorn", "ours-async-uvicorn", "django-async-uvicorn", w, 3.0)
    for w in ("A", "B"):
        ratio_goal("sync view, uvicorn", "ours-sync-uvicorn", "django-async-uvicorn", w, 1.5)
    for ours in ("ours-async-gunicorn", "ours-sync-gunicorn"):
        for w in ("A", "B"):
            ratio_goal("gunicorn gthread", ours, "django-sync-gunicorn", w, 1.0)
    pairs = (
        ("ours-async-uvicorn", "sse-starlette-uvicorn"),
        ("ours-async-uvicorn", "flosse020-async-uvicorn"),
        ("ours-sync-gunicorn", "flosse020-sync-gunicorn"),
    )
    for ours, other in pairs:
        for w in ("A", "B"):
            ratio_goal("ahead", ours, other, w, 1.0)
        r = _ratio(
            _first_event(rows, side, ours, "median_ms"),
            _first_event(rows, side, other, "median_ms"),
        )
        found.append(
            (f"D: `{ours}` median first event below `{other}`'s", _x(r),
             None if r is None else r < 1.0)
        )  # fmt: skip
    for name in sorted(rows):
        if rows[name].get("impl") != "ours" or rows[name].get("observability") != "on":
            continue
        off = f"{name}-obsoff"
        pair = side.get("observability", {}).get(name)
        for w in ("A", "B"):
            # Alternated runs side by side when there are some (sidebyside.py).
            on_w = pair[w][name] if pair else rows.get(name, {}).get(w, {})
            off_w = pair[w][off] if pair else rows.get(off, {}).get(w, {})
            on_v, off_v = on_w.get("events_per_s"), off_w.get("events_per_s")
            if not on_v or not off_v:
                continue
            cost = 1 - on_v / off_v
            on_cpu, off_cpu = on_w.get("events_per_cpu_s"), off_w.get("events_per_cpu_s")
            cpu_cost = f"{1 - on_cpu / off_cpu:+.1%}" if on_cpu and off_cpu else "-"
            how = "alternated" if pair else "one after the other"
            text = f"{w}: observability costs < 5% (`{name}` vs `{off}`, {how})"
            found.append((text, f"{cost:+.1%} (per server CPU-s: {cpu_cost})", cost < 0.05))
    mine = _get(rows, "ours-async-uvicorn", "C", "kib_per_connection")
    theirs = _get(rows, "django-async-uvicorn", "C", "kib_per_connection")
    found.append(
        ("C: memory per idle connection ≤ plain Django's (async, uvicorn)",
         f"{_fmt(mine)} vs {_fmt(theirs)} KiB",
         None if mine is None or theirs is None else mine <= theirs)
    )  # fmt: skip
    measured_c = "C" in rows.get("ours-async-uvicorn", {})
    closed = _get(rows, "ours-async-uvicorn", "C", "closed_after_s")
    found.append(
        ("C: all dropped connections closed in the registry and metrics within 1 s",
         f"{_fmt(closed)} s" if closed is not None else "not within 30 s",
         (closed is not None and closed <= 1.0) if measured_c else None)
    )  # fmt: skip
    for ours, other in (
        ("ours-async-uvicorn", "django-async-uvicorn"),
        ("ours-sync-gunicorn", "django-sync-gunicorn"),
    ):
        r = _ratio(
            _first_event(rows, side, ours, "median_ms"),
            _first_event(rows, side, other, "median_ms"),
        )
        found.append(
            (f"D: `{ours}` median first event ≤ 1.1x `{other}`'s", _x(r),
             None if r is None else r <= 1.1)
        )  # fmt: skip
    for ours in ("ours-async-uvicorn", "ours-sync-gunicorn"):
        r = _get(rows, ours, "flood", "ratio")
        found.append(
            (f"D: `{ours}` first event during a flood ≤ 2x idle", _x(r),
             None if r is None else r <= 2.0)
        )  # fmt: skip
    return [g for g in found if _known(g, rows)]


def _known(goal: Goal, rows: dict[str, Any]) -> bool:
    """Leave out goals about peers this run did not include at all."""
    names = [
        part
        for part in goal[0].split("`")[1::2]
        if part.startswith(("ours", "django", "sse", "flosse"))
    ]
    return all(name in rows for name in names)
