"""DDP on CPU (gloo, 2 processes) via `lmproject fit`: each rank draws its own batches, weights stay equal,
and the logged losses are those of all ranks together."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from tiny_fit import PoisonAt, RecordLosses, metric_rows, write_config, write_tokens

from lmproject.lit.commands import main

pytestmark = pytest.mark.usefixtures("one_thread")


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
            "orthogonalized": getattr(trainer.optimizers[0], "orthogonalized", None),  # Muon's share
        }
        (self.out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


def fit_ddp(tmp_path, callbacks, steps, *args, devices=2):
    """`lmproject fit` of the tiny test model with DDP over `devices` CPU processes (args: more options)."""
    write_tokens(tmp_path)
    config = write_config(tmp_path, tmp_path / "run", callbacks=callbacks)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "lmproject.lit.commands", "fit", "--config", str(config),
               "--trainer.max_steps", str(steps), "--trainer.val_check_interval", str(steps),
               "--trainer.strategy", "ddp", "--trainer.devices", str(devices), *args]  # fmt: skip
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_process_ddp_draws_different_batches_and_keeps_weights_equal(tmp_path):
    done = fit_ddp(tmp_path, [(RecordRank, {"out_dir": str(tmp_path)})], steps=3)
    assert done.returncode == 0, done.stderr[-3000:]

    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert len(ranks[0]["batches"]) == len(ranks[1]["batches"]) == 3
    assert all(a != b for a, b in zip(ranks[0]["batches"], ranks[1]["batches"], strict=True))
    assert ranks[0]["weights"] == ranks[1]["weights"]
    assert torch.load(tmp_path / "run/checkpoints/last.ckpt", weights_only=True)["global_step"] == 3


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.parametrize("devices", [2, 3])
def test_muon_under_ddp_shares_the_work_and_steps_every_rank_alike(tmp_path, devices):
    # Each rank draws its own batches: unreduced gradients would give each rank its own Muon update.
    recorder = [(RecordRank, {"out_dir": str(tmp_path)})]
    done = fit_ddp(tmp_path, recorder, 3, "--model.optimizer", "muon", devices=devices)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Muon  14 tensors" in done.stdout + done.stderr  # the split is logged (once, by rank 0)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(devices)]
    assert ranks[0]["batches"] != ranks[1]["batches"]
    assert all(rank["weights"] == ranks[0]["weights"] for rank in ranks)  # bit-identical
    # 14 matrices in 2 batches (8 of 32x32; 6 of 64x32 with w2 transposed): round-robin in each
    assert [rank["orthogonalized"] for rank in ranks] == {2: [7, 7], 3: [3 + 2, 3 + 2, 2 + 2]}[devices]
    state = torch.load(tmp_path / "run/checkpoints/last.ckpt", weights_only=True)["optimizer_states"][0]
    assert sum("momentum_buffer" in s for s in state["state"].values()) == 14  # Muon stepped the matrices


@pytest.mark.slow
@pytest.mark.multiprocess
def test_a_nan_loss_on_one_rank_stops_every_rank_with_the_step_named(tmp_path):
    done = fit_ddp(tmp_path, [(PoisonAt, {"step": 3, "rank": 1})], steps=6)  # checkpoints every 2 steps
    assert done.returncode == 3, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("lmproject: error: ")]
    assert errors and all("at step 3" in line for line in errors)
    assert torch.load(tmp_path / "run/checkpoints/last.ckpt", weights_only=True)["global_step"] == 2


@pytest.mark.slow
@pytest.mark.multiprocess
def test_ddp_logs_the_mean_train_loss_of_all_ranks_and_a_val_loss_independent_of_the_device_count(tmp_path):
    windows = ["--data.val_windows", "7"]  # odd: 2 ranks cannot split it evenly
    done = fit_ddp(tmp_path, [(RecordLosses, {"out_dir": str(tmp_path)})], 2, *windows,
                   "--trainer.accumulate_grad_batches", "2")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]

    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    run = tmp_path / "run"
    rows = metric_rows(run, "train/loss")
    assert [int(r["step"]) for r in rows] == [0, 1]
    for row in rows:
        losses = [loss for rank in ranks for loss in rank[row["step"]]]  # 2 micro-batches on each rank
        assert len(losses) == 4
        assert float(row["train/loss"]) == pytest.approx(sum(losses) / 4, rel=1e-6)

    ddp_val = float(metric_rows(run, "val/loss")[-1]["val/loss"])  # after the last step
    main(["validate", "--config", str(tmp_path / "run.yaml"), *windows, "--ckpt_path", "last"])
    [one_device_val] = [float(r["val/loss"]) for r in metric_rows(run, "val/loss", version=1)]
    assert ddp_val == pytest.approx(one_device_val, rel=1e-6)


@pytest.mark.parametrize("texts", [["Once upon a time", "Tom and his dog", "The sun"], ["Once upon a time"]])
@pytest.mark.slow
@pytest.mark.multiprocess
def test_predict_under_ddp_writes_every_prompt_once_in_order_as_one_process_does(tmp_path, texts):
    """Each rank samples its share of the prompts (3 prompts over 2 ranks; 1 prompt: the second rank samples
    a copy); the JSONL and the printed completions hold each prompt's once, as on one process."""
    from tiny_run import make_run

    config = make_run(tmp_path, steps=1)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(texts) + "\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent), "OMP_NUM_THREADS": "1"}
    outputs = {}
    for devices, strategy in (("1", "auto"), ("2", "ddp")):
        out = tmp_path / f"devices{devices}.jsonl"
        command = [sys.executable, "-m", "lmproject.lit.commands", "predict", "--config", str(config),
                   "--ckpt_path", "last", "--prompts_file", str(prompts), "--max_new_tokens", "6",
                   "--output", str(out), "--trainer.devices", devices,
                   "--trainer.strategy", strategy]  # fmt: skip
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        outputs[devices] = ([json.loads(line) for line in out.read_text().splitlines()], result.stdout)
    (single, single_printed), (ddp, ddp_printed) = outputs["1"], outputs["2"]
    assert [r["prompt"] for r in ddp] == texts
    assert ddp == single
    assert ddp_printed == single_printed


@pytest.mark.slow
def test_a_process_group_the_caller_made_outlives_the_command(tmp_path):
    """run_lightning leaves only the process group it made: a script that joined one first keeps it."""
    write_tokens(tmp_path)
    config = write_config(tmp_path, tmp_path / "run")
    torch.distributed.init_process_group("gloo", store=torch.distributed.HashStore(), rank=0, world_size=1)
    try:
        main(
            [
                "fit",
                "--config",
                str(config),
                "--trainer.max_steps",
                "1",
                "--trainer.enable_progress_bar",
                "false",
            ]
        )
        assert torch.distributed.is_initialized()
    finally:
        torch.distributed.destroy_process_group()
