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
from lmproject.config_yaml import load_config_yaml
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


SECTION_FLAGS = ("--model", "--data", "--trainer")  # each also takes a whole section as inline YAML


def prepare_words(words: list[str]) -> list[str]:
    """The command line as the parser should read it: each --config found (find_config) and checked to be
    text, an inline YAML section (`--model '{lr_max: 1e-3}'`) checked as a config file is, and negative
    numbers joined to their flag."""
    prepared: list[str] = []
    previous = ""
    for word in words:
        flag, _, value = word.partition("=") if word.startswith("-") else ("", "", word)
        if previous in ("--config", "-c"):
            word = checked_config_file(word)
        elif flag in ("--config", "-c") and value:
            word = f"{flag}={checked_config_file(value)}"
        elif previous in SECTION_FLAGS and value.lstrip().startswith("{"):
            load_config_yaml(value, f"{previous} (inline YAML)")
        elif flag in SECTION_FLAGS and value.lstrip().startswith("{"):
            load_config_yaml(value, f"{flag} (inline YAML)")
        previous = word
        prepared.append(word)
    return join_negative_numbers(prepared)


def checked_config_file(value: str) -> str:
    """find_config's file, refused with its name when it cannot be read as text (a binary, a directory:
    jsonargparse would raise a UnicodeDecodeError), is empty, is not valid YAML or gives a key twice
    (load_config_yaml); inline YAML is checked the same way."""
    path = find_config(value)
    if not Path(path).exists():
        load_config_yaml(path, "--config (inline YAML)")
        return path
    try:
        load_config_yaml(read_text(path), path)
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


UNION = re.compile(
    r'Parser key "(?P<key>[^"]+)": Does not validate against any of the Union subtypes Subtypes: '
    r"\[(?P<types>.*?)\] Errors: .* Given value: (?P<value>.*)$"
)
SUBTYPE = re.compile(r"typing\.Literal\[(?P<values>[^\]]*)\]|<class '(?P<name>[\w.]+)'>")
TYPE_WORDS = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false"}


def _allowed_values(found: re.Match[str]) -> str:
    """A value no type of a Union takes, as one line: the key, the value and what is allowed instead (the
    whole of jsonargparse's message listed every subtype and every subtype's error)."""
    allowed: list[str] = []
    for subtype in SUBTYPE.finditer(found["types"]):
        if subtype["values"] is not None:
            allowed += [value.strip() for value in subtype["values"].split(",")]
        else:
            allowed.append(
                "null" if subtype["name"] == "NoneType" else TYPE_WORDS.get(subtype["name"], subtype["name"])
            )
    allowed = [word for i, word in enumerate(allowed) if word not in allowed[:i]]
    expected = f"{', '.join(allowed[:-1])} or {allowed[-1]}" if len(allowed) > 1 else "".join(allowed)
    return f"{found['key']}: got {found['value']}; expected {expected}"


def one_line(err: Exception, valid_keys: list[str] | None = None) -> str:
    """jsonargparse's multi-line parse errors as one line (`model.arch.d_model: expected int, got None`),
    with the closest valid key for an unknown one (`did you mean --model.arch.d_model?`), and a value that
    no type of a Union takes as what is allowed (`trainer.precision: got bogus; expected 64, ... or null`)."""
    text = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
    union = UNION.search(text)
    if union:
        return _allowed_values(union)
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


def max_time_seconds(max_time: Any) -> float | None:
    """trainer.max_time as seconds: "DD:HH:MM:SS", or a mapping of days/hours/minutes/seconds (Lightning's
    forms); None: no limit."""
    if max_time is None:
        return None
    if isinstance(max_time, str):
        try:
            days, hours, minutes, seconds = (float(part) for part in max_time.split(":"))
        except ValueError:
            raise UserError(f"trainer.max_time={max_time!r}: must be DD:HH:MM:SS, e.g. 00:01:30:00") from None
        return ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    if isinstance(max_time, dict):
        units = {"days": 86400, "hours": 3600, "minutes": 60, "seconds": 1}
        unknown = set(max_time) - set(units)
        if unknown:
            raise UserError(
                f"trainer.max_time: unknown unit {sorted(unknown)[0]!r} (days, hours, minutes, seconds)"
            )
        return sum(float(value) * units[unit] for unit, value in max_time.items())
    raise UserError(f"trainer.max_time={max_time!r}: must be DD:HH:MM:SS or a mapping of days/hours/...")
