"""Greedy generation with the KV cache vs recomputing the whole sequence each step, side by side.

    .venv/bin/python bench/bench_generate.py [--new-tokens 256] [--prompt-len 16] [--repeats 3]

TinyStories configuration with random weights, batch 1. The cached generator is lmproject.generate;
the baseline (tests/reference_model.greedy_recompute) runs the model on the whole window for every new
token. 16 + 256 tokens run past the 256-token context: both sides slide the window the same way
(`--window-slide`, default the generator's: a quarter of the context; 1 = exactly the last 256 tokens at
every step). The script reports whether both produced the same tokens (float32 near-ties aside, they
must); the figure is the ratio of their best tokens/s (target: cached >= 5x).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from bench_model import TINYSTORIES, summary  # noqa: E402
from reference_model import greedy_recompute  # noqa: E402

from lmproject.generate import generate, window_slide_for  # noqa: E402
from lmproject.nn import TransformerLM  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--window-slide", type=int, default=None, help="default: generate's")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    model = TransformerLM(**TINYSTORIES).to(args.device)
    prompt = torch.randint(0, TINYSTORIES["vocab_size"], (args.prompt_len,)).tolist()
    slide = window_slide_for(model.context_length, args.window_slide)
    runs = {
        "cached": lambda: generate(model, [prompt], args.new_tokens, temperature=0, window_slide=slide)[0],
        "recompute": lambda: greedy_recompute(model, prompt, args.new_tokens, slide),
    }
    print(
        f"device {args.device}, torch threads {torch.get_num_threads()}, "
        f"{args.new_tokens} new tokens from a {args.prompt_len}-token prompt, batch 1, window slide {slide}"
    )
    rates: dict[str, list[float]] = {name: [] for name in runs}
    outputs = {}
    for repeat in range(args.repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            outputs[name] = run()
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            rates[name].append(args.new_tokens / (time.perf_counter() - start))
            print(f"  repeat {repeat + 1} {name:9s} {rates[name][-1]:8.1f} tok/s", flush=True)
    cached, recomputed = outputs["cached"], outputs["recompute"]
    same = (
        "identical tokens"
        if cached == recomputed
        else f"tokens differ from step {first_difference(cached, recomputed)}"
    )
    print(summary("generate", rates["cached"], rates["recompute"], ("cached", "recompute")) + f"; {same}")


def first_difference(a: list[int], b: list[int]) -> int:
    return next(i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y)


if __name__ == "__main__":
    main()
