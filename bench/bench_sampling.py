"""Cost of one sampling step's nucleus (top-p) filter: lmproject's partial ranking against sorting the
whole vocabulary, on the same probabilities, with the results compared for equality.

    .venv/bin/python bench/bench_sampling.py [--vocab 10000] [--rows 1 16] [--repeats 200] [--threads 1]

Three kinds of next-token distribution over the TinyStories vocabulary, each shuffled over the vocabulary:
  - confident: the r-th most probable token has probability proportional to 1 / r^2, as a trained model
    predicts most tokens of a story (nucleus: a handful of tokens);
  - broad: proportional to 1 / r^1.2, the shape of word frequencies (nucleus: about a thousand tokens);
  - flat: softmax of N(0, 0.5^2) logits, what a model with random weights predicts (nucleus: most of the
    vocabulary; the filter's worst case, where it sorts everything after ranking the first tokens).
Figures: the best time per call of each (microseconds), and their ratio.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from reference_model import top_p_by_full_sort  # noqa: E402

from lmproject.sampling.generate import filter_top_p  # noqa: E402


def distributions(rows: int, vocab: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    ranks = torch.arange(1, vocab + 1, dtype=torch.float32)

    def zipf(exponent: float) -> torch.Tensor:
        probs = torch.stack(
            [(ranks**-exponent)[torch.randperm(vocab, generator=generator)] for _ in range(rows)]
        )
        return probs / probs.sum(-1, keepdim=True)

    flat = torch.softmax(0.5 * torch.randn(rows, vocab, generator=generator), dim=-1)
    return {"confident": zipf(2.0), "broad": zipf(1.2), "flat": flat}


def best_time(run: Callable[[], torch.Tensor], repeats: int) -> float:
    run()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=10_000)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--top-p", type=float, nargs="+", default=[0.9, 0.95])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    print(f"vocab {args.vocab}, torch threads {torch.get_num_threads()}, best of {args.repeats} calls")
    for rows in args.rows:
        for name, probs in distributions(rows, args.vocab, generator).items():
            for p in args.top_p:
                ours, reference = filter_top_p(probs, p), top_p_by_full_sort(probs, p)
                kept = int((ours > 0).sum(-1).max())
                ours_s = best_time(lambda probs=probs, p=p: filter_top_p(probs, p), args.repeats)
                reference_s = best_time(lambda probs=probs, p=p: top_p_by_full_sort(probs, p), args.repeats)
                print(
                    f"rows {rows:2d} {name:9s} top_p {p}: nucleus <= {kept:5d} tokens; "
                    f"filter_top_p {ours_s * 1e6:7.1f} us, sort all {reference_s * 1e6:7.1f} us = "
                    f"{reference_s / ours_s:5.2f}x faster; results "
                    f"{'identical' if torch.equal(ours, reference) else 'DIFFER'}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
