"""The checks `lmproject fit|validate|test|predict` make before Lightning loads, so that bad input fails in
about the time torch takes to import instead of after Lightning's seconds: a `--config` is given, exists and
is well-formed YAML (as is inline YAML), a `--ckpt_path` file exists, and the token files the command reads
exist (the error names the command that makes them). Everything else is LightningCLI's to check, with the
config parsed as the run will use it."""

from __future__ import annotations

from pathlib import Path

from lmproject.errors import UserError
from lmproject.lit.plain_config import (
    CONFIG_FLAGS,
    data_section,
    flag_values,
    overrides,
    read_run_config,
    tokenizer_dir,
)
from lmproject.lit.run_config import prepare_words

# the token files each command reads, by their data.* setting (test falls back to val_path)
TOKEN_FILES = {"fit": ("train_path", "val_path"), "validate": ("val_path",), "test": ("test_path",)}
# data folders that a make target fills: folder below data/ -> the command
MAKE_TARGETS = {
    "tinystories": "make data tokenizer tokenize DATASET=tinystories",
    "owt": "make data tokenizer tokenize DATASET=owt",
    "smoke": "make smoke-data",
}
NO_CHECK_FLAGS = ("-h", "--help", "--print_config")


def check_run_words(command: str, words: list[str]) -> None:
    """Refuse `lmproject COMMAND words...` (fit, validate, test or predict) with a one-line UserError when its
    config or token files are missing; help and --print_config are left to LightningCLI."""
    if any(word.partition("=")[0] in NO_CHECK_FLAGS for word in words):
        return
    prepare_words(words)  # each config file and inline YAML read strictly: empty, malformed, keys twice
    configs = flag_values(words, CONFIG_FLAGS)
    if not configs:
        raise UserError(
            f"{command} needs --config: the run's config file, e.g. `lmproject {command} --config "
            "tinystories.yaml` (a shipped name or a path)"
        )
    config = read_run_config(configs, overrides(words, strict=False))
    checkpoint = next(reversed(flag_values(words, ("--ckpt_path",))), None)
    if checkpoint not in (None, "last", "null") and not Path(checkpoint).exists():
        raise UserError(f"{checkpoint}: checkpoint not found")  # as LightningCLI would, before the data
    data = data_section(config)
    for name in TOKEN_FILES.get(command, ()):
        value = data.get(name) or (data.get("val_path") if name == "test_path" else None)
        if isinstance(value, str) and not Path(value).exists():
            remedy = how_to_make(Path(value), tokenizer_dir(data))
            raise UserError(f"{value}: token file not found (data.{name}); {remedy}")


def how_to_make(path: Path, tokenizer: Path) -> str:
    """What makes the token file `path`: a make target for the data sets the Makefile knows, else
    lmproject-bpe encode with the run's tokenizer."""
    if path.parent.parent.name == "data" and path.parent.name in MAKE_TARGETS:
        return f"make it with `{MAKE_TARGETS[path.parent.name]}`"
    return f"encode a text file into it with `lmproject-bpe encode --tokenizer {tokenizer} TEXT_FILE {path}`"
