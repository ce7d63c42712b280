"""The boundary between the math and Lightning: only lmproject.lit imports lightning, and nothing outside it
imports lmproject.lit, not even inside a function."""

import ast
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import lmproject

OUTSIDE_LIT = sorted(
    info.name
    for info in pkgutil.walk_packages(lmproject.__path__, "lmproject.")
    if not info.name.startswith("lmproject.lit") and not info.name.endswith("__main__")
)


def test_every_module_outside_lit_imports_without_lightning():
    """A fresh interpreter imports the core (nn, optim, tokenizer, generate, data, ...) and the tools, then
    lists any lightning module that came with them: none may."""
    script = (
        "import importlib, json, sys\n"
        f"for name in {OUTSIDE_LIT!r}: importlib.import_module(name)\n"
        "lightning = [m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning')]\n"
        "print(json.dumps(sorted(lightning)))"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert json.loads(result.stdout) == []


def test_the_core_is_all_there():
    """The walk above covers the core modules the README names (a rename cannot empty it unnoticed)."""
    for name in ("nn", "optim", "tokenizer", "generate", "data", "checkpoint", "accounting", "interop"):
        assert f"lmproject.{name}" in OUTSIDE_LIT
    assert "lmproject.tools.demo" in OUTSIDE_LIT


def lit_imports(source: str) -> list[str]:
    """The lmproject.lit modules that Python source imports, at any depth (module level or in a function),
    and its relative imports, which could reach lit unseen (the project imports by absolute names)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            found.append(f"relative: from {'.' * node.level}{node.module or ''} import ...")
        elif isinstance(node, ast.ImportFrom) and node.module:
            found += [f"{node.module}.{alias.name}" for alias in node.names]
    lit = [name for name in found if name == "lmproject.lit" or name.startswith("lmproject.lit.")]
    return lit + [name for name in found if name.startswith("relative: ")]


def test_no_module_outside_lit_imports_lit_even_lazily():
    """The core hands its results to lmproject.lit, never the reverse: a function-level `from lmproject.lit
    ...` would pass the test above (nothing runs it there) and still tie the core to Lightning."""
    package = Path(lmproject.__file__).parent
    outside = [
        path for path in sorted(package.rglob("*.py")) if "lit" not in path.relative_to(package).parts[:1]
    ]
    assert len(outside) > 30  # the walk sees the core and the tools
    offenders = {
        str(path.relative_to(package)): names
        for path in outside
        if (names := lit_imports(path.read_text(encoding="utf-8")))
    }
    assert offenders == {}


def test_lit_imports_sees_every_form_of_import():
    source = (
        "import lmproject.lit.module\n"
        "def main():\n"
        "    from lmproject.lit.cli import parse_run_config\n"
        "    from lmproject.lit import interop_cli\n"
        "    from lmproject import nn\n"
        "    import lmproject.literal\n"
        "    from ..lit import module\n"
    )
    assert lit_imports(source) == [
        "lmproject.lit.module",
        "lmproject.lit.cli.parse_run_config",
        "lmproject.lit.interop_cli",
        "relative: from ..lit import ...",
    ]
