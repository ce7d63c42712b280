"""Run every side-by-side benchmark in bench/ in turn (`make bench`); each prints its own figures.

The tokenizer benchmarks need the benchmark corpus: `bash ../shared/bench/make_corpus.sh` writes it to
/tmp/bench-corpus (override with BENCH_CORPUS_DIR). bench_gpu.py runs only where CUDA is available,
bench_panels.py only where the panel kernels run (AVX-512F).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from lmproject.nn.panel_linear import kernels_available

BENCH_DIR = Path(__file__).resolve().parent
CORPUS_DIR = Path(os.environ.get("BENCH_CORPUS_DIR", "/tmp/bench-corpus"))
# The tokenizer benchmarks take the corpus as an argument.
CORPUS_ARGS = {
    "bench_bpe_train.py": [str(CORPUS_DIR / "corpus.txt")],
    "bench_encode.py": [str(CORPUS_DIR)],
}


def main() -> int:
    failed = []
    for script in sorted(BENCH_DIR.glob("bench_*.py")):
        if script.name in CORPUS_ARGS and not (CORPUS_DIR / "corpus.txt").exists():
            print(f"== {script.name}: skipped, no benchmark corpus in {CORPUS_DIR}", flush=True)
            continue
        if script.name == "bench_gpu.py" and not torch.cuda.is_available():
            print(f"== {script.name}: skipped, no CUDA GPU", flush=True)
            continue
        if script.name == "bench_panels.py" and not kernels_available():
            print(f"== {script.name}: skipped, the panel kernels do not run here", flush=True)
            continue
        print(f"== {script.name}", flush=True)
        command = [sys.executable, str(script), *CORPUS_ARGS.get(script.name, [])]
        if subprocess.run(command, cwd=BENCH_DIR.parent).returncode != 0:
            failed.append(script.name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
