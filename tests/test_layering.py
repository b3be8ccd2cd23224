"""`providers/`, `cache/` and `scheduler/` import nothing from `omniopd` except `omniopd.errors`.

Walks every module's syntax tree — imports at the top, inside functions and under
`TYPE_CHECKING` alike, and `importlib.import_module("...")` calls with a literal name — so a
lazy import cannot hide a dependency on the layer above.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOWER = ("providers", "cache", "scheduler")
ALLOWED = {"omniopd.errors"}


def imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
            if node.module == "omniopd":  # `from omniopd import config`
                out += [(node.lineno, f"omniopd.{a.name}") for a in node.names]
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            out.append((node.lineno, node.args[0].value))
    return out


def violations(package: str) -> list[str]:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, mod in imported_modules(ast.parse(path.read_text(), str(path))):
            # a bare `omniopd` (from `from omniopd import x`) is checked through its names
            if mod.split(".")[0] == "omniopd" and mod != "omniopd" and mod not in ALLOWED:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {mod}")
    return bad


@pytest.mark.parametrize("package", LOWER)
def test_lower_layers_import_only_errors_from_omniopd(package):
    assert violations(package) == []


def test_the_walker_sees_lazy_and_type_checking_imports():
    src = ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from omniopd.config import X\n"
           "def f():\n    import omniopd.models\n    from omniopd import train\n    importlib.import_module('omniopd.data')\n"
           "from omniopd.errors import CacheError\n")
    mods = [m for _, m in imported_modules(ast.parse(src))]
    assert {"omniopd.config", "omniopd.models", "omniopd.train", "omniopd.data", "omniopd.errors"} <= set(mods)
