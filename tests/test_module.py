"""Every logged number is what its name says: under gradient accumulation, with validation in between, on
any log interval (tests/test_cli_ddp.py covers several devices). Activation checkpointing and the chunked
loss train the same run as without them. Checkpoints of earlier versions load."""

import json
from itertools import pairwise

import lightning as L
import pytest
import torch
from tiny_fit import (
    BATCH,
    TINY_ARCH,
    RecordLosses,
    fails,
    metric_rows,
    train_losses,
    write_config,
    write_tokens,
)

from lmproject.lit.commands import main
from lmproject.lit.module import LanguageModel
from lmproject.nn import ModelConfig

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow
def test_with_accumulation_train_loss_is_the_steps_mean_and_validation_counts_optimizer_steps(tmp_path):
    write_tokens(tmp_path)
    run = tmp_path / "run"
    config = write_config(tmp_path, run, callbacks=[(RecordLosses, {"out_dir": str(tmp_path)})])
    main(["fit", "--config", str(config), "--trainer.max_steps", "4",
          "--trainer.accumulate_grad_batches", "2", "--trainer.val_check_interval", "2"])  # fmt: skip

    recorded = json.loads((tmp_path / "rank0.json").read_text())
    micro_batches = {int(step): losses for step, losses in recorded.items()}
    rows = metric_rows(run, "train/loss")
    assert [int(r["step"]) for r in rows] == [0, 1, 2, 3]  # log_every_n_steps 1: every optimizer step
    for row in rows:
        losses = micro_batches[int(row["step"])]
        assert len(losses) == 2 and losses[0] != losses[1]
        assert float(row["train/loss"]) == pytest.approx(sum(losses) / 2, rel=1e-6)
    assert float(rows[0]["lr"]) == 0.0  # the CS336 schedule: step 0 trains at lr 0
    # every 2 optimizer steps: after the 2nd and the 4th (the step column counts from 0)
    assert [int(r["step"]) for r in metric_rows(run, "val/loss")] == [1, 3]


@pytest.mark.parametrize(("log_every", "val_every"), [(1, 4), (7, 3)])
@pytest.mark.slow
def test_every_logged_row_carries_throughput_and_time_measured_for_it(tmp_path, log_every, val_every):
    write_tokens(tmp_path)
    run = tmp_path / "run"
    steps = 2 * log_every + 2
    main(["fit", "--config", str(write_config(tmp_path, run)), "--trainer.max_steps", str(steps),
          "--trainer.log_every_n_steps", str(log_every), "--trainer.val_check_interval", str(val_every),
          "--throughput.peak_flops", "1e9"])  # fmt: skip
    rows = metric_rows(run, "train/loss")
    assert [int(r["step"]) for r in rows] == list(range(log_every - 1, steps, log_every))
    assert all(r["throughput/tokens_per_s"] and r["throughput/mfu"] and r["time/elapsed_s"] for r in rows)
    elapsed = [float(r["time/elapsed_s"]) for r in rows]
    assert all(a < b for a, b in pairwise(elapsed))  # fresh on every row: never repeated
    speeds = [float(r["throughput/tokens_per_s"]) for r in rows]
    assert len(set(speeds)) == len(speeds)
    # tokens/s covers the steps since the previous row, validation excluded: not more than the wall clock
    tokens_per_row = log_every * BATCH * TINY_ARCH["context_length"]
    spans = [elapsed[0], *(b - a for a, b in pairwise(elapsed))]
    assert all(tokens_per_row / speed <= span * 1.001 for speed, span in zip(speeds, spans, strict=True))
    # the optimizer's update, timed on every step (the CPU's clock needs no wait): its share of a step
    optimizer_ms = [float(r["time/optimizer_ms"]) for r in rows]
    assert all(ms > 0 for ms in optimizer_ms) and len(set(optimizer_ms)) == len(optimizer_ms)
    assert all(0 < float(r["time/optimizer_share"]) < 1 for r in rows)


MEMORY_STEPS = 6


@pytest.mark.slow
def test_checkpointing_and_the_chunked_loss_give_the_plain_runs_losses(tmp_path):
    write_tokens(tmp_path)
    budget = ["--train_tokens", str(MEMORY_STEPS * BATCH * TINY_ARCH["context_length"])]
    runs = {
        "plain": [],
        "memory": ["--model.activation_checkpointing", "true", "--model.loss_chunk_tokens", "24"],
    }
    losses = {}
    for name, options in runs.items():
        main(["fit", "--config", str(write_config(tmp_path, tmp_path / name)), *budget, *options])
        losses[name] = train_losses(tmp_path / name)
    assert sorted(losses["plain"]) == list(range(MEMORY_STEPS))
    assert losses["memory"] == pytest.approx(losses["plain"], rel=1e-5)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model.loss_chunk_tokens", "0"], "model.loss_chunk_tokens=0: must be null or an integer >= 1"),
        (["--model.compile_mode", "fast"], "model.compile_mode='fast': must be null or one of default,"),
    ],
)
def test_a_chunk_of_no_tokens_or_an_unknown_compile_mode_is_refused(tmp_path, capsys, args, message):
    write_tokens(tmp_path)
    config = str(write_config(tmp_path, tmp_path / "run"))
    assert message in fails(["fit", "--config", config, *args], capsys)


@pytest.mark.parametrize("source", ["path", "open file"])
def test_load_from_checkpoint_rebuilds_the_model_from_its_saved_architecture(tmp_path, source):
    arch = ModelConfig(**TINY_ARCH, rope_theta=500.0, qk_norm=True)
    trained = LanguageModel(arch, lr_max=3e-3, warmup_iters=7)
    checkpoint = {
        "state_dict": trained.state_dict(),
        "hyper_parameters": dict(trained.hparams),
        "pytorch-lightning_version": L.__version__,
    }
    path = tmp_path / "run.ckpt"
    torch.save(checkpoint, path)
    with path.open("rb") as file:
        loaded = LanguageModel.load_from_checkpoint(
            file if source == "open file" else path, map_location="cpu"
        )
    assert loaded.model.config == arch
    assert loaded.hparams.lr_max == 3e-3 and loaded.hparams.warmup_iters == 7
    for name, tensor in trained.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    with pytest.raises(TypeError, match="cannot be called on an instance"):  # it returns a new model
        trained.load_from_checkpoint(path)
