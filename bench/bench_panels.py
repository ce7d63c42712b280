"""Decoding's matrix products: the panel kernels (lmproject/nn/panel_linear.py) against torch's float32
products, for 1-16 rows over the TinyStories model's weight shapes.

    .venv/bin/python bench/bench_panels.py [--rows 1 2 4 8 16] [--layers 12] [--repeats 6] [--threads 1]

Each pass multiplies the rows by every weight of `--layers` layers (q, k, v, output_proj 512x512; w1, w3
1344x512; w2 512x1344: 12 layers are 149 MB, far past the caches), so the weights stream from memory as in
a decode step. Both sides take turns on the same inputs; figures: the best pass of each (process CPU
time with one thread, else wall time), in GB/s of weights read and GFLOP/s, the ratio, and the largest
difference from torch's result.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from lmproject.nn import Linear
from lmproject.nn.panel_linear import MAX_ROWS, PanelLinear, kernels_available

SHAPES = [(512, 512)] * 4 + [(512, 1344)] * 2 + [(1344, 512)]  # (d_in, d_out) of one layer's weights


def best_passes(runs: list[Callable[[], object]], repeats: int, clock: Callable[[], float]) -> list[float]:
    """The best time of each run, the runs taking turns."""
    best = [float("inf")] * len(runs)
    for repeat in range(repeats + 1):  # the first round warms up
        for i, run in enumerate(runs):
            start = clock()
            run()
            if repeat:
                best[i] = min(best[i], clock() - start)
    return best


def products(linears: list, inputs: dict[int, torch.Tensor]) -> list[torch.Tensor]:
    return [linear(inputs[linear.d_in]) for linear in linears]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if not kernels_available():
        parser.error("the panel kernels do not run here (they need AVX-512F and a C compiler at install)")
    if any(not 1 <= rows <= MAX_ROWS for rows in args.rows):
        parser.error(f"--rows: each between 1 and {MAX_ROWS}")
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.threads == 1 else time.perf_counter
    torch.manual_seed(0)
    linears = [Linear(d_in, d_out) for _ in range(args.layers) for d_in, d_out in SHAPES]
    paneled = [PanelLinear(linear) for linear in linears]
    weights = sum(linear.weight.numel() for linear in linears)
    print(
        f"{len(linears)} weights, {weights * 4 / 1e6:.0f} MB float32, torch threads {args.threads}, "
        f"best of {args.repeats} passes ({'CPU' if args.threads == 1 else 'wall'} time)"
    )
    header = ("rows", "torch GB/s", "GFLOP/s", "panels GB/s", "GFLOP/s", "ratio", "max |diff|")
    print("{:>4}  {:>10} {:>8}  {:>11} {:>8}  {:>5}  {}".format(*header))
    with torch.no_grad():
        for rows in args.rows:
            inputs = {d_in: torch.randn(rows, d_in) for d_in, _ in SHAPES}
            torch_time, panel_time = best_passes(
                [lambda: products(linears, inputs), lambda: products(paneled, inputs)],  # noqa: B023
                args.repeats,
                clock,
            )
            diff = max(
                (ours - theirs).abs().max().item()
                for ours, theirs in zip(products(paneled, inputs), products(linears, inputs), strict=True)
            )
            flop = 2 * rows * weights
            print(
                f"{rows:>4}  {weights * 4 / torch_time / 1e9:>10.1f} {flop / torch_time / 1e9:>8.1f}  "
                f"{weights * 4 / panel_time / 1e9:>11.1f} {flop / panel_time / 1e9:>8.1f}  "
                f"{torch_time / panel_time:>4.2f}x  {diff:.1e}"
            )


if __name__ == "__main__":
    main()
