"""Training throughput: `lmproject fit` (Lightning) against a plain PyTorch loop, side by side.

Both train the same TransformerLM (configs/tinystories.yaml by default) from the same initial weights on
the same memory-mapped token file, with the project's AdamW, warmup + cosine schedule stepped every
optimizer step, clip_grad_norm and the config's precision (bf16-mixed autocast on CPUs that have it).
The Lightning side is the real command (run in-process so it can be timed): LightningCLI, the data module,
logging, progress bar, throughput callback. Validation is switched off in both, and the data module uses
no worker processes (the plain loop has none either). On a machine shared with other jobs, OpenMP threads
spin-wait for descheduled siblings and a step can take many times longer for reasons unrelated to either
side: `--threads 1` gives the stable comparison there.

Tokens/s are timed over `--steps` optimizer steps after `--warmup` steps; the two sides alternate
`--repeats` times and the best of each is reported, with the ratio fit / plain (goal: >= 0.95).

    .venv/bin/python bench/bench_fit.py --threads 1          # TinyStories model, batch 8, CPU
    .venv/bin/python bench/bench_fit.py --steps 5 --repeats 1 --config configs/smoke.yaml --batch-size 8
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
import yaml

from lmproject.lit.cli import run_lightning
from lmproject.nn import ModelConfig, TransformerLM, cross_entropy
from lmproject.training.data import get_batch, open_tokens
from lmproject.training.optim import AdamW, clip_grad_norm, cosine_lr

ROOT = Path(__file__).resolve().parent.parent


def clocks() -> tuple[float, float]:
    """(wall-clock seconds, this process's CPU seconds): the second is less disturbed by other processes
    sharing the cores, and counts any extra work of the Lightning path all the same."""
    return time.perf_counter(), time.process_time()


class StepTimer(L.Callback):
    """Records both clocks at the end of every optimizer step."""

    def __init__(self):
        self.times: list[tuple[float, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.times.append(clocks())


def tokens_per_s(times: list[tuple[float, float]], warmup: int, tokens_per_step: int) -> tuple[float, float]:
    """(tokens per wall-clock second, tokens per CPU second) over the steps after the first `warmup`."""
    tokens = (len(times) - warmup) * tokens_per_step
    return tuple(tokens / (end - start) for start, end in zip(times[warmup - 1], times[-1], strict=True))


def fit_args(args: argparse.Namespace, data_dir: Path) -> list[str]:
    return [
        "fit", "--config", str(args.config), "--train_tokens", "null",
        "--trainer.max_steps", str(args.warmup + args.steps), "--trainer.accelerator", "cpu",
        "--trainer.devices", "1", "--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps", "0",
        "--trainer.default_root_dir", tempfile.mkdtemp(dir=data_dir),  # a fresh run directory per repeat
        "--trainer.callbacks+=__main__.StepTimer",
        "--data.train_path", str(data_dir / "train.npy"), "--data.val_path", str(data_dir / "train.npy"),
        "--data.batch_size", str(args.batch_size), "--data.num_workers", "0",
    ]  # fmt: skip


def run_fit(args: argparse.Namespace, data_dir: Path) -> tuple[tuple[float, float], ModelConfig, dict, str]:
    """Tokens/s of `lmproject fit`, plus the architecture, other model settings and precision it ran with."""
    cli = run_lightning(fit_args(args, data_dir))
    timer = next(c for c in cli.trainer.callbacks if isinstance(c, StepTimer))
    config = cli.model.model.config
    rates = tokens_per_s(timer.times, args.warmup, args.batch_size * config.context_length)
    return rates, config, dict(cli.model.hparams), cli.trainer.precision


def run_plain(
    args: argparse.Namespace, data_dir: Path, config: ModelConfig, hp: dict, precision: str
) -> tuple[float, float]:
    """Tokens/s of a hand-written loop doing the same work as one `lmproject fit` step."""
    torch.manual_seed(0)  # the seed `lmproject fit` uses (seed_everything: 0)
    model = TransformerLM(config, attention=hp["attention"])
    optimizer = AdamW(model.parameters(), hp["lr_max"], hp["betas"], hp["eps"], hp["weight_decay"])
    total = args.warmup + args.steps
    cycle = hp["cosine_cycle_iters"] or total
    tokens = open_tokens(data_dir / "train.npy")
    rng = np.random.default_rng(0)
    autocast = (
        torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16-mixed" else contextlib.nullcontext()
    )
    times = []
    for step in range(total):
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, hp["lr_max"], hp["lr_min"], hp["warmup_iters"], cycle)
        x, y = get_batch(tokens, args.batch_size, config.context_length, "cpu", rng)
        with autocast:
            loss = cross_entropy(model(x), y)
        if not torch.isfinite(loss):
            raise SystemExit(f"plain loop: loss {loss.item()} at step {step}")
        loss.backward()
        clip_grad_norm(model.parameters(), hp["max_grad_norm"] or math.inf)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(clocks())
    return tokens_per_s(times, args.warmup, args.batch_size * config.context_length)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "tinystories.yaml")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10, help="timed optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before them")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=2_000_000, help="size of the random token file")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads for both sides (default: torch's)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        vocab_size = yaml.safe_load(args.config.read_text())["model"]["arch"]["vocab_size"]
        ids = np.random.default_rng(0).integers(0, vocab_size, args.tokens)
        np.save(data_dir / "train.npy", ids.astype(np.uint16))
        fit_rates, plain_rates = [], []
        for repeat in range(args.repeats):
            rate, config, hp, precision = run_fit(args, data_dir)
            fit_rates.append(rate)
            plain_rates.append(run_plain(args, data_dir, config, hp, precision))
            (fit_wall, fit_cpu), (plain_wall, plain_cpu) = fit_rates[-1], plain_rates[-1]
            line = f"repeat {repeat + 1}: wall-clock tok/s fit {fit_wall:,.0f} plain {plain_wall:,.0f}; "
            print(
                f"{line}tok per CPU-s fit {fit_cpu:,.0f} plain {plain_cpu:,.0f}", file=sys.stderr, flush=True
            )
    fit_wall, fit_cpu = (max(rates) for rates in zip(*fit_rates, strict=True))
    plain_wall, plain_cpu = (max(rates) for rates in zip(*plain_rates, strict=True))
    setup = f"config {args.config.name}, batch {args.batch_size}, precision {precision}"
    print(f"{setup}, {args.steps} timed steps after {args.warmup}, best of {args.repeats}, "
          f"torch threads {torch.get_num_threads()}")  # fmt: skip
    print("                 tokens/s (wall)   tokens per CPU-second")
    print(f"lmproject fit   {fit_wall:15,.0f}   {fit_cpu:21,.0f}")
    print(f"plain PyTorch   {plain_wall:15,.0f}   {plain_cpu:21,.0f}")
    print(f"ratio fit/plain {fit_wall / plain_wall:15.3f}   {fit_cpu / plain_cpu:21.3f}   (goal >= 0.95)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
