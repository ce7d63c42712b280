"""Muon's optimizer step before and after batching by shape (issue 23), on the CPU with one thread.

The model is configs/tinystories.yaml's (4 layers, d_model 512, d_ff 1344: 16 matrices of 512x512 and 12
of 1344x512 or its transpose), its gradients random. For each optimizer, one step under torch.profiler
counts the matrix-product launches (aten::mm, bmm, addmm, baddbmm: what aten::matmul dispatches to, each
counted once, at its outermost call), after `--repeats` timed steps (median; the optimizers take turns):

  adamw       the project's AdamW on every parameter (the baseline's optimizer)
  before      Muon as it was: Newton–Schulz matrix by matrix (PerMatrixMuon below, the reference)
  after       Muon batched by shape, run eagerly
  compiled    Muon batched by shape, compiled (with --compile: a C++ compiler, tens of seconds to build)

    python bench/bench_muon.py [--repeats 3] [--compile]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from reference_model import reference_orthogonalize  # noqa: E402

from lmproject.nn import ModelConfig, TransformerLM
from lmproject.training.muon import UPDATE_RMS, Muon, muon_param_groups
from lmproject.training.optim import AdamW

ROOT = Path(__file__).resolve().parent.parent
PRODUCTS = {"aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm"}


class PerMatrixMuon(Muon):
    """Muon's update before issue 23: momentum, Newton–Schulz and the update one matrix at a time."""

    def _update(self, group: dict, params: list[torch.nn.Parameter]) -> None:
        if not group["muon"]:
            return super()._update(group, params)
        lr, decay, mu = group["lr"], group["weight_decay"], group["momentum"]
        for p in params:
            state = self.state[p]
            if not state:
                state["momentum_buffer"] = torch.zeros_like(p)
            buffer = state["momentum_buffer"]
            buffer.mul_(mu).add_(p.grad)
            update = reference_orthogonalize(p.grad.add(buffer, alpha=mu), group["ns_steps"])
            p.mul_(1 - lr * decay)
            p.add_(update, alpha=-lr * UPDATE_RMS * math.sqrt(max(p.shape)))


def product_launches(optimizer: torch.optim.Optimizer) -> int:
    """Matrix products launched by one optimizer step (nested ones, inside another product, not counted)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        optimizer.step()
    return sum(
        1
        for event in profile.events()
        if event.name in PRODUCTS and (event.cpu_parent is None or event.cpu_parent.name not in PRODUCTS)
    )


def step_seconds(optimizers: dict[str, torch.optim.Optimizer], repeats: int) -> dict[str, float]:
    """Median seconds of a step of each optimizer, the optimizers taking turns (a machine whose load
    changes slows them alike)."""
    for optimizer in optimizers.values():
        optimizer.step()  # state made (and the step compiled) outside the timing
    times = {name: [] for name in optimizers}
    for _ in range(repeats):
        for name, optimizer in optimizers.items():
            start = time.perf_counter()
            optimizer.step()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(seconds) for name, seconds in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per optimizer (median)")
    parser.add_argument("--compile", action="store_true", help="also the compiled step")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = yaml.safe_load((ROOT / "configs" / "tinystories.yaml").read_text())["model"]
    model = TransformerLM(ModelConfig(**config["arch"]))
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    settings = dict(lr=2e-3, betas=(0.9, 0.95), weight_decay=0.1)
    optimizers = {
        "adamw": lambda: AdamW(model.parameters(), **settings),
        "before": lambda: PerMatrixMuon(muon_param_groups(model), **settings),
        "after": lambda: Muon(muon_param_groups(model), **settings),
    }
    if args.compile:
        optimizers["compiled"] = lambda: Muon(muon_param_groups(model), **settings, compile=True)
    # (the optimizers step the same parameters in turn: the weights drift, the work per step does not)
    matrices = len(muon_param_groups(model)[0]["params"])
    print(f"TinyStories model, {matrices} Muon matrices, torch {torch.__version__}, 1 thread")
    print(f"{'optimizer':10} {'products':>8} {'step ms':>9} {'x AdamW':>8}")
    made = {name: make() for name, make in optimizers.items()}
    seconds = step_seconds(made, args.repeats)
    for name, optimizer in made.items():
        ratio = seconds[name] / seconds["adamw"]
        print(f"{name:10} {product_launches(optimizer):8} {seconds[name] * 1e3:9.1f} {ratio:8.1f}")


if __name__ == "__main__":
    main()
