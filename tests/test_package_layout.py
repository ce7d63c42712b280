"""The package's shape: only lmproject.lit imports lightning and nothing outside it imports lmproject.lit;
no import circles; the model depends on nothing but its own math; C only for the tokenizer's merge loop."""

import ast
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import lmproject

OUTSIDE_LIT = sorted(
    info.name
    for info in pkgutil.walk_packages(lmproject.__path__, "lmproject.")
    if not info.name.startswith("lmproject.lit") and not info.name.endswith("__main__")
)


@pytest.mark.slow
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
    for name in (
        "nn",
        "training.optim",
        "tokenizer",
        "sampling.generate",
        "training.data",
        "training.checkpoint",
        "accounting",
        "interop.hf_llama",
    ):
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


PACKAGE = Path(lmproject.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Each lmproject module -> the lmproject modules it imports, at any depth (module level or in a
    function). `from lmproject.a import b` is an edge to lmproject.a.b when that is a module, else to
    lmproject.a."""
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                edges |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    edges.add(full if full in modules else node.module)
        graph[name] = {edge for edge in edges if edge in modules and edge != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles of the graph: its strongly connected components of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for edge in sorted(graph[node]):
            if edge not in index:
                visit(edge)
                low[node] = min(low[node], low[edge])
            elif edge in stack:
                low[node] = min(low[node], index[edge])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_package_has_no_import_circle():
    graph = import_graph()
    assert len(graph) > 50 and "lmproject.lit.plain_config" in graph["lmproject.lit.evaluate_cli"]
    assert cycles(graph) == []


def test_cycles_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_model_depends_only_on_its_own_math():
    """lmproject.nn knows no cache class, no CLI and no sampling: it imports only itself and the settings."""
    graph = import_graph()
    outside = {
        (name, edge)
        for name, edges in graph.items()
        if name.startswith("lmproject.nn")
        for edge in edges
        if not edge.startswith("lmproject.nn") and edge not in ("lmproject.settings", "lmproject.errors")
    }
    assert outside == set()


def test_sampling_lives_in_one_folder_and_c_only_in_the_tokenizer():
    sampling = {"generate", "kv_cache", "compiled_step", "cuda_graph", "config"}
    assert {path.stem for path in (PACKAGE / "sampling").glob("*.py")} >= sampling
    elsewhere = [path for path in PACKAGE.rglob("*.py") if path.stem in sampling - {"config"}]
    assert all(path.parent.name == "sampling" for path in elsewhere)
    assert [str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.c")] == ["tokenizer/_merge.c"]
