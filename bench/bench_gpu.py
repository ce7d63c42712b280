"""GPU training throughput and MFU of `lmproject fit`, TinyStories config (goal: >= 500K tokens/s on an H100).

Runs the real command in-process (LightningCLI, the memory-mapped data module with its worker processes,
logging, progress bar, the throughput callback) on a random token file, once per variant:

  - bf16-mixed, eager;
  - bf16-mixed, `--model.compile true`;
  - a plain PyTorch loop doing the same step (bf16 autocast, compiled model, the project's AdamW, schedule
    and clipping, one host sync per step like `fit`) with no Lightning around it: the ceiling for `fit`.

Tokens/s are timed between CUDA-synchronized clocks after `--warmup` steps (compilation happens there);
MFU = tokens/s x training FLOPs per token (lmproject.accounting) / peak bf16 FLOP/s (Lightning's table for
the GPU; the dense H100 SXM figure is 989 TFLOP/s). The figure `fit` itself logs (throughput/tokens_per_s,
unsynchronized, over the steps since the previous logged row) is printed beside it as a check on that
callback.

    python bench/bench_gpu.py                      # TinyStories model, batch 128, 20 + 150 steps per variant
    python bench/bench_gpu.py --steps 5 --warmup 2 --batch-size 4 --config configs/smoke.yaml   # CPU dry run
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
import yaml
from lightning.fabric.utilities.throughput import get_available_flops

from lmproject.accounting import train_flops_per_token
from lmproject.cli import run_lightning
from lmproject.data import get_batch, open_tokens
from lmproject.module import ARCHITECTURE
from lmproject.nn import TransformerLM, cross_entropy
from lmproject.optim import AdamW, clip_gradients, cosine_lr

ROOT = Path(__file__).resolve().parent.parent


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class SyncTimer(L.Callback):
    """Synchronized wall clock after the warmup steps and after the last step."""

    warmup = 0
    times: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step in (SyncTimer.warmup, trainer.max_steps):
            synchronize()
            SyncTimer.times.append(time.perf_counter())


def run_fit(args: argparse.Namespace, data: Path, compile: bool) -> tuple[float, float, float, dict]:
    """(synchronized tokens/s, tokens/s the callback logged, final loss, model hyperparameters) of `fit`."""
    SyncTimer.warmup, SyncTimer.times = args.warmup, []
    cli = run_lightning([
        "fit", "--config", str(args.config), "--train_tokens", "null", "--trainer.devices", "1",
        "--trainer.max_steps", str(args.warmup + args.steps), "--trainer.limit_val_batches", "0",
        "--trainer.num_sanity_val_steps", "0", "--trainer.callbacks+=__main__.SyncTimer",
        "--trainer.default_root_dir", str(data.parent / f"runs-{compile}"),
        "--model.compile", str(compile).lower(), "--data.train_path", str(data), "--data.val_path", str(data),
        "--data.batch_size", str(args.batch_size), "--checkpoint.every_n_train_steps", "0",
    ])  # fmt: skip
    start, end = SyncTimer.times
    hp = dict(cli.model.hparams)
    rate = args.steps * args.batch_size * hp["context_length"] / (end - start)
    metrics = cli.trainer.callback_metrics
    logged = float(metrics.get("throughput/tokens_per_s", math.nan))
    return rate, logged, float(metrics.get("train/loss", math.nan)), hp


def run_plain(args: argparse.Namespace, data: Path, hp: dict) -> tuple[float, float]:
    """(synchronized tokens/s, final loss) of a hand-written compiled bf16 loop doing `fit`'s step."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    model = TransformerLM(**{k: hp[k] for k in (*ARCHITECTURE, "attention")}).to(device)
    model.compile()
    optimizer = AdamW(model.parameters(), hp["lr_max"], hp["betas"], hp["eps"], hp["weight_decay"])
    tokens, rng = open_tokens(data), np.random.default_rng(0)
    total = args.warmup + args.steps
    for step in range(total):
        if step == args.warmup:
            synchronize()
            start = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, hp["lr_max"], hp["lr_min"], hp["warmup_iters"], total)
        x, y = get_batch(tokens, args.batch_size, hp["context_length"], device, rng)
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = cross_entropy(model(x), y)
        loss.backward()
        norm = clip_gradients(list(model.parameters()), hp["max_grad_norm"])
        loss_value, _ = torch.stack([loss.float(), norm]).tolist()  # the one sync per step `fit` has
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    synchronize()
    return args.steps * args.batch_size * hp["context_length"] / (time.perf_counter() - start), loss_value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "tinystories.yaml")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=150, help="timed optimizer steps per variant")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps before them (compilation)")
    parser.add_argument("--tokens", type=int, default=20_000_000, help="size of the random token file")
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True  # float32 leftovers outside autocast (the optimizer)

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "train.npy"
        vocab_size = yaml.safe_load(args.config.read_text())["model"]["vocab_size"]
        np.save(data, np.random.default_rng(0).integers(0, vocab_size, args.tokens).astype(np.uint16))
        rows = []
        for name, compile in (("fit, bf16-mixed, eager", False), ("fit, bf16-mixed, compiled", True)):
            rate, logged, loss, hp = run_fit(args, data, compile)
            rows.append((name, rate, logged, loss))
        rate, loss = run_plain(args, data, hp)
        rows.append(("plain loop, bf16, compiled", rate, math.nan, loss))

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    flops = train_flops_per_token(*(hp[k] for k in ("vocab_size", "context_length", "d_model", "num_layers")),
                                  hp["d_ff"], hp["ffn"])  # fmt: skip
    peak = get_available_flops(device, torch.bfloat16)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    peak_text = f"{peak / 1e12:.0f} TFLOP/s" if peak else "unknown"
    print(f"{name}, torch {torch.__version__}, config {args.config.name}, batch {args.batch_size} x "
          f"{hp['context_length']}, {args.steps} timed steps after {args.warmup}, "
          f"{flops / 1e6:.1f} MFLOP/token, peak {peak_text}")  # fmt: skip
    print(f"{'variant':30} {'tokens/s':>12} {'MFU':>7} {'logged tok/s':>13} {'final loss':>11}")
    for name, rate, logged, loss in rows:
        mfu = f"{rate * flops / peak:7.1%}" if peak else "    n/a"
        print(f"{name:30} {rate:12,.0f} {mfu} {logged:13,.0f} {loss:11.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
