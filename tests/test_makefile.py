"""``make help`` lists every command the Makefile offers (the README points to it)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

MAKEFILE = Path(__file__).resolve().parent.parent / "Makefile"
#: Targets that are plumbing, not commands to run by hand.
INTERNAL = {"help", "venv"}


def test_help_lists_every_phony_target() -> None:
    if shutil.which("make") is None:
        pytest.skip("no make on this machine")
    phony = {
        target
        for line in re.findall(r"^\.PHONY:(.*)$", MAKEFILE.read_text(), re.M)
        for target in line.split()
    }
    assert {"demo", "bench", "soak"} <= phony  # the parsing found them
    shown = subprocess.run(
        ["make", "-s", "-f", str(MAKEFILE), "help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    listed = set(re.findall(r"\b([a-z][a-z0-9-]*)\b", shown))
    assert phony - INTERNAL - listed == set()
