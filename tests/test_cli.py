"""Training through `lmproject fit`: in-process (exact resume, Ctrl-C, NaN stop, token budget, bad input),
then `fit` and `validate` with configs/smoke.yaml as a user runs them, in separate processes."""

import csv
import json
import math
import os
import signal
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from tiny_fit import BATCH, TINY_ARCH, PoisonAt, SigintAt, fails, train_losses, write_config, write_tokens

from lmproject.accounting import train_flops_per_token
from lmproject.errors import UserError
from lmproject.lit.checkpoints import AtomicCheckpointIO
from lmproject.lit.commands import main
from lmproject.nn import ModelConfig
from lmproject.training.checkpoint import DIGEST_KEY

SMOKE = Path(__file__).resolve().parent.parent / "configs" / "smoke.yaml"

pytestmark = pytest.mark.usefixtures("one_thread")


class DoubleSigintAt(SigintAt):
    """Presses Ctrl-C twice after optimizer step `step`: abort at once."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)


class InfGradientAt(L.Callback):
    """Makes one gradient infinite during optimizer step `step` (what fp16 overflow does)."""

    def __init__(self, step: int):
        self.step = step

    def on_after_backward(self, trainer, pl_module):
        if trainer.global_step == self.step:
            pl_module.model.lm_head.weight.grad.fill_(math.inf)


@pytest.fixture
def data_dir(tmp_path):
    write_tokens(tmp_path)
    return tmp_path


@pytest.mark.slow
def test_ctrl_c_then_resume_from_last_continues_the_exact_trajectory(data_dir):
    steps = 8
    budget = ["--train_tokens", str(steps * BATCH * TINY_ARCH["context_length"])]
    straight = data_dir / "straight"
    main(["fit", "--config", str(write_config(data_dir, straight)), *budget])

    resumed = data_dir / "resumed"
    config = write_config(data_dir, resumed, callbacks=[(SigintAt, {"step": 3})])
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), *budget])
    assert exit_info.value.code == 130
    interrupted_at = torch.load(resumed / "checkpoints/last.ckpt", weights_only=True)["global_step"]
    assert interrupted_at == 3  # stopped right after the step where Ctrl-C arrived, not at the end
    main(["fit", "--config", str(write_config(data_dir, resumed)), *budget, "--ckpt_path", "last"])

    expected = train_losses(straight)
    assert len(expected) == steps
    assert train_losses(resumed) == expected  # bitwise: same batches, weights, optimizer state, lr
    final = torch.load(resumed / "checkpoints/last.ckpt", weights_only=True)
    assert final["global_step"] == steps
    straight_weights = torch.load(straight / "checkpoints/last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(straight_weights[k], v) for k, v in final["state_dict"].items())


def test_a_second_ctrl_c_aborts_with_status_130_without_a_checkpoint(data_dir):
    run = data_dir / "run"
    config = write_config(data_dir, run, callbacks=[(DoubleSigintAt, {"step": 1})])
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--trainer.max_steps", "8"])
    assert exit_info.value.code == 130
    assert not (run / "checkpoints").exists()  # aborted before the first periodic checkpoint (step 2)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Ctrl-C handler restored


def test_token_budget_counts_gradient_accumulation_and_mfu_uses_the_accounting_flops(data_dir):
    run = data_dir / "run"
    tokens = 6 * BATCH * TINY_ARCH["context_length"]
    throughput = ["--throughput.peak_flops", "1e9"]
    main(["fit", "--config", str(write_config(data_dir, run)), "--train_tokens", str(tokens),
          "--trainer.accumulate_grad_batches", "2", *throughput, "--ckpt_path", "last"])  # fmt: skip
    # (--ckpt_path last with no checkpoint yet starts fresh, as experiments.mk relies on)
    assert torch.load(run / "checkpoints/last.ckpt", weights_only=True)["global_step"] == 3

    rows = [r for r in csv.DictReader((run / "logs/version_0/metrics.csv").open()) if r["throughput/mfu"]]
    assert len(rows) == 3  # log_every_n_steps 1: one row per optimizer step
    for row in rows:
        expected = (
            float(row["throughput/tokens_per_s"]) * train_flops_per_token(ModelConfig(**TINY_ARCH)) / 1e9
        )
        assert float(row["throughput/mfu"]) == pytest.approx(expected, rel=1e-5)
    elapsed = [float(row["time/elapsed_s"]) for row in rows]  # the wall clock of `lmproject plot`
    assert 0 < elapsed[0] < elapsed[1] < elapsed[2]


@pytest.mark.slow
def test_training_values_are_logged_together_every_log_every_n_steps(data_dir):
    """Loss, learning rate and gradient norm are logged only on the steps that write logs (self.log is
    slow), and all three land on each of those rows."""
    run = data_dir / "run"
    main(["fit", "--config", str(write_config(data_dir, run)), "--trainer.max_steps", "10",
          "--trainer.log_every_n_steps", "3", "--trainer.val_check_interval", "5"])  # fmt: skip
    rows = [r for r in csv.DictReader((run / "logs/version_0/metrics.csv").open()) if r["train/loss"]]
    assert [int(r["step"]) for r in rows] == [2, 5, 8]
    for row in rows:
        assert math.isfinite(float(row["train/loss"]))
        assert float(row["lr"]) > 0 and float(row["grad_norm"]) > 0


@pytest.mark.slow
@pytest.mark.parametrize("accumulation", [1, 2])  # checked once per optimizer step, not per micro-batch
def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(data_dir, capsys, accumulation):
    run = data_dir / "run"
    config = write_config(data_dir, run, callbacks=[(PoisonAt, {"step": 3})])  # checkpoints every 2 steps
    argv = ["fit", "--config", str(config), "--trainer.max_steps", "8"]
    message = fails([*argv, "--trainer.accumulate_grad_batches", str(accumulation)], capsys, status=3)
    assert "loss is nan at step 3" in message and "last.ckpt" in message
    last = torch.load(run / "checkpoints/last.ckpt", weights_only=True)
    assert last["global_step"] == 2
    assert all(torch.isfinite(w).all() for w in last["state_dict"].values())


@pytest.mark.slow
def test_16_mixed_skips_a_step_with_inf_gradients_instead_of_stopping(data_dir):
    run = data_dir / "run"
    config = write_config(data_dir, run, callbacks=[(InfGradientAt, {"step": 2})])
    fp16 = {"class_path": "lightning.pytorch.plugins.MixedPrecision",
            "init_args": {"precision": "16-mixed", "device": "cpu"}}  # fmt: skip
    atomic = {"class_path": "lmproject.lit.checkpoints.AtomicCheckpointIO"}
    main(["fit", "--config", str(config), "--trainer.max_steps", "4", "--trainer.precision", "null",
          "--trainer.plugins", json.dumps([fp16, atomic])])  # fmt: skip
    last = torch.load(run / "checkpoints/last.ckpt", weights_only=True)
    assert last["global_step"] == 4
    assert all(torch.isfinite(w).all() for w in last["state_dict"].values())


@pytest.mark.slow
def test_bad_input_gets_one_line_errors(data_dir, capsys):
    run = data_dir / "run"
    config = str(write_config(data_dir, run))
    assert "nonsense" in fails(["fit", "--config", config, "--model.nonsense", "1"], capsys)
    assert "d_model" in fails(["fit", "--config", config, "--model.arch.d_model", "null"], capsys)
    assert "train_tokens or trainer.max_steps" in fails(
        ["fit", "--config", config, "--trainer.max_steps", "2", "--train_tokens", "1000"], capsys
    )
    assert (
        "train.npy: token id 32 at position 32 is not below the vocab_size=32, nor are 1,972 more, up to "
        "token id 63" in fails(["fit", "--config", config, "--model.arch.vocab_size", "32"], capsys)
    )

    for scoring in ("validate", "test"):
        assert fails([scoring, "--config", config], capsys).endswith(
            f"{scoring} needs --ckpt_path (last, or a .ckpt file): "
            "without it the untrained model would be scored"
        )
    assert "--ckpt_path last: no last checkpoint" in fails(
        ["validate", "--config", config, "--ckpt_path", "last"], capsys
    )

    main(["fit", "--config", config, "--trainer.max_steps", "2"])
    checkpoint = run / "checkpoints/last.ckpt"
    assert fails(["fit", "--config", config, "--trainer.max_steps", "4"], capsys).endswith(
        f"{run}/checkpoints has checkpoints: resume with --ckpt_path last, "
        "or choose another --trainer.default_root_dir"
    )
    assert sorted(p.name for p in checkpoint.parent.iterdir()) == ["epoch=0-step=2.ckpt", "last.ckpt"]
    main(["test", "--config", config, "--ckpt_path", str(checkpoint)])  # the good checkpoint loads
    message = fails(
        ["validate", "--config", config, "--model.arch.d_model", "64", "--ckpt_path", str(checkpoint)], capsys
    )
    assert "different architecture: d_model=32 in the checkpoint, 64 in the config" in message
    bare = torch.load(checkpoint, weights_only=True)
    del bare["hyper_parameters"], bare[DIGEST_KEY]  # e.g. saved by other code: only the tensors can tell
    torch.save(bare, data_dir / "bare.ckpt")
    message = fails(
        [
            "validate",
            "--config",
            config,
            "--model.arch.d_model",
            "64",
            "--ckpt_path",
            str(data_dir / "bare.ckpt"),
        ],
        capsys,
    )
    assert message.endswith(
        "bare.ckpt: checkpoint of a different architecture: "
        "model.token_embeddings.weight (64, 32) in the checkpoint, (64, 64) in the config; "
        "model.layers.0.ln1.weight (32,) in the checkpoint, (64,) in the config; "
        "model.layers.0.attn.q_proj.weight (32, 32) in the checkpoint, (64, 64) in the config (and 18 more)"
    )
    corrupt, empty = data_dir / "corrupt.ckpt", data_dir / "empty.ckpt"
    corrupt.write_bytes(checkpoint.read_bytes()[:1000])
    empty.write_bytes(b"")
    intact = data_dir / "bare.ckpt"  # an intact checkpoint beside them: the message offers it
    for damaged in (corrupt, empty):
        assert fails(["validate", "--config", config, "--ckpt_path", str(damaged)], capsys).endswith(
            f"{damaged}: not a readable checkpoint (truncated or not a torch checkpoint); "
            f"the newest intact one is {intact} (step 2): --ckpt_path {intact}"
        )


@pytest.mark.slow
def test_a_wrong_key_gets_one_line_with_the_closest_valid_key(data_dir, capsys):
    """Any unknown key, on the command line or in a config file, is refused with the valid key it most
    likely means, before anything runs."""
    run = data_dir / "run"
    config = str(write_config(data_dir, run))
    message = fails(["fit", "--config", config, "--model.d_model", "64"], capsys)
    assert "d_model" in message and message.endswith("(did you mean --model.arch.d_model?)")
    assert fails(["fit", "--config", config, "--model.lr_mx", "0.1"], capsys).endswith(
        "(did you mean --model.lr_max?)"
    )
    misplaced = data_dir / "misplaced.yaml"
    misplaced.write_text(yaml.safe_dump({"model": {"d_model": 32}}))
    assert fails(["fit", "-c", config, "-c", str(misplaced)], capsys).endswith(
        "(did you mean --model.arch.d_model?)"
    )
    assert not run.exists()


def test_help_lists_the_architecture_flags_with_their_meaning(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--help"])
    assert exit_info.value.code == 0
    shown = " ".join(capsys.readouterr().out.split())
    assert "--model.arch.d_model D_MODEL width of the residual stream. (required, type: int)" in shown
    assert "--model.arch.qk_norm {true,false}" in shown and "--model.lr_max LR_MAX" in shown


@pytest.mark.slow
def test_checkpoints_keep_the_architecture_as_plain_data(data_dir, capsys):
    """A checkpoint's hyperparameters hold model.arch as a dict (weights_only loading, a readable
    hparams.yaml) from which load_from_checkpoint rebuilds the ModelConfig, and by which a checkpoint is
    compared with the configured model."""
    from lmproject.lit.module import LanguageModel

    run = data_dir / "run"
    config = str(write_config(data_dir, run))
    main(["fit", "--config", config, "--trainer.max_steps", "2"])
    checkpoint = torch.load(run / "checkpoints/last.ckpt", weights_only=True)
    assert checkpoint["hyper_parameters"]["arch"] == asdict(ModelConfig(**TINY_ARCH))
    assert yaml.safe_load((run / "logs/version_0/hparams.yaml").read_text())["arch"]["d_model"] == 32
    assert yaml.safe_load((run / "logs/version_0/config.yaml").read_text())["model"]["arch"] == asdict(
        ModelConfig(**TINY_ARCH)
    )  # the run's config, as `fit --config` reads it again
    loaded = LanguageModel.load_from_checkpoint(run / "checkpoints/last.ckpt", map_location="cpu")
    assert loaded.model.config == ModelConfig(**TINY_ARCH)

    message = fails(
        ["validate", "--config", config, "--model.arch.num_layers", "1", "--ckpt_path", "last"], capsys
    )
    assert "different architecture: num_layers=2 in the checkpoint, 1 in the config" in message


def test_a_failed_checkpoint_save_leaves_the_previous_checkpoint_intact(tmp_path):
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": 1}, path)
    with pytest.raises(Exception, match="pickle"):
        AtomicCheckpointIO().save_checkpoint({"step": 2, "unpicklable": lambda: None}, path)
    assert torch.load(path, weights_only=True) == {"step": 1, DIGEST_KEY: "sha256"}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left behind


def test_a_checkpoint_save_on_a_full_disk_is_one_line_naming_the_checkpoint(tmp_path, monkeypatch):
    import errno

    from lmproject.training import checkpoint as checkpoint_module

    def full_disk(state, file):
        raise OSError(errno.ENOSPC, "No space left on device")

    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": 1}, path)
    monkeypatch.setattr(checkpoint_module, "save_with_digest", full_disk)
    with pytest.raises(UserError) as err:
        AtomicCheckpointIO().save_checkpoint({"step": 2}, path)
    assert str(err.value) == f"{path}: cannot write it: the disk is full"
    assert torch.load(path, weights_only=True)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def lmproject(*args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "lmproject.lit.commands", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_smoke_config_fits_and_validates_end_to_end(tmp_path):
    ids = np.random.default_rng(0).integers(0, 512, 20_000).astype(np.uint16)
    np.save(tmp_path / "train.npy", ids)
    np.save(tmp_path / "valid.npy", ids[:2000])
    data = ["--data.train_path", "train.npy", "--data.val_path", "valid.npy"]
    fit = lmproject("fit", "--config", str(SMOKE), *data, "--train_tokens", "4096", cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr[-3000:]
    assert "max_steps=8" in fit.stderr + fit.stdout  # 4096 tokens / (8 x 64) per step

    validate = lmproject("validate", "--config", str(SMOKE), *data, "--ckpt_path", "last", cwd=tmp_path)
    assert validate.returncode == 0, validate.stderr[-3000:]
    assert "val/perplexity" in validate.stdout
    rows = list(csv.DictReader((tmp_path / "runs/smoke/logs/version_1/metrics.csv").open()))
    assert 5.5 < float(rows[-1]["val/loss"]) < 7.0  # uniform random ids: about ln(512) = 6.24

    missing = lmproject("validate", "--config", str(SMOKE), "--ckpt_path", "last", cwd=tmp_path)
    assert missing.returncode == 2
    assert (
        missing.stderr.strip().splitlines()[-1]
        == "lmproject: error: data/smoke/valid.npy: token file not found (data.val_path); "
        "make it with `make smoke-data`"
    )
