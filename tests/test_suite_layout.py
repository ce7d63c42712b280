"""No module of the test suite imports a test module: shared helpers live in conftest.py or in plain helper
modules (tiny_fit.py, tiny_run.py, ...), so that each test module runs alone, its fixtures apply only where
they are asked for, and pytest never collects a test twice under another module's name."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def imports_of_test_modules(path: Path) -> list[str]:
    """`line: module` for each import of a test_* module in the file at `path`, at any depth (inside
    functions too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [f"{node.lineno}: {name}" for name in names if name.split(".")[0].startswith("test_")]
    return found


def test_no_module_of_the_suite_imports_a_test_module():
    offenders = {path.name: imports_of_test_modules(path) for path in sorted(TESTS.glob("*.py"))}
    assert {name: found for name, found in offenders.items() if found} == {}


def test_imports_of_test_modules_are_found_at_any_depth(tmp_path):
    source = tmp_path / "test_example.py"
    source.write_text(
        "import os, test_a\n"
        "from tiny_fit import fails\n"
        "from test_b import helper\n"
        "def test_x():\n"
        "    import test_c.sub\n"
        "    from test_d import y\n"
    )
    assert imports_of_test_modules(source) == ["1: test_a", "3: test_b", "5: test_c.sub", "6: test_d"]
