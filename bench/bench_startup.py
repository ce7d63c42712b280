"""Start-up time of each `lmproject` command against `python -c "import torch"`, for one or more checkouts
measured in the same run (so the machine's load is the same for all), interleaved repeat by repeat.

Each command runs in a fresh interpreter (`python -m lmproject.lit.commands ...` with PYTHONPATH set to the
checkout): accounting of GPT-2 XL, plot of a small metrics.csv, export of a tiny run, import of the exported
folder, evaluate of the tiny run on 200 tokens, and the errors of four bad inputs. Prints each one's median
wall time, its ratio to the median `import torch` and its exit statuses. To time a commit against the
working tree (bench/RESULTS.md, "Start-up (issue 20)"):

    mkdir /tmp/base && git archive COMMIT | tar -x -C /tmp/base
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/bench_startup.py --repeats 5 /tmp/base .
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import yaml

from lmproject.interop.hf_llama import export_folder
from lmproject.nn import ModelConfig, TransformerLM
from lmproject.tokenizer import Tokenizer
from lmproject.training.checkpoint import write_checkpoint

ARCH = ModelConfig(vocab_size=256, context_length=32, d_model=32, num_layers=2, num_heads=2, d_ff=64)


def make_run(root: Path) -> None:
    """A tiny run (config, byte-level tokenizer, checkpoint at step 0), its Hugging Face export, a token file
    and a metrics.csv, under root."""
    Tokenizer({i: bytes([i]) for i in range(256)}, []).save(root / "tokenizer")
    config = {
        "trainer": {"default_root_dir": str(root / "run")},
        "model": {"arch": asdict(ARCH)},
        "data": {"train_path": "t.npy", "val_path": "v.npy", "tokenizer_dir": str(root / "tokenizer"),
                 "batch_size": 2},
    }  # fmt: skip
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    model = TransformerLM(ARCH)
    state = {f"model.{name}": tensor for name, tensor in model.state_dict().items()}
    checkpoint = {"state_dict": state, "hyper_parameters": {"arch": asdict(ARCH)}, "global_step": 0}
    write_checkpoint(checkpoint, root / "run/checkpoints/last.ckpt")
    export_folder(ARCH, model.state_dict(), Tokenizer.from_dir(root / "tokenizer"), root / "hf", "float32")
    np.save(root / "tokens.npy", np.arange(200, dtype=np.uint16) % 256)
    lines = ["step,train/loss"] + [f"{step},{3.0 - step / 20}" for step in range(20)]
    (root / "metrics.csv").write_text("\n".join(lines) + "\n")


def commands(root: Path, repeat: int, version: int) -> dict[str, list[str]]:
    """What each timed command runs (the words after `lmproject`); outputs are new folders each time."""
    out = root / f"out{version}_{repeat}"
    return {
        "accounting --preset gpt2-xl": ["accounting", "--preset", "gpt2-xl"],
        "plot metrics.csv": ["plot", str(root / "metrics.csv"), "--out", f"{out}.png"],
        "export (tiny run)": ["export", "--config", str(root / "config.yaml"), "--ckpt_path", "last", "--out",
                              f"{out}_hf"],
        "import (exported folder)": ["import", str(root / "hf"), "--out", f"{out}_run"],
        "evaluate (200 tokens)": ["evaluate", "--config", str(root / "config.yaml"), "--ckpt_path", "last",
                                  "--tokens", str(root / "tokens.npy")],
        "fit --config missing.yaml": ["fit", "--config", "missing.yaml"],
        "validate (no --config)": ["validate"],
        "export --config missing.yaml": ["export", "--config", "missing.yaml", "--ckpt_path", "last", "--out",
                                         "x"],
        "plot missing_dir": ["plot", "missing_dir"],
    }  # fmt: skip


def timed(argv: list[str], checkout: Path, cwd: Path) -> tuple[float, int]:
    """Wall seconds and exit status of `python argv...` with the checkout on PYTHONPATH."""
    env = {"PYTHONPATH": str(checkout), "OMP_WAIT_POLICY": "PASSIVE", "PATH": "/usr/bin:/bin"}
    start = time.perf_counter()
    result = subprocess.run([sys.executable, *argv], env=env, cwd=cwd, capture_output=True, check=False)
    return time.perf_counter() - start, result.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkouts", nargs="+", type=Path, help="repository roots to time, e.g. /tmp/base .")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    times: dict[tuple[int, str], list[float]] = {}
    statuses: dict[tuple[int, str], set[int]] = {}
    torch_times = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_run(root)
        for repeat in range(args.repeats):
            torch_times.append(timed(["-c", "import torch"], args.checkouts[0], root)[0])
            for version, checkout in enumerate(args.checkouts):
                for name, argv in commands(root, repeat, version).items():
                    seconds, status = timed(["-m", "lmproject.lit.commands", *argv], checkout.resolve(), root)
                    times.setdefault((version, name), []).append(seconds)
                    statuses.setdefault((version, name), set()).add(status)
    base = statistics.median(torch_times)
    print(f"torch {torch.__version__}, {args.repeats} repeats, medians")
    print(f"import torch: {base:.2f} s")
    header = "".join(f" | {str(c)[-32:]:>32}" for c in args.checkouts)
    print(f"{'command':<30}{header}")
    for name in commands(Path(), 0, 0):
        cells = []
        for version in range(len(args.checkouts)):
            median = statistics.median(times[(version, name)])
            status = ",".join(map(str, sorted(statuses[(version, name)])))
            cells.append(f" | {median:6.2f} s = {median / base:4.2f}x torch, exit {status}")
        print(f"{name:<30}{''.join(cells)}")


if __name__ == "__main__":
    main()
