"""What every command that reads a run needs before Lightning builds anything: the command-line words
made ready for the parser (config names found, negative numbers kept with their flag), checkpoint
resolution, and parse errors as one line with the closest valid key. No Lightning here: export and the
checks made before Lightning loads (lmproject.lit.commands) use it too."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

import lmproject
from lmproject.errors import UserError
from lmproject.lit.sharding import consolidate, is_sharded_checkpoint
from lmproject.nn import ModelConfig
from lmproject.settings import did_you_mean
from lmproject.tokenizer.files import read_text
from lmproject.training.checkpoint_files import check_checkpoint, find_last, model_shapes

if TYPE_CHECKING:
    from jsonargparse import Namespace

CONFIG_SUFFIXES = ("", ".yaml")


def shipped_configs_dir() -> Path:
    """The configs the package ships: lmproject/configs in an installed wheel (setup.py copies them from
    the repository's configs/), the repository's configs/ in an editable install."""
    package = Path(lmproject.__file__).parent
    installed = package / "configs"
    return installed if installed.is_dir() else package.parent / "configs"


def shipped_config_names() -> list[str]:
    """The shipped configs by name, as `--config NAME` takes them (tinystories, recipes/modern, ...)."""
    root = shipped_configs_dir()
    return sorted(str(path.relative_to(root).with_suffix("")) for path in root.rglob("*.yaml"))


def find_config(value: str) -> str:
    """The file `--config value` means: the path itself when it exists, else the shipped config of that
    name (`tinystories`, `tinystories.yaml`, `recipes/modern.yaml`, `configs/tinystories.yaml` from any
    directory). Inline YAML (a value with `:` or `{`) is returned as it is, for the parser to read."""
    if Path(value).exists() or any(mark in value for mark in ":{\n"):
        return value
    root = shipped_configs_dir()
    name = value.removeprefix("configs/")
    for suffix in CONFIG_SUFFIXES:
        candidate = root / f"{name}{suffix}"
        if candidate.is_file():
            return str(candidate)
    raise UserError(
        f"--config {value}: no such file, and no shipped config of that name "
        f"(shipped: {', '.join(shipped_config_names())})"
    )


def runs_on_cpu(trainer: Namespace) -> bool:
    """Whether a run with this trainer config runs on the CPU (accelerator cpu, or auto without a GPU)."""
    accelerator = str(trainer.get("accelerator", "auto"))
    return accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """--config and --ckpt_path, for the commands outside LightningCLI's subcommands (export, evaluate);
    they read their other arguments (--model.*, --data.*, --trainer.*) with lmproject.lit.plain_config."""
    parser.add_argument("--config", action="append", required=True, help="the run's config (repeatable)")
    parser.add_argument("--ckpt_path", required=True, help="a .ckpt file, or `last` (the run's last.ckpt)")


def resolve_checkpoint(ckpt_path: str, config: Namespace) -> tuple[Path, dict[str, Any]]:
    """checked_checkpoint for a config as LightningCLI parsed and completed it."""
    arch = ModelConfig(**config.model.arch.as_dict())
    return checked_checkpoint(ckpt_path, arch, Path(config.checkpoint.dirpath))


def checked_checkpoint(
    ckpt_path: str, arch: ModelConfig, checkpoint_dir: Path
) -> tuple[Path, dict[str, Any]]:
    """The checkpoint `--ckpt_path` names (`last`: the newest last*.ckpt in checkpoint_dir), checked against
    a model of architecture `arch` (LanguageModel's state dict: `model.` + TransformerLM's), and its contents
    (memory-mapped)."""
    path = Path(ckpt_path)
    if ckpt_path == "last":
        found = find_last(checkpoint_dir)
        if found is None:
            raise UserError(f"--ckpt_path last: no last checkpoint in {checkpoint_dir}")
        path = found
    if is_sharded_checkpoint(path):  # written with --trainer.strategy fsdp_sharded
        path = consolidate(path)
    shapes = {f"model.{name}": shape for name, shape in model_shapes(arch).items()}
    return path, check_checkpoint(path, arch, shapes)


NEGATIVE_NUMBER = re.compile(r"-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?|-inf|-nan", re.IGNORECASE)


def prepare_words(words: list[str]) -> list[str]:
    """The command line as the parser should read it: each --config found (find_config) and checked to be
    text, and negative numbers joined to their flag."""
    prepared: list[str] = []
    expects_config = False
    for word in words:
        if expects_config:
            word = checked_config_file(word)
        elif word.startswith(("--config=", "-c=")):
            flag, value = word.split("=", 1)
            word = f"{flag}={checked_config_file(value)}"
        expects_config = word in ("--config", "-c")
        prepared.append(word)
    return join_negative_numbers(prepared)


def checked_config_file(value: str) -> str:
    """find_config's file, refused with its name when it cannot be read as text (a binary, a directory):
    jsonargparse would raise a UnicodeDecodeError."""
    path = find_config(value)
    if Path(path).exists():
        try:
            read_text(path)
        except UserError as err:
            raise UserError(f"--config {err}") from None
    return path


def join_negative_numbers(words: list[str]) -> list[str]:
    """`--model.lr_max -1e-3` as `--model.lr_max=-1e-3`: argparse takes a word starting with "-" for an
    option unless it looks like -1 or -.5, so a negative number in scientific notation lost its option."""
    joined: list[str] = []
    for word in words:
        previous = joined[-1] if joined else ""
        if NEGATIVE_NUMBER.fullmatch(word) and previous.startswith("--") and "=" not in previous:
            joined[-1] = f"{previous}={word}"
        else:
            joined.append(word)
    return joined


UNKNOWN_KEY = re.compile(
    r"(?i:unrecognized arguments):.*?--(?P<flag>[\w.]+)|Key \"(?P<key>[\w.]+)\" is not expected|"
    r"does not accept nested key \"(?P<nested>[\w.]+)\"|No action for key \"(?P<action>[\w.]+)\"|"
    r"does not accept option '(?P<option>[\w.]+)'"
)


def one_line(err: Exception, valid_keys: list[str] | None = None) -> str:
    """jsonargparse's multi-line parse errors as one line (`model.arch.d_model: expected int, got None`),
    with the closest valid key for an unknown one (`did you mean --model.arch.d_model?`)."""
    text = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
    text = re.sub(
        r'Parser key "([^"]+)": Expected a <class \'(\w+)\'>\. Got value: (.*)',
        r"\1: expected \2, got \3",
        text,
    )
    found = UNKNOWN_KEY.search(text)
    if found and valid_keys:
        key = next(group for group in found.group("flag", "key", "nested", "action", "option") if group)
        text += did_you_mean(key, valid_keys)
    return text
