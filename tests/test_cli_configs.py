"""The shipped configs build the intended runs; wandb goes offline without a key; bf16 falls back on CPU."""

import csv
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import yaml
from shipped_configs import CONFIGS, build
from tiny_fit import fails, write_config, write_tokens
from tiny_run import make_run

from lmproject.accounting import parameter_counts
from lmproject.lit import cli
from lmproject.lit.loggers import WandbLogger
from lmproject.nn import ModelConfig
from lmproject.tools import plot

pytestmark = pytest.mark.usefixtures("one_thread")

SHIPPED = sorted(str(path.relative_to(CONFIGS)) for path in CONFIGS.rglob("*.yaml"))
BASES = [name for name in SHIPPED if {"model", "data"} <= set(yaml.safe_load((CONFIGS / name).read_text()))]
OVERLAYS = {
    None: {"norm": "pre", "position": "rope", "ffn": "swiglu", "d_ff": 1344},
    "no_rmsnorm": {"norm": "none"},
    "post_norm": {"norm": "post"},
    "nope": {"position": "none"},
    "silu": {"ffn": "silu", "d_ff": 2048},
}


@pytest.mark.slow
@pytest.mark.parametrize(
    "configs",
    [[name] for name in BASES] + [["tinystories.yaml", name] for name in SHIPPED if name not in BASES],
)
def test_every_shipped_config_parses_with_its_architecture_under_model_arch(configs):
    """Each base config alone, each overlay (ablations, recipes, sweeps, wandb) on tinystories.yaml: parsed
    and checked as `fit` does it, the architecture a valid ModelConfig that the data section is linked to."""
    config = cli.parse_run_config([str(CONFIGS / name) for name in configs], [])
    arch = ModelConfig(**config.model.arch.as_dict())
    assert (config.data.vocab_size, config.data.context_length) == (arch.vocab_size, arch.context_length)


@pytest.mark.parametrize(
    ("config", "vocab_size", "data"),
    [
        ("tinystories.yaml", 10_000, "tinystories"),
        pytest.param("owt.yaml", 32_000, "owt", marks=pytest.mark.slow),
    ],
)
def test_cs336_configs_build_the_handout_model_with_vocab_and_context_set_once(config, vocab_size, data):
    built = build(config)
    arch = built.model.model.config
    expected = {"vocab_size": vocab_size, "context_length": 256, "d_model": 512, "num_layers": 4,
                "num_heads": 16, "d_ff": 1344, "rope_theta": 10_000.0, **OVERLAYS[None]}  # fmt: skip
    assert {k: getattr(arch, k) for k in expected} == expected
    assert (built.datamodule.vocab_size, built.datamodule.context_length) == (vocab_size, 256)  # linked
    assert built.datamodule.train_path == Path(f"data/{data}/train.npy")
    assert built.config.train_tokens == 327_680_000
    assert built.config.trainer.precision == ("bf16-mixed" if cli.cpu_supports_bf16() else "32-true")
    assert sum(p.numel() for p in built.model.parameters()) == sum(parameter_counts(arch).values())


@pytest.mark.parametrize("overlay", [name for name in OVERLAYS if name])
def test_ablation_overlays_change_only_their_switch(overlay):
    base, ablated = (
        asdict(build("smoke.yaml").model.model.config),
        asdict(build("smoke.yaml", f"ablations/{overlay}.yaml").model.model.config),
    )
    changed = {k: ablated[k] for k in ablated if ablated[k] != base[k]}
    assert changed == OVERLAYS[overlay]


def test_smoke_config_builds_a_small_model():
    smoke = build("smoke.yaml")
    assert sum(p.numel() for p in smoke.model.parameters()) < 1_000_000


def test_wandb_overlay_is_offline_without_an_api_key_and_logs_under_the_run(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    csv, logger = build("smoke.yaml", "wandb.yaml").trainer.loggers
    assert isinstance(logger, WandbLogger) and logger._offline
    assert logger.save_dir == csv.save_dir == "runs/smoke"
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    assert not build("smoke.yaml", "wandb.yaml").trainer.loggers[1]._offline


@pytest.mark.slow
def test_a_wandb_run_also_writes_the_metrics_csv_that_plot_reads(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    config = make_run(tmp_path, steps=1)
    root = tmp_path / "wandb_run"
    cli.main(["fit", "--config", str(config), "--config", str(CONFIGS / "wandb.yaml"),
              "--trainer.default_root_dir", str(root), "--trainer.max_steps", "2",
              "--trainer.log_every_n_steps", "1"])  # fmt: skip
    with open(root / "logs" / "version_0" / "metrics.csv") as rows:
        assert [row["step"] for row in csv.DictReader(rows) if row["train/loss"]] == ["0", "1"]
    plot.main([str(root), "--out", str(tmp_path / "curves.png")])
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_bf16_falls_back_to_float32_on_a_cpu_without_it_saying_so_in_one_line(monkeypatch, capsys):
    monkeypatch.setattr(cli, "cpu_supports_bf16", lambda: False)
    built = build("smoke.yaml", extra=["--trainer.accelerator", "cpu", "--trainer.precision", "bf16-mixed"])
    assert built.trainer.precision == "32-true"
    assert capsys.readouterr().err.splitlines()[0] == (
        "lmproject: this CPU has no native bfloat16: running in float32 (precision 32-true, not bf16-mixed)"
    )


@pytest.mark.parametrize(
    ("config", "shape", "parameters", "batch"),
    [
        ("gpt2_small.yaml", (768, 12, 12, 2048), 134_105_856, 32),
        ("gpt2_medium.yaml", (1024, 24, 16, 2752), 369_148_928, 16),
    ],
)
def test_gpt2_configs_build_gpt2_shapes_on_owt_with_their_commented_figures(config, shape, parameters, batch):
    with torch.device("meta"):  # shapes only: no memory, no initialization
        built = build(config)
    arch = built.model.model.config
    assert (arch.d_model, arch.num_layers, arch.num_heads, arch.d_ff) == shape
    assert (arch.vocab_size, arch.context_length) == (32_000, 1024)
    assert built.datamodule.train_path == Path("data/owt/train.npy")
    assert built.datamodule.batch_size == batch
    assert sum(p.numel() for p in built.model.parameters()) == parameters
    assert f"parameters {parameters:,}" in (CONFIGS / config).read_text()  # the comment states the count


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "{path}: is empty (expected YAML settings"),
        ("# only a comment\n", "{path}: is empty (expected YAML settings"),
        ("model:\n  arch: {d_model: 32\n", "{path}: not valid YAML: line 3, column 1: expected ',' or '}}'"),
        ("model:\n  arch: {d_model: 64, d_model: 32}\n", "{path}: line 2: key 'd_model' is given twice"),
        ("trainer:\n  max_steps: 1\nmodel:\n  lr_max: 1\ntrainer: {}\n", "{path}: line 5: key 'trainer' is"),
    ],
)
def test_an_empty_broken_or_twice_keyed_config_file_is_named_with_its_line(tmp_path, capsys, text, message):
    """(An empty file was "Unexpected config:", a syntax error pointed at "<unicode string>", and of two
    equal keys the last silently won.)"""
    path = tmp_path / "c.yaml"
    path.write_text(text)
    assert message.format(path=f"--config {path}") in fails(["fit", "--config", str(path)], capsys)
    for inline in (["--config", "{model: {lr_max: 1, lr_max: 2}}"], ["--model={lr_max: 1, lr_max: 2}"]):
        assert "(inline YAML): line 1: key 'lr_max' is given twice" in fails(["fit", *inline], capsys)


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--trainer.precision", "bogus", "trainer.precision: got bogus; expected 64, 32, 16, 'transformer-"),
        ("--train_tokens", "1e30", "train_tokens: got 1e30; expected an integer or null"),
    ],
)  # fmt: skip
def test_a_value_outside_a_union_says_what_is_allowed_in_one_line(tmp_path, capsys, flag, value, message):
    """(jsonargparse's message listed every subtype and every subtype's error.)"""
    write_tokens(tmp_path)
    line = fails(["fit", "--config", str(write_config(tmp_path, tmp_path / "run")), flag, value], capsys)
    assert line == f"lmproject: error: {line.removeprefix('lmproject: error: ')}" and message in line
    assert "Subtypes" not in line and "Errors" not in line
