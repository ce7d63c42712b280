"""Peak training memory on CPU, measured against lmproject.memory's prediction, with and without activation
checkpointing (and the chunked loss), TinyStories shapes.

Each row is a fresh process (lmproject.memory.measure_in_subprocess) running `--steps` training steps of
the model with the project's AdamW and clipping, one thread, on random tokens, seed 0; the figure is its
peak resident memory above what it held before the model existed (a tiny model's step runs first, so code
pages and allocator pools mapped by the first step are not counted). glibc's mmap threshold is pinned
(MALLOC_MMAP_THRESHOLD_) so freed tensors leave the resident size at once. The losses of each step are
printed: with and without checkpointing they are the same run.

    .venv/bin/python bench/bench_memory.py                          # batch 64 x 256, about 8 minutes
    .venv/bin/python bench/bench_memory.py --config configs/smoke.yaml --batch-size 8   # seconds
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lmproject.accounting import read_config
from lmproject.memory import measure_in_subprocess, training_memory
from lmproject.nn import ModelConfig

ROOT = Path(__file__).resolve().parent.parent
ROWS = [  # precision, activation checkpointing, loss chunk tokens
    ("32-true", False, None),
    ("32-true", True, None),
    ("bf16-mixed", False, None),
    ("bf16-mixed", True, None),
    ("bf16-mixed", False, 4096),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "tinystories.yaml")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    arch, _ = read_config([args.config])
    config = ModelConfig(**arch)
    print(f"{args.config.name}: {config}, batch {args.batch_size}, {args.steps} steps, 1 thread")
    print(f"{'precision':11} {'checkpointing':13} {'loss chunk':>10} {'measured MB':>11} "
          f"{'predicted MB':>12} {'pred/meas':>9} {'s/step':>7}  losses")  # fmt: skip
    for precision, checkpointing, chunk in ROWS:
        measured = measure_in_subprocess(
            config, args.batch_size, precision, checkpointing, chunk, steps=args.steps
        )
        predicted = training_memory(config, args.batch_size, precision, checkpointing, chunk)["peak"]
        losses = " ".join(f"{loss:.6f}" for loss in measured["losses"])
        print(f"{precision:11} {'on' if checkpointing else 'off':13} {chunk or '-':>10} "
              f"{measured['peak_bytes'] / 1e6:11.0f} {predicted / 1e6:12.0f} "
              f"{predicted / measured['peak_bytes']:9.3f} {measured['seconds_per_step']:7.1f}  {losses}",
              flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
