"""The boundary between the math and Lightning: only lmproject.lit imports lightning."""

import json
import pkgutil
import subprocess
import sys

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
