"""Forward+backward throughput of the project's TransformerLM vs the torch-built-ins reference, side by side.

    .venv/bin/python bench/bench_model.py [--repeats 5] [--steps 2] [--bf16]

CS336 TinyStories configuration (vocab 10,000, context 256, d_model 512, d_ff 1344, 4 layers, 16 heads),
batch 8, random weights shared by both models. Repeats alternate ours / reference so both see the same
machine load; the figure is the ratio of the best tokens/s of each (target: ours >= 0.9x).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from reference_model import leaf_params, reference_lm  # noqa: E402

from lmproject.nn import ModelConfig, TransformerLM, cross_entropy  # noqa: E402

TINYSTORIES = ModelConfig(
    vocab_size=10_000, context_length=256, d_model=512, num_layers=4, num_heads=16, d_ff=1344
)


def ours_step(model, params, x, y):
    cross_entropy(model(x), y).backward()


def reference_step(model, params, x, y):
    logits = reference_lm(params, x, model.config)
    F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)).backward()


def tokens_per_second(step, model, params, x, y, steps: int, bf16: bool) -> float:
    autocast = torch.autocast(x.device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    start = time.perf_counter()
    for _ in range(steps):
        with autocast:
            step(model, params, x, y)
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    return steps * x.numel() / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2, help="forward+backward steps per timed repeat")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--bf16", action="store_true", help="also measure under bf16 autocast")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    model = TransformerLM(TINYSTORIES).to(args.device)
    params = leaf_params(model)
    x = torch.randint(0, 10_000, (args.batch, 256), device=args.device)
    y = torch.randint(0, 10_000, (args.batch, 256), device=args.device)
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, batch {args.batch}x256 tokens")
    for bf16 in [False, True] if args.bf16 else [False]:
        label = "bf16 autocast" if bf16 else "float32"
        for step in (ours_step, reference_step):  # warm-up (allocator, kernels)
            tokens_per_second(step, model, params, x, y, 1, bf16)
        rates: dict[str, list[float]] = {"ours": [], "reference": []}
        for repeat in range(args.repeats):
            for name, step in (("ours", ours_step), ("reference", reference_step)):
                rates[name].append(tokens_per_second(step, model, params, x, y, args.steps, bf16))
                print(f"  [{label}] repeat {repeat + 1} {name:9s} {rates[name][-1]:9.0f} tok/s", flush=True)
        print(summary(label, rates["ours"], rates["reference"]))


def summary(
    label: str, ours: list[float], reference: list[float], names: tuple[str, str] = ("ours", "reference")
) -> str:
    """Best-of-each ratio, plus the median of the per-repeat ratios (robust to a noisy neighbour)."""
    paired = statistics.median(a / b for a, b in zip(ours, reference, strict=True))
    return (
        f"{label}: {names[0]} {max(ours):.1f} tok/s, {names[1]} {max(reference):.1f} tok/s, "
        f"ratio {max(ours) / max(reference):.2f}x (best of {len(ours)}), median paired ratio {paired:.2f}x"
    )


if __name__ == "__main__":
    main()
