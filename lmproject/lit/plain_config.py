"""A run's config read as plain YAML, without LightningCLI and so without Lightning: the `--config` files
merged as LightningCLI layers them, the command line's `--model.*`, `--data.*`, `--trainer.*` and
`--checkpoint.*` overrides on top, and the run's directories as `fit` lays them out. `lmproject export` and
`evaluate` read runs this way, and lmproject.lit.early_checks checks the files of fit/validate/test/predict
with it before Lightning loads (Lightning alone takes seconds to import)."""

from __future__ import annotations

import re
from dataclasses import MISSING, asdict, fields
from pathlib import Path
from typing import Any

import yaml

from lmproject.accounting import config_settings, load_config_file, merge_configs
from lmproject.errors import UserError
from lmproject.lit.run_config import checked_config_file
from lmproject.nn.config import ModelConfig
from lmproject.settings import check_settings, did_you_mean
from lmproject.training.settings import default_settings

SECTIONS = ("model", "data", "trainer", "checkpoint")
DEFAULT_RUN_DIR = "runs/default"  # trainer.default_root_dir when a config has none
CONFIG_FLAGS = ("--config", "-c")
NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def flag_values(words: list[str], flags: tuple[str, ...]) -> list[str]:
    """What each `FLAG X` or `FLAG=X` in words gives, in order, for FLAG in flags (--config: every config)."""
    values = []
    for i, word in enumerate(words):
        flag, equals, value = word.partition("=")
        if flag in flags and equals:
            values.append(value)
        elif word in flags and i + 1 < len(words):
            values.append(words[i + 1])
    return values


def _value(text: str) -> Any:
    """A command-line value as LightningCLI reads it: YAML (true, null, [0.9, 0.95], 64), and numbers in
    scientific notation, which YAML 1.1 leaves as strings (1e-3)."""
    try:
        value = yaml.safe_load(text) if text else text
    except yaml.YAMLError:  # e.g. a path with a colon and a bracket: a string, as for a str setting
        return text
    return float(value) if isinstance(value, str) and NUMBER.fullmatch(value) else value


def overrides(words: list[str], strict: bool = True) -> dict:
    """The `--section.key value` and `--section.key=value` words of SECTIONS as a nested mapping. strict:
    any other word is an error (export); else other words are passed over (fit's own flags)."""
    found: dict = {}
    i = 0
    while i < len(words):
        word = words[i]
        key, equals, text = word.removeprefix("--").partition("=")
        if word.startswith("--") and key.split(".")[0] in SECTIONS and "." in key:
            if not equals:
                if i + 1 >= len(words):
                    raise UserError(f"{word}: expected a value")
                text, i = words[i + 1], i + 1
            *parents, name = key.split(".")
            node = found
            for part in parents:
                node = node.setdefault(part, {})
            node[name] = _value(text)
        elif strict:
            raise UserError(f"{word}: not a setting (--model.*, --data.*, --trainer.* or --checkpoint.*)")
        i += 1
    return found


def read_run_config(configs: list[str], override: dict) -> dict:
    """The config files (paths, shipped names or inline YAML) merged in order, then `override`'s values."""
    merged: dict = {}
    for value in configs:
        path = checked_config_file(value)
        if Path(path).exists():
            layer = load_config_file(Path(path))
        else:  # inline YAML, e.g. --config '{trainer: {max_steps: 10}}'
            try:
                layer = yaml.safe_load(path)
            except yaml.YAMLError:
                layer = None
            if not isinstance(layer, dict):
                raise UserError(f"--config {value}: neither a file nor a YAML mapping")
        merged = merge_configs(merged, layer)
    return merge_configs(merged, override)


def read_run(configs: list[str], words: list[str]) -> tuple[dict, ModelConfig]:
    """The run's config (the files, then the overrides in words, strictly) and its checked architecture."""
    config = read_run_config(configs, overrides(words))
    return config, model_arch(config, " + ".join(configs))


def run_dir(config: dict) -> Path:
    """trainer.default_root_dir, as fit completes it."""
    return Path((config.get("trainer") or {}).get("default_root_dir") or DEFAULT_RUN_DIR)


def checkpoint_dir(config: dict) -> Path:
    """Where the run's checkpoints are: checkpoint.dirpath, else checkpoints/ in the run directory."""
    dirpath = (config.get("checkpoint") or {}).get("dirpath")
    return Path(dirpath) if dirpath else run_dir(config) / "checkpoints"


def data_section(config: dict) -> dict:
    """The `data:` section (a mapping, possibly empty)."""
    data = config.get("data")
    return data if isinstance(data, dict) else {}


def tokenizer_dir(data: dict) -> Path:
    """data.tokenizer_dir, else tokenizer/ beside data.train_path (TokenDataModule's default)."""
    if data.get("tokenizer_dir"):
        return Path(data["tokenizer_dir"])
    return Path(str(data.get("train_path", ""))).parent / "tokenizer"


def model_arch(config: dict, names: str) -> ModelConfig:
    """The run's architecture, with the model, data and trainer settings checked as `fit` checks them;
    `names` (the config files) heads the errors."""
    arch, defaults = config_settings(config, names)
    missing = [
        f"model.arch.{f.name}" for f in fields(ModelConfig) if f.default is MISSING and f.name not in arch
    ]
    if missing:
        raise UserError(f"{names}: {', '.join(missing)} missing")
    model = ModelConfig(**arch)
    check_model_section(model, defaults["model"])
    return model


def check_model_section(arch: ModelConfig, settings: dict) -> None:
    """The checks `lmproject fit` makes on the model section besides the architecture (which ModelConfig
    checks; the training settings' defaults fill the gaps)."""
    defaults = default_settings()
    unknown = [name for name in settings if name not in defaults]
    if unknown:
        valid = [f"model.{name}" for name in defaults] + [f"model.arch.{name}" for name in asdict(arch)]
        raise UserError(
            f"model.{unknown[0]} is not a setting of the model (lmproject.lit.module.LanguageModel)"
            + did_you_mean(f"model.{unknown[0]}", valid)
        )
    check_settings("model", {**defaults, **settings, "arch": asdict(arch)})
