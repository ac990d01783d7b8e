"""The public API type-checks for users who run mypy --strict on their own views."""

from __future__ import annotations

from pathlib import Path

import pytest
from mypy import api as mypy_api

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_decorated_views_are_views_for_mypy(tmp_path: Path) -> None:
    stdout, stderr, status = mypy_api.run(
        [
            "--strict",
            "--config-file",
            str(ROOT / "pyproject.toml"),
            "--cache-dir",
            str(tmp_path),
            str(ROOT / "tests" / "typing" / "decorated_views.py"),
        ]
    )
    assert status == 0, stdout + stderr
