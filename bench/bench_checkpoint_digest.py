"""Cost of the checkpoint digest: torch.save against save_with_digest (hashing while writing), and the check
on load (digest_status reads the file once) against torch.load of the same file, in one process.

The state is the size of a TinyStories run's checkpoint (about 23M float32 parameters plus AdamW's two
moments: ~275 MB). Written to a temporary folder (default: the system's; `--dir` to pick the disk).

    .venv/bin/python bench/bench_checkpoint_digest.py [--dir /path] [--repeats 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from lmproject.training.digest import digest_status, save_with_digest

PARAMETERS = 22_696_448  # the TinyStories model (configs/tinystories.yaml)


def best_seconds(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=None, help="folder for the checkpoint files")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    state = {name: torch.randn(PARAMETERS) for name in ("weights", "exp_avg", "exp_avg_sq")}
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        plain, digested = Path(folder) / "plain.ckpt", Path(folder) / "digest.ckpt"

        def save_plain():
            with open(plain, "wb") as file:
                torch.save(state, file)

        def save_digested():
            with open(digested, "wb") as file:
                save_with_digest(state, file)

        rows = [
            ("torch.save", best_seconds(save_plain, args.repeats)),
            ("save_with_digest", best_seconds(save_digested, args.repeats)),
            ("torch.load", best_seconds(lambda: torch.load(plain, weights_only=True), args.repeats)),
            ("digest_status", best_seconds(lambda: digest_status(digested), args.repeats)),
        ]
        size = digested.stat().st_size / 1e6
        assert digest_status(digested) == "intact"
    for name, seconds in rows:
        print(f"{name:17} {seconds:6.3f} s  ({size / seconds:,.0f} MB/s on {size:,.0f} MB)")


if __name__ == "__main__":
    main()
