"""DDP on CPU (gloo, 2 processes) via `lmproject fit`: each rank draws its own batches, weights stay equal."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import torch
from test_training_cli import PoisonAt, write_config, write_tokens


class RecordRank(L.Callback):
    """Writes this rank's training batches (first token of each window) and a hash of its final weights."""

    def __init__(self, out_dir: str):
        self.out_dir, self.batches = Path(out_dir), []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches.append(batch[0][:, 0].tolist())

    def on_train_end(self, trainer, pl_module):
        weights = b"".join(p.detach().numpy().tobytes() for p in pl_module.parameters())
        record = {
            "world_size": trainer.world_size,
            "batches": self.batches,
            "weights": hashlib.sha256(weights).hexdigest(),
        }
        (self.out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


def fit_ddp(tmp_path, callbacks, steps):
    """`lmproject fit` of the tiny test model with DDP over 2 CPU processes."""
    write_tokens(tmp_path)
    config = write_config(tmp_path, tmp_path / "run", callbacks=callbacks)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "lmproject.cli", "fit", "--config", str(config),
               "--trainer.max_steps", str(steps), "--trainer.val_check_interval", str(steps),
               "--trainer.strategy", "ddp", "--trainer.devices", "2"]  # fmt: skip
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def test_two_process_ddp_draws_different_batches_and_keeps_weights_equal(tmp_path):
    done = fit_ddp(tmp_path, [(RecordRank, {"out_dir": str(tmp_path)})], steps=3)
    assert done.returncode == 0, done.stderr[-3000:]

    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert len(ranks[0]["batches"]) == len(ranks[1]["batches"]) == 3
    assert all(a != b for a, b in zip(ranks[0]["batches"], ranks[1]["batches"], strict=True))
    assert ranks[0]["weights"] == ranks[1]["weights"]
    assert torch.load(tmp_path / "run/checkpoints/last.ckpt", weights_only=True)["global_step"] == 3


def test_a_nan_loss_on_one_rank_stops_every_rank_with_the_step_named(tmp_path):
    done = fit_ddp(tmp_path, [(PoisonAt, {"step": 3, "rank": 1})], steps=6)  # checkpoints every 2 steps
    assert done.returncode == 3, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("lmproject: error: ")]
    assert errors and all("at step 3" in line for line in errors)
    assert torch.load(tmp_path / "run/checkpoints/last.ckpt", weights_only=True)["global_step"] == 2
