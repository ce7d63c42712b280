"""Running `lmproject` in-process on a tiny model for the CLI and Lightning tests: token files and a fit
config for it, callbacks that press Ctrl-C, poison the weights or record the losses, readers of what a run
logged, and `fails` for the one-line errors. A plain module (not a test module), so that the test modules
share it and DDP ranks can import its callbacks by class path."""

import csv
import json
import math
import os
import signal
from collections.abc import Iterable
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml

from lmproject.lit.commands import main
from lmproject.nn import cross_entropy

TINY_ARCH = {
    "vocab_size": 64,
    "context_length": 16,
    "d_model": 32,
    "num_layers": 2,
    "num_heads": 2,
    "d_ff": 64,
}
TINY_MODEL = {"arch": TINY_ARCH, "lr_max": 1e-2, "lr_min": 1e-3, "warmup_iters": 2}
BATCH = 4


class SigintAt(L.Callback):
    """Presses Ctrl-C (sends SIGINT to this process) after optimizer step `step`."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGINT)


class PoisonAt(L.Callback):
    """Makes the weights NaN after optimizer step `step` (on one DDP rank or all): the next loss is NaN."""

    def __init__(self, step: int, rank: int | None = None):
        self.step, self.rank = step, rank

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step and self.rank in (None, trainer.global_rank):
            with torch.no_grad():
                pl_module.model.lm_head.weight.fill_(math.nan)


class RecordLosses(L.Callback):
    """Writes rank{r}.json: {optimizer step: [loss of each micro-batch]}, each loss computed again from the
    batch and the weights the training step saw, independently of what the module logs."""

    def __init__(self, out_dir: str):
        self.out_dir, self.losses = Path(out_dir), {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        with torch.no_grad():
            loss = cross_entropy(pl_module.model(batch[0]), batch[1]).item()
        self.losses.setdefault(trainer.global_step, []).append(loss)

    def on_train_end(self, trainer, pl_module):
        (self.out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(self.losses))


def write_tokens(directory: Path, vocab_size: int = 64, n: int = 4000) -> None:
    """Train/valid token files with learnable structure (a noisy counter modulo the vocabulary)."""
    rng = np.random.default_rng(0)
    ids = (np.arange(n) + rng.integers(0, 2, n)) % vocab_size
    np.save(directory / "train.npy", ids.astype(np.uint16))
    np.save(directory / "valid.npy", ids[: n // 4].astype(np.uint16))


def write_config(directory: Path, run_dir: Path, callbacks: Iterable = (), model: dict | None = None) -> Path:
    """A complete fit config for a tiny model on write_tokens' files (`model` overrides some of its `model:`
    section); returns its path."""
    hooks = [{"class_path": f"{c.__module__}.{c.__name__}", "init_args": a} for c, a in callbacks]
    config = {
        "trainer": {
            "accelerator": "cpu", "devices": 1, "precision": "32-true", "default_root_dir": str(run_dir),
            "log_every_n_steps": 1, "val_check_interval": 4, "enable_progress_bar": False,
            "enable_model_summary": False, "callbacks": hooks,
        },
        "model": {**TINY_MODEL, **(model or {})},
        "data": {"train_path": str(directory / "train.npy"), "val_path": str(directory / "valid.npy"),
                 "batch_size": BATCH, "val_windows": 8},
        "checkpoint": {"every_n_train_steps": 2},
    }  # fmt: skip
    path = run_dir.parent / f"{run_dir.name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def train_losses(run_dir: Path) -> dict[int, float]:
    """{step: train/loss} over every invocation's metrics.csv in a run directory."""
    losses = {}
    for metrics in sorted(run_dir.glob("logs/version_*/metrics.csv")):
        with metrics.open() as f:
            for row in csv.DictReader(f):
                if row.get("train/loss"):
                    losses[int(row["step"])] = float(row["train/loss"])
    return losses


def fails(argv: list[str], capsys: pytest.CaptureFixture, status: int = 2) -> str:
    """Run the CLI expecting a one-line error and exit status `status`; returns the message."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == status
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("lmproject: error: ")
    return lines[-1]


def metric_rows(run_dir: Path, column: str, version: int = 0) -> list[dict]:
    """The rows of one invocation's metrics.csv that hold `column`."""
    with (run_dir / f"logs/version_{version}/metrics.csv").open() as f:
        return [row for row in csv.DictReader(f) if row.get(column)]
