"""Cost of the token-id checks on CPU: TransformerLM's range check next to one training step (forward +
backward), and the data module's check of a whole token file before training.

The model's check (two reductions over the batch's ids) runs on every CPU forward; this measures it against
the step it guards, for the smoke model and the TinyStories model at batch 8. The file check reads every id
of the memory-mapped file once (lmproject.training.data.check_tokens); it is timed on a uint16 file of
--file-mb MB in the temp folder, written once and read with the page cache warm, best of 3.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/bench_id_check.py [--file-mb 1000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lmproject.nn import TransformerLM, cross_entropy
from lmproject.training.data import check_tokens, open_tokens

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


def file_check(megabytes: int) -> None:
    """Time check_tokens over a uint16 token file of `megabytes` MB (ids below a 10,000 vocabulary)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "tokens.npy"
        count = megabytes * 10**6 // 2
        ids = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint16, shape=(count,))
        for start in range(0, count, 1 << 24):
            ids[start : start + (1 << 24)] = np.arange(min(1 << 24, count - start)) % 10_000
        ids.flush()
        del ids
        tokens = open_tokens(path)
        best = min(seconds_per_call(lambda: check_tokens(tokens, path, 256, 10_000), 1) for _ in range(3))
        rate = megabytes / 1e3 / best
        print(f"token file {megabytes} MB ({count:,} ids): check {best:.3f} s, {rate:.2f} GB/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file-mb", type=int, default=1000, help="size of the token file to check")
    file_check(parser.parse_args().file_mb)
    for name, (batch, shape) in SHAPES.items():
        model = TransformerLM(**shape)
        ids = torch.randint(0, shape["vocab_size"], (batch, shape["context_length"]))
        step = seconds_per_call(lambda m=model, x=ids: cross_entropy(m(x), x).backward(), 3)
        check = seconds_per_call(lambda m=model, x=ids: m._check_token_ids(x), 1000)
        print(f"{name}: step {step * 1e3:.1f} ms, id check {check * 1e6:.1f} us ({100 * check / step:.3f}%)")


if __name__ == "__main__":
    main()
