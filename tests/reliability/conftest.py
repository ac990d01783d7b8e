"""Fixtures of the reliability suite: open-files limit, figures printed at the end."""

from __future__ import annotations

import contextlib
import resource
from collections.abc import Iterator

import pytest

#: (test, figure) lines printed in the terminal summary, so ``make test`` shows them.
FIGURES: list[tuple[str, str]] = []

#: A thousand client sockets in this process and a thousand in the server (which inherits
#: the limit): raise the soft limit as far as the hard one allows.
WANTED_FILES = 8192


@pytest.fixture(scope="session", autouse=True)
def _open_files_limit() -> Iterator[int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = WANTED_FILES if hard == resource.RLIM_INFINITY else min(WANTED_FILES, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    yield resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture
def figure(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """``figure("text")``: print a measured figure now and in the summary at the end."""

    def add(text: str) -> None:
        print(f"[reliability] {text}")
        FIGURES.append((request.node.name, text))

    return add


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not FIGURES:
        return
    terminalreporter.section("reliability figures")
    for test, text in FIGURES:
        terminalreporter.write_line(f"{test}: {text}")
