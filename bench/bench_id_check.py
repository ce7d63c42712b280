"""Cost of TransformerLM's token-id range check on CPU, next to one training step (forward + backward).

The check (two reductions over the batch's ids) runs on every CPU forward; this measures it against the
step it guards, for the smoke model and the TinyStories model at batch 8, in one process.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/bench_id_check.py
"""

from __future__ import annotations

import time

import torch

from lmproject.nn import TransformerLM, cross_entropy

SHAPES = {
    "smoke (batch 4 x 16)": (4, dict(vocab_size=64, context_length=16, d_model=32, num_layers=2, num_heads=2,
                                     d_ff=64)),
    "tinystories (batch 8 x 256)": (8, dict(vocab_size=10_000, context_length=256, d_model=512, num_layers=4,
                                            num_heads=16, d_ff=1344)),
}  # fmt: skip


def seconds_per_call(function, calls: int) -> float:
    function()
    start = time.perf_counter()
    for _ in range(calls):
        function()
    return (time.perf_counter() - start) / calls


def main() -> None:
    for name, (batch, shape) in SHAPES.items():
        model = TransformerLM(**shape)
        ids = torch.randint(0, shape["vocab_size"], (batch, shape["context_length"]))
        step = seconds_per_call(lambda m=model, x=ids: cross_entropy(m(x), x).backward(), 3)
        check = seconds_per_call(lambda m=model, x=ids: m._check_token_ids(x), 1000)
        print(f"{name}: step {step * 1e3:.1f} ms, id check {check * 1e6:.1f} us ({100 * check / step:.3f}%)")


if __name__ == "__main__":
    main()
