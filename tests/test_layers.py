"""The layers hold: ``actors -> bus -> schemas``, with no arrow upward; only ``bus`` imports nats;
only the Anthropic provider imports anthropic; no actor reaches into the bus's private nats handles;
views never publish. Read from the source with ``ast``, so a lazy import inside a function counts too.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("schemas", "bus", "actors")


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _parse(path: Path) -> ast.Module:
    """``path``'s syntax tree. The AST converter of CPython 3.11.7 and before can raise a spurious
    "AST constructor recursion depth mismatch" (gh-106905, fixed later; seen in threaded programs,
    and once in this suite on an unchanged file); parsed again, the file is fine."""
    source = path.read_text()
    try:
        return ast.parse(source, str(path))
    except SystemError:
        return ast.parse(source, str(path))


def _imports(path: Path) -> set[str]:
    """The top two levels of every module ``path`` imports (``bus.connection``, ``nats.errors``)."""
    found: set[str] = set()
    for node in ast.walk(_parse(path)):
        if isinstance(node, ast.Import):
            found.update(".".join(alias.name.split(".")[:2]) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(".".join(node.module.split(".")[:2]))
    return found


def _importers(target: str) -> list[str]:
    return sorted(
        str(path.relative_to(ROOT))
        for package in PACKAGES
        for path in _modules(package)
        if any(name == target or name.startswith(target + ".") for name in _imports(path))
    )


@pytest.mark.parametrize(("package", "forbidden"), [("schemas", ("bus", "actors")), ("bus", ("actors",))])
def test_no_import_points_up_a_layer(package: str, forbidden: tuple[str, ...]) -> None:
    upward = {
        str(path.relative_to(ROOT)): sorted(n for n in _imports(path) if n.split(".")[0] in forbidden)
        for path in _modules(package)
    }
    assert {module: names for module, names in upward.items() if names} == {}


def test_only_bus_imports_nats() -> None:
    assert [module for module in _importers("nats") if not module.startswith("bus/")] == []


def test_only_the_anthropic_provider_imports_the_sdk() -> None:
    assert _importers("anthropic") == ["actors/agent/models/anthropic.py"]


def test_no_actor_touches_the_bus_nats_handles() -> None:
    handle = re.compile(r"\.(_?nc|_?js)\b")
    uses = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in _modules("actors")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if handle.search(line)
    ]
    assert uses == []


def test_views_never_publish() -> None:
    publishing = re.compile(r"\.(publish\w*|emit|request|respond)\(")
    uses = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in _modules("actors/views")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if publishing.search(line)
    ]
    assert uses == []
