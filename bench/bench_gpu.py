"""GPU training throughput, MFU and peak memory of `lmproject fit` for a list of variants, with profiles.

Each variant is the real command (LightningCLI, the memory-mapped data module with its worker processes,
logging, progress bar, the throughput callback) on a random token file, run in its own process (a variant
that fails or runs out of memory costs only its own row) with extra `fit` options:

  eager       bf16-mixed, no torch.compile
  compiled    --model.compile true (the model and its loss compiled together)
  chunked     compiled + --model.loss_chunk_tokens 8192 (fused lm head + cross-entropy: no float32 logits
              for the whole batch)
  cudagraphs  chunked + --model.compile_mode reduce-overhead (CUDA graphs: no launch overhead)
  autotune    chunked + --model.compile_mode max-autotune-no-cudagraphs (slow to compile: minutes)
  b256, b512  chunked with a per-device batch of 256 or 512 sequences
  plain       a plain PyTorch loop doing fit's step (bf16 autocast, compiled model and loss, the project's
              AdamW, schedule and clipping, one host sync per step) with no Lightning around it
  muon        compiled + configs/recipes/muon.yaml (Muon's Newton-Schulz iterations: its extra cost)
  modern      compiled + configs/recipes/modern.yaml (the combined recipe of issue 15)

Tokens/s are timed between CUDA-synchronized clocks after `--warmup` steps (compilation happens there);
MFU = tokens/s x training FLOPs per token (lmproject.accounting) / peak bf16 FLOP/s (Lightning's table for
the GPU: 989 TFLOP/s dense for an H100 or H200 SXM). "logged tok/s" is what `fit` itself logs (over the
steps since the previous logged row, unsynchronized), a check on that callback; "opt %" the optimizer
update's share of a step as `fit` logs it (time/optimizer_share); "x first" tokens/s over the first
variant's (--variants compiled,modern: the recipe against the baseline). With --profile,
`--profile-steps` more steps of those variants run under torch.profiler and the top operators by GPU time
(CPU time on a CPU) go to OUT/profile_VARIANT.txt; the table goes to OUT/bench_gpu.txt too.

    python bench/bench_gpu.py --out $OUT      # TinyStories model, 15 + 100 steps per variant
    python bench/bench_gpu.py --variants compiled,cudagraphs --profile cudagraphs --out /tmp/gpu
    python bench/bench_gpu.py --steps 3 --warmup 1 --batch-size 4 --config configs/smoke.yaml \\
        --variants eager,chunked,b256,plain --profile chunked --out /tmp/gpu   # CPU dry run
    python bench/bench_gpu.py --variants compiled,muon,modern --profile muon --out $OUT   # the recipe's cost
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import lightning as L
import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPILED = ["--model.compile", "true"]
CHUNKED = [*COMPILED, "--model.loss_chunk_tokens", "8192"]
VARIANTS = {
    "eager": ["--model.compile", "false"],
    "compiled": COMPILED,
    "chunked": CHUNKED,
    "cudagraphs": [*CHUNKED, "--model.compile_mode", "reduce-overhead"],
    "autotune": [*CHUNKED, "--model.compile_mode", "max-autotune-no-cudagraphs"],
    "b256": [*CHUNKED, "--data.batch_size", "256"],
    "b512": [*CHUNKED, "--data.batch_size", "512"],
    "plain": None,
    # the modern-recipe switches (issue 15), compiled: compare with "compiled" (no chunked loss: soft-cap)
    "muon": [*COMPILED, "--config", str(ROOT / "configs" / "recipes" / "muon.yaml")],
    "modern": [*COMPILED, "--config", str(ROOT / "configs" / "recipes" / "modern.yaml")],
}
DEFAULT_VARIANTS = "eager,compiled,chunked,cudagraphs,b512"


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class SyncTimer(L.Callback):
    """Synchronized wall clock after the warmup steps and after the timed steps."""

    warmup = timed_end = 0
    times: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step in (SyncTimer.warmup, SyncTimer.timed_end):
            synchronize()
            SyncTimer.times.append(time.perf_counter())


class Profile:
    """torch.profiler around a stretch of steps; `write` saves the operators that took the most time."""

    def __init__(self):
        activities = [torch.profiler.ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self.profiler = torch.profiler.profile(activities=activities)

    def write(self, path: Path, title: str) -> None:
        key = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
        table = self.profiler.key_averages().table(sort_by=key, row_limit=30, max_name_column_width=70)
        path.write_text(f"{title}\ntop operators by {key}\n{table}\n")


class ProfileSteps(L.Callback):
    """Profiles the steps after the timed ones (set by the variant's process before fit)."""

    start = end = 0
    path: Path | None = None
    title = ""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if ProfileSteps.path is not None and trainer.global_step == ProfileSteps.start:
            self.profile = Profile()
            self.profile.profiler.start()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if ProfileSteps.path is not None and trainer.global_step == ProfileSteps.end:
            synchronize()
            self.profile.profiler.stop()
            self.profile.write(ProfileSteps.path, ProfileSteps.title)


def run_fit(args: argparse.Namespace, data: Path, extra: list[str]) -> dict:
    """One `fit` of `extra` options: synchronized and logged tokens/s, final loss, peak memory, hparams."""
    from lmproject.lit.cli import run_lightning

    steps = args.warmup + args.steps
    SyncTimer.warmup, SyncTimer.timed_end, SyncTimer.times = args.warmup, steps, []
    total = steps + (args.profile_steps if ProfileSteps.path else 0)
    ProfileSteps.start, ProfileSteps.end = steps, total
    cli = run_lightning([
        "fit", "--config", str(args.config), "--train_tokens", "null", "--trainer.devices", "1",
        "--trainer.max_steps", str(total), "--trainer.limit_val_batches", "0",
        "--trainer.num_sanity_val_steps", "0", "--trainer.callbacks+=__main__.SyncTimer",
        "--trainer.callbacks+=__main__.ProfileSteps",
        "--trainer.default_root_dir", str(data.parent / "run"),
        "--data.train_path", str(data), "--data.val_path", str(data),
        "--data.batch_size", str(args.batch_size),
        "--checkpoint.every_n_train_steps", "0", "--checkpoint.save_last", "false", *extra,
    ])  # fmt: skip
    start, end = SyncTimer.times
    hp, arch = dict(cli.model.hparams), cli.model.model.config
    metrics = cli.trainer.callback_metrics
    with (Path(cli.trainer.logger.log_dir) / "metrics.csv").open() as file:  # the timed steps' rows
        rows = [r for r in csv.DictReader(file) if args.warmup <= int(r["step"]) < steps]
    shares = [float(r["time/optimizer_share"]) for r in rows if r.get("time/optimizer_share")]
    return {
        "tokens_per_s": args.steps * cli.datamodule.batch_size * arch.context_length / (end - start),
        "logged": float(metrics.get("throughput/tokens_per_s", math.nan)),
        "optimizer_share": sum(shares) / len(shares) if shares else math.nan,
        "loss": float(metrics.get("train/loss", math.nan)),
        "batch_size": cli.datamodule.batch_size,
        "arch": asdict(arch),
        "hparams": {k: v for k, v in hp.items() if isinstance(v, (int, float, str, type(None)))},
    }


def run_plain(args: argparse.Namespace, data: Path) -> dict:
    """`fit`'s step as a hand-written compiled bf16 loop, the config's model and optimizer settings."""
    from lmproject.lit.module import LanguageModel
    from lmproject.nn import TransformerLM
    from lmproject.training.data import get_batch, open_tokens
    from lmproject.training.optim import AdamW, clip_gradients, cosine_lr

    module = LanguageModel(**yaml.safe_load(args.config.read_text())["model"])
    hp, arch = dict(module.hparams), module.model.config
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    model = TransformerLM(arch, attention=hp["attention"]).to(device)
    loss_of = torch.compile(model.loss)
    optimizer = AdamW(model.parameters(), hp["lr_max"], hp["betas"], hp["eps"], hp["weight_decay"])
    tokens, rng = open_tokens(data), np.random.default_rng(0)
    total = args.warmup + args.steps
    profile = Profile() if ProfileSteps.path else None
    for step in range(total + (args.profile_steps if profile else 0)):
        if step == args.warmup:
            synchronize()
            start = time.perf_counter()
        if step == total:
            synchronize()
            elapsed = time.perf_counter() - start
            if profile:
                profile.profiler.start()
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, hp["lr_max"], hp["lr_min"], hp["warmup_iters"], total)
        x, y = get_batch(tokens, args.batch_size, arch.context_length, device, rng)
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = loss_of(x, y)
        loss.backward()
        norm = clip_gradients(list(model.parameters()), hp["max_grad_norm"])
        loss_value, _ = torch.stack([loss.float(), norm]).tolist()  # the one sync per step `fit` has
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    synchronize()
    if step < total:  # no profile steps: the timed stretch ends with the loop
        elapsed = time.perf_counter() - start
    if profile:
        profile.profiler.stop()
        profile.write(ProfileSteps.path, ProfileSteps.title)
    return {
        "tokens_per_s": args.steps * args.batch_size * arch.context_length / elapsed,
        "logged": math.nan,
        "optimizer_share": math.nan,
        "loss": loss_value,
        "batch_size": args.batch_size,
        "arch": asdict(arch),
        "hparams": {k: v for k, v in hp.items() if isinstance(v, (int, float, str, type(None)))},
    }


def run_variant(args: argparse.Namespace) -> int:
    """The child process: one variant, its result as one JSON line on stdout's last line."""
    name, data = args.run_variant, Path(args.data)
    if name in args.profile.split(","):
        ProfileSteps.path = args.out / f"profile_{name}.txt"
        ProfileSteps.title = f"variant {name}: {args.profile_steps} steps after {args.warmup + args.steps}"
    result = run_plain(args, data) if VARIANTS[name] is None else run_fit(args, data, VARIANTS[name])
    result["max_memory_gb"] = torch.cuda.max_memory_allocated() / 1e9 if torch.cuda.is_available() else None
    print(json.dumps(result))
    return 0


def predicted_gb(result: dict) -> float:
    """lmproject.memory's bf16-mixed prediction of the peak (eager; compiled code saves other tensors)."""
    from lmproject.memory import training_memory
    from lmproject.nn import ModelConfig

    chunk = result["hparams"].get("loss_chunk_tokens")
    parts = training_memory(ModelConfig(**result["arch"]), result["batch_size"], "bf16-mixed", False, chunk)
    return parts["peak"] / 1e9


def child_command(args: argparse.Namespace, name: str, data: Path) -> list[str]:
    return [
        sys.executable, __file__, "--run-variant", name, "--data", str(data), "--config", str(args.config),
        "--batch-size", str(args.batch_size), "--steps", str(args.steps), "--warmup", str(args.warmup),
        "--profile", args.profile, "--profile-steps", str(args.profile_steps), "--out", str(args.out),
    ]  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "tinystories.yaml")
    parser.add_argument(
        "--variants", default=DEFAULT_VARIANTS, help=f"comma-separated, of {', '.join(VARIANTS)}"
    )
    parser.add_argument("--batch-size", type=int, default=128, help="per device, unless the variant sets it")
    parser.add_argument("--steps", type=int, default=100, help="timed optimizer steps per variant")
    parser.add_argument("--warmup", type=int, default=15, help="untimed steps before them (compilation)")
    parser.add_argument("--profile", default="compiled,b512", help="comma-separated variants to profile")
    parser.add_argument("--profile-steps", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=20_000_000, help="size of the random token file")
    parser.add_argument("--timeout", type=float, default=150, help="seconds per variant before it is killed")
    parser.add_argument(
        "--budget", type=float, default=330, help="seconds for all variants: no new one after"
    )
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")), help="profiles, table")
    parser.add_argument("--run-variant", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True  # float32 leftovers outside autocast (the optimizer)
    unknown = [name for name in args.variants.split(",") if name not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.run_variant:
        return run_variant(args)

    from lmproject.accounting import train_flops_per_token
    from lmproject.lit.callbacks import device_peak_flops
    from lmproject.nn import ModelConfig

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "train.npy"
        vocab_size = yaml.safe_load(args.config.read_text())["model"]["arch"]["vocab_size"]
        np.save(data, np.random.default_rng(0).integers(0, vocab_size, args.tokens).astype(np.uint16))
        deadline = time.perf_counter() + args.budget
        for name in args.variants.split(","):
            began = time.perf_counter()
            timeout = min(args.timeout, deadline - began)
            if timeout < 30:
                rows.append((name, None, f"not run: --budget {args.budget:.0f} s spent", 0.0))
                continue
            try:
                done = subprocess.run(
                    child_command(args, name, data), capture_output=True, text=True, timeout=timeout
                )
                (args.out / f"variant_{name}.log").write_text(done.stdout + done.stderr)
                lines = [line for line in done.stdout.splitlines() if line.startswith('{"tokens_per_s"')]
                result = json.loads(lines[-1]) if done.returncode == 0 and lines else None
                failure = None if result else (done.stderr.strip().splitlines() or ["no output"])[-1]
            except subprocess.TimeoutExpired:
                result, failure = None, f"killed after {timeout:.0f} s"
            rows.append((name, result, failure, time.perf_counter() - began))
            print(f"{name}: {'done' if result else 'FAILED: ' + failure} in {rows[-1][3]:.0f} s", flush=True)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    peak = device_peak_flops(device, torch.bfloat16)
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    arch = next((ModelConfig(**r["arch"]) for _, r, _, _ in rows if r), None)
    flops = train_flops_per_token(arch) if arch else math.nan
    peak_text = f"{peak / 1e12:.0f} TFLOP/s" if peak else "unknown"
    lines = [
        f"{gpu}, torch {torch.__version__}, config {args.config.name}, context "
        f"{arch.context_length if arch else '?'}, {args.steps} timed steps after {args.warmup}, "
        f"{flops / 1e6:.1f} MFLOP/token, peak {peak_text}",
        f"{'variant':11} {'batch':>5} {'tokens/s':>12} {'x first':>7} {'MFU':>7} {'logged tok/s':>13} "
        f"{'opt %':>6} {'final loss':>10} {'peak GB':>8} {'pred GB':>8} {'wall s':>6}",
    ]
    first = next((r["tokens_per_s"] for _, r, _, _ in rows if r), math.nan)
    for name, r, failure, wall in rows:
        if r is None:
            log = f"; see OUT/variant_{name}.log" if (args.out / f"variant_{name}.log").is_file() else ""
            lines.append(f"{name:11} FAILED ({failure}{log})")
            continue
        mfu = f"{r['tokens_per_s'] * flops / peak:7.1%}" if peak else "    n/a"
        memory = f"{r['max_memory_gb']:8.2f}" if r["max_memory_gb"] is not None else "     n/a"
        speed = r["tokens_per_s"]
        lines.append(f"{name:11} {r['batch_size']:5} {speed:12,.0f} {speed / first:7.2f} {mfu} "
                     f"{r['logged']:13,.0f} {r['optimizer_share']:6.1%} {r['loss']:10.3f} {memory} "
                     f"{predicted_gb(r):8.2f} {wall:6.0f}")  # fmt: skip
    lines.append("x first: tokens/s over the first variant's; opt %: the optimizer's update over the step as "
                 "fit logs it (time/optimizer_share, mean of the timed steps' rows)")  # fmt: skip
    lines.append("pred GB: lmproject.memory's bf16-mixed peak for the batch and loss, without compilation")
    print("\n".join(lines))
    (args.out / "bench_gpu.txt").write_text("\n".join(lines) + "\n")
    return 0 if all(r for _, r, _, _ in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
