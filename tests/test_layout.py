"""The package's layering: which module may import which (read from their sources).

These rules are what keeps the structure readable in one pass (docs/reference.md): the wire
format knows no settings, settings are values, the registry knows nothing of Django, and
every part is reached through a module that says what it is. An import anywhere in a module
counts, inside a function too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "django_flosse"


def _module_path(module: str) -> Path:
    relative = Path(*module.split(".")[1:])
    path = PACKAGE / relative
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def imports_of(module: str) -> set[str]:
    """Every module ``module`` imports, as absolute dotted names."""
    path = _module_path(module)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base]) if base else ".".join(parent)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def depends_on(module: str, forbidden: str) -> list[str]:
    return sorted(
        name for name in imports_of(module) if name == forbidden or name.startswith(forbidden + ".")
    )


@pytest.mark.parametrize(
    ("module", "forbidden"),
    [
        # The wire format is pure: the configured JSON encoder is handed to it (wiring).
        ("django_flosse.events", "django_flosse.conf"),
        ("django_flosse.events", "django.conf"),
        ("django_flosse.formatters", "django_flosse.conf"),
        ("django_flosse.formatters", "django.conf"),
        # Settings are values: conf builds nothing from the other parts.
        ("django_flosse.conf", "django_flosse.events"),
        ("django_flosse.conf", "django_flosse.formatters"),
        ("django_flosse.conf", "django_flosse.observing"),
        ("django_flosse.conf", "django_flosse.streaming"),
        # The registry knows nothing of settings, logging or Django: it is wired.
        ("django_flosse.observing.registry", "django_flosse.conf"),
        ("django_flosse.observing.registry", "django_flosse.observing.log"),
        ("django_flosse.observing.registry", "django"),
        # Observing never reaches into streaming: streams report to it, not the reverse.
        ("django_flosse.observing.metrics", "django_flosse.streaming"),
        ("django_flosse.observing.log", "django_flosse.streaming"),
        ("django_flosse.observing._history", "django_flosse.streaming"),
        ("django_flosse.observing._dashboard", "django_flosse.streaming"),
        ("django_flosse.observing._dashboard", "django_flosse.decorators"),
        # The decorator only decorates: no connection, database or response handling.
        ("django_flosse.decorators", "django_flosse.streaming._db"),
        ("django_flosse.decorators", "django_flosse.streaming._bridge"),
        ("django_flosse.decorators", "django_flosse.streaming._clients"),
        # Streams know nothing of broadcast: a subscription is a generator like any other.
        ("django_flosse.streaming", "django_flosse.broadcasting"),
        ("django_flosse.observing", "django_flosse.broadcasting"),
        ("django_flosse.broadcasting.backends", "django_flosse.broadcasting._subscription"),
    ],
)
def test_layering(module: str, forbidden: str) -> None:
    assert depends_on(module, forbidden) == []


def test_the_rules_see_imports_inside_functions() -> None:
    """The checker itself: a lazy import counts (formatters imported conf inside to_sse)."""
    assert depends_on("django_flosse.apps", "django_flosse.observing.wiring") == [
        "django_flosse.observing.wiring",
        "django_flosse.observing.wiring.wire",
    ]
    assert "django_flosse.streaming._lifecycle.open_stream" in imports_of(
        "django_flosse.decorators"
    )


def test_the_package_face_only_reexports() -> None:
    """``__init__`` holds the public names and nothing else (STYLE.md rule 7)."""
    import django_flosse

    tree = ast.parse(_module_path("django_flosse").read_text())
    kinds = {type(node).__name__ for node in tree.body}
    assert kinds <= {"Expr", "ImportFrom", "Assign"}, kinds
    assert sorted(django_flosse.__all__) == [
        "SSEClientDisconnected",
        "SSEEvent",
        "SSEPermissionDenied",
        "SSEYieldError",
        "__version__",
        "abroadcast",
        "broadcast",
        "sse_stream",
        "subscribe",
        "to_sse",
    ]


def test_internal_modules_are_marked() -> None:
    """Inside the parts, what users may import is named; everything else starts with ``_``."""
    public = {
        "streaming": {"__init__.py", "shutdown.py"},
        "observing": {"__init__.py", "registry.py", "metrics.py", "log.py", "wiring.py"},
        "broadcasting": {"__init__.py"},
        "broadcasting/backends": {"__init__.py", "base.py", "memory.py", "database.py", "redis.py"},
    }
    for part, names in public.items():
        modules = {path.name for path in (PACKAGE / part).glob("*.py")}
        assert {name for name in modules if not name.startswith("_")} <= names, part
