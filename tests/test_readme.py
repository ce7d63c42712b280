"""The README's and docs/*.md's snippets run or are checked, so the pages cannot drift from the code: Python
blocks run as written (sizes shrunk where they would take minutes on a CPU; the Hugging Face one runs on a
real export in tests/test_interop.py), console transcripts run and must print what they show, command lines
name real commands, flags and make targets, and the paths and modules the pages name exist."""

from __future__ import annotations

import contextlib
import importlib
import io
import itertools
import re
import shlex

import numpy as np
import pytest
import yaml
from readme_snippets import PAGES, ROOT, blocks, shrunk, snippets

from lmproject.tools.stories import generate_stories

EOT = "<|endoftext|>"
# the entry point of each console command, as the console scripts (lmproject/launch.py) start it
COMMAND_MODULES = {"lmproject": "lmproject.lit.commands", "lmproject-bpe": "lmproject.tokenizer.cli"}
LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")
GLOBAL_FLAGS = {"--verbose"}  # read by lmproject.lit.commands before any command's parser


def run_snippet(code: str, page: str, scope: dict | None = None) -> dict:
    """Execute a snippet and return its variables."""
    scope = {} if scope is None else scope
    exec(compile(code, page, "exec"), scope)
    return scope


@pytest.mark.slow
def test_the_tokenizer_snippet(tmp_path, monkeypatch):
    text = f"\n{EOT}\n".join(itertools.islice(generate_stories(seed=0), 40))
    (tmp_path / "corpus.txt").write_text(text, encoding="utf-8")
    (tmp_path / "big.txt").write_text(text, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    code = shrunk(snippets("docs/tokenizer.md")["In Python"], {"vocab_size=10_000": "vocab_size=400"})
    code = code.replace("        ...", "        seen.append(token_id)")
    scope = run_snippet(code, "docs/tokenizer.md", {"seen": []})
    assert scope["text"] == f"Once upon a time{EOT}"
    assert scope["seen"] == scope["tok"].encode(text)
    assert sorted(p.name for p in (tmp_path / "my_tokenizer").iterdir()) == [
        "merges.txt", "special_tokens.json", "vocab.json",
    ]  # fmt: skip


SMALL_MODEL = {"d_model=512": "d_model=32", "d_ff=1344": "d_ff=64", "num_heads=16": "num_heads=4"}


def test_the_plain_pytorch_snippet():
    code = shrunk(
        snippets("docs/model.md")["The model and optimizer (plain PyTorch, no Lightning)"],
        SMALL_MODEL | {"max_new_tokens=256": "max_new_tokens=5"},
    )
    tokens = np.random.default_rng(0).integers(0, 10_000, 2_000).astype(np.uint16)
    scope = run_snippet(code, "docs/model.md", {"tokens": tokens, "prompt_ids": [1, 2, 3], "eot_id": 0})
    assert scope["loss"].item() == pytest.approx(np.log(10_000), rel=0.1)  # an untrained model: about ln V
    assert len(scope["completions"]) == 1 and 1 <= len(scope["completions"][0]) <= 5


@pytest.mark.slow
def test_the_sampling_snippet():
    scope = run_snippet(shrunk(snippets("docs/sampling.md")["Settings"], SMALL_MODEL), "docs/sampling.md")
    assert [len(completion) for completion in scope["greedy"]] == [20, 20]
    assert scope["same"] is True
    assert len(scope["streamed"]) == 20


def test_the_accounting_snippet_prints_the_handouts_figures():
    code = snippets("docs/evaluation.md")["Resource accounting: `lmproject accounting`"]
    scope = run_snippet(code, "docs/evaluation.md")
    for name in ("parameters", "flops"):
        stated = re.search(rf"^{name} = .*# ([\d,]+)", code, re.MULTILINE).group(1)
        assert scope[name] == int(stated.replace(",", "")), name


def test_every_python_snippet_is_run_by_a_test():
    run_here = {
        ("docs/tokenizer.md", "In Python"),
        ("docs/model.md", "The model and optimizer (plain PyTorch, no Lightning)"),
        ("docs/sampling.md", "Settings"),
        ("docs/evaluation.md", "Resource accounting: `lmproject accounting`"),
    }
    run_in_test_interop = {("docs/interop.md", "Then, offline, in transformers")}
    assert {(page, heading) for page in PAGES for heading in snippets(page)} == run_here | run_in_test_interop


def run_command(words: list[str]) -> tuple[int, str]:
    """Run a console command in this process, as its console script would: (exit status, what it printed)."""
    main = importlib.import_module(COMMAND_MODULES[words[0]]).main
    output = io.StringIO()
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
        try:
            status = main(words[1:])
        except SystemExit as exit_:
            status = exit_.code
    return status, output.getvalue()


def transcripts() -> list[tuple[str, str, str, list[str], int]]:
    """Every command of the pages' ```console blocks: (page, command, its shown output, the shown status of
    the `echo $?` after it)."""
    found = []
    for page in PAGES:
        for block in blocks(page, "console").values():
            for command, output in re.findall(r"^\$ (.*)\n((?:[^$].*\n)*)", block, re.MULTILINE):
                if command == "echo $?":
                    found[-1][-1] = int(output)
                else:
                    found.append([page, command, output.splitlines(), 0])
    return [tuple(each) for each in found]


@pytest.mark.parametrize(("page", "command", "output", "status"), transcripts())
def test_console_transcripts_print_what_they_show(page, command, output, status, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an empty directory: shipped configs are found by name
    got_status, printed = run_command(shlex.split(command))
    assert (got_status, printed.splitlines()) == (status, output), f"{page}: $ {command}"


def command_lines(page: str) -> list[str]:
    """The command lines of a page's untyped and console code blocks (continuation lines joined)."""
    lines = []
    for language in ("", "console"):
        for block in blocks(page, language).values():
            joined = re.sub(r"\\\n\s*", " ", block)
            lines += [line.removeprefix("$ ").split("#")[0].strip() for line in joined.splitlines()]
    return [line for line in lines if line]


HELP: dict[tuple[str, ...], str] = {}


def help_text(words: tuple[str, ...]) -> str:
    """What `words --help` prints (the flags a command takes), computed once per command."""
    if words not in HELP:
        status, HELP[words] = run_command([*words, "--help"])
        assert status == 0, f"{' '.join(words)} --help: {HELP[words]}"
    return HELP[words]


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES)
def test_command_lines_name_real_commands_and_flags(page):
    from lmproject.lit.commands import COMMANDS

    for line in command_lines(page):
        words = line.split()
        if words[0] not in COMMAND_MODULES:
            continue
        if words[0] == "lmproject":
            assert words[1] in {*COMMANDS, *LIGHTNING_COMMANDS}, f"{page}: {line}: no command {words[1]!r}"
        usage = help_text(tuple(words[:2]))  # lmproject-bpe's --help fails for an unknown command
        for flag in re.findall(r"(?<![\w-])--[a-z][\w.-]*", line):
            assert flag in GLOBAL_FLAGS or re.search(rf"{re.escape(flag)}\b", usage), (
                f"{page}: {line}: {flag}"
            )


def make_targets() -> set[str]:
    """The targets the Makefile (and experiments.mk, which it includes) define."""
    text = "".join((ROOT / name).read_text() for name in ("Makefile", "experiments.mk"))
    return set(re.findall(r"^([\w-]+):", text, re.MULTILINE))


@pytest.mark.parametrize("page", PAGES)
def test_make_lines_name_real_targets(page):
    targets = make_targets()
    for line in command_lines(page):
        words = line.split()
        if words[0] == "make":
            assert {word for word in words[1:] if "=" not in word} <= targets, f"{page}: {line}"


REPO_PATH = re.compile(r"(?<![\w./])((?:lmproject|configs|bench|tests)/[\w./{},-]*)")


def expand_braces(path: str) -> list[str]:
    """`configs/sweeps/{lr,batch_size}/` as the paths it stands for."""
    found = re.search(r"\{([^{}]*)\}", path)
    if found is None:
        return [path]
    return [
        p
        for choice in found.group(1).split(",")
        for p in expand_braces(path.replace(found.group(0), choice, 1))
    ]


@pytest.mark.parametrize("page", PAGES)
def test_the_paths_and_modules_a_page_names_exist(page):
    text = (ROOT / page).read_text(encoding="utf-8")
    for mention in REPO_PATH.findall(text):
        for path in expand_braces(mention.rstrip(".,")):
            assert (ROOT / path).exists(), f"{page} names {path}, which does not exist"
    for dotted in set(re.findall(r"(?<![\w/])lmproject(?:\.\w+)+", text)):
        parts = dotted.split(".")
        for split in range(len(parts), 0, -1):  # the longest importable module, then attributes
            with contextlib.suppress(ModuleNotFoundError):
                found = importlib.import_module(".".join(parts[:split]))
                break
        for attribute in parts[split:]:
            assert hasattr(found, attribute), f"{page} names {dotted}: no {attribute}"
            found = getattr(found, attribute)


def readme_tree() -> list[str]:
    """The paths the README's "Where things live" tree lists, one a line, nested by two-space indents."""
    tree = blocks("README.md", "")["Where things live"]
    paths, parents = [], []
    for line in tree.splitlines():
        depth = (len(line) - len(line.lstrip())) // 2
        name = line.split()[0]
        parents[depth:] = [name]
        paths.append("".join(parents))
    return paths


def test_the_readme_tree_lists_real_files():
    paths = readme_tree()
    assert "lmproject/nn/transformer.py" in paths  # the parser read the nesting
    assert [path for path in paths if not (ROOT / path).exists()] == []


def test_every_docs_page_is_linked_from_the_readme():
    links = set(re.findall(r"\]\((docs/[\w.-]+\.md)\)", (ROOT / "README.md").read_text(encoding="utf-8")))
    assert set(PAGES[1:]) <= links


def test_the_training_pages_model_section_is_the_tinystories_config():
    shown = yaml.safe_load(blocks("docs/training.md", "yaml")["Configs"])["model"]
    config = yaml.safe_load((ROOT / "configs/tinystories.yaml").read_text())["model"]
    assert shown["arch"].items() <= config["arch"].items()
    assert shown["lr_max"] == config["lr_max"]
