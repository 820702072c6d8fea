"""The layout's rules, read from the source: ``testing/`` is what tests and benchmarks
share and imports from neither; ``bench/`` never imports from ``tests/``; one loopback HTTP
server (``testing/http_host.py``) and one process launcher (``testing/procs.py``)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from testing.procs import REPO_ROOT


def _modules(folder: str) -> Iterator[tuple[Path, ast.Module]]:
    for path in sorted((REPO_ROOT / folder).rglob("*.py")):
        yield path, ast.parse(path.read_text(), filename=str(path))


def _imported(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize(("folder", "banned"), [
    ("testing", ("tests", "bench")),
    ("bench", ("tests",)),
])
def test_imports_go_one_way(folder: str, banned: tuple[str, ...]) -> None:
    wrong = sorted(f"{path.relative_to(REPO_ROOT)}: {name}"
                   for path, tree in _modules(folder) for name in _imported(tree)
                   if name.split(".")[0] in banned)
    assert wrong == [], f"{folder}/ imports what it must not"


def _calls(tree: ast.Module, name: str) -> int:
    """Calls of ``name`` or ``<anything>.name``."""
    return sum(1 for node in ast.walk(tree) if isinstance(node, ast.Call) and (
        (isinstance(node.func, ast.Name) and node.func.id == name)
        or (isinstance(node.func, ast.Attribute) and node.func.attr == name)))


def test_one_http_server_and_one_launcher() -> None:
    servers, launchers = [], []
    for folder in ("tests", "bench", "testing"):
        for path, tree in _modules(folder):
            where = str(path.relative_to(REPO_ROOT))
            if where != "testing/http_host.py" and (
                    _calls(tree, "ThreadingHTTPServer") or _calls(tree, "HTTPServer")):
                servers.append(where)
            # A server process is started by testing.procs: its command builders
            # (predictor_cmd, transformer_cmd) run under its one launcher (running).
            source = path.read_text()
            if where != "testing/procs.py" and any(
                    f'"-m", "{server}"' in source or f'python_cmd("{server}"' in source
                    for server in ("predictor", "transformer")):
                launchers.append(where)
    assert servers == [], "an HTTP server of its own (use testing.http_host.serving)"
    assert launchers == [], "a server start-up of its own (use testing.procs)"
