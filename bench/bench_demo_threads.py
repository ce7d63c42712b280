"""One training step of the demo model (configs/demo.yaml shape) under three CPU threading settings.

Default OpenMP threads spin while they wait for each other; on a 2-core machine that is busy with anything
else a spinning thread holds a core the other needs, and steps slow down several times. The demo's stages
run with OMP_WAIT_POLICY=PASSIVE for that reason; this script measures the three settings side by side:

    python bench/bench_demo_threads.py [--steps 4] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

STEP = """
import time, torch
from lmproject.nn import TransformerLM, cross_entropy
from lmproject.training.optim import AdamW
torch.manual_seed(0)
model = TransformerLM(vocab_size=1024, context_length=128, d_model=128, num_layers=4, num_heads=4, d_ff=352)
opt = AdamW(model.parameters(), lr=1e-3)
x, y = torch.randint(0, 1024, (2, 32, 128))
def step():
    cross_entropy(model(x), y).backward(); opt.step(); opt.zero_grad()
step()
start = time.perf_counter()
for _ in range({steps}): step()
print((time.perf_counter() - start) / {steps})
"""
SETTINGS = {
    "2 threads, default (spinning) wait": {},
    "2 threads, OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
    "1 thread": {"OMP_NUM_THREADS": "1"},
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    best = {name: float("inf") for name in SETTINGS}
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start", flush=True)
    for _ in range(args.repeats):  # interleaved, so every setting sees the same background load
        for name, env in SETTINGS.items():
            clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
            out = subprocess.run(
                [sys.executable, "-c", STEP.format(steps=args.steps)],
                env={**clean, **env}, capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
            best[name] = min(best[name], float(out))
    base = best["2 threads, default (spinning) wait"]
    for name, seconds in best.items():
        print(f"{name:<38} {seconds:6.2f} s/step  ({base / seconds:.1f}x the default)")
    print(f"load average {os.getloadavg()[0]:.1f} at end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
