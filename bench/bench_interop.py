"""`lmproject export` wall time and `lmproject evaluate`'s scoring speed against a bare forward.

    .venv/bin/python bench/bench_interop.py [--repeats 3] [--tokens 4097] [--threads 0]

The model has the TinyStories config's shapes (configs/tinystories.yaml: vocab 10,000, context 256,
d_model 512, 4 layers, 16 heads, d_ff 1344) with random weights, saved as a Lightning checkpoint.
1. Export: the whole `lmproject export` command in a fresh process (Python start-up and imports included;
   wall and CPU time, the latter steadier on a shared machine), then its export step alone in-process
   (target: the command under 5 s).
2. Evaluate: `lmproject.evaluate.score` over a file of random tokens at the default stride (half the
   context) against a bare `model(x)` forward over the same windows in the same batches, alternating, best
   of the repeats each; the figure is the ratio of tokens/s (target: >= 0.9x).
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from lmproject.evaluate import score, window_plan
from lmproject.interop.hf_llama import export_folder, save_weights_checkpoint
from lmproject.lit.module import LanguageModel
from lmproject.tokenizer import Tokenizer
from lmproject.training.data import windows

ROOT = Path(__file__).resolve().parents[1]
LMPROJECT = Path(sys.executable).parent / "lmproject"


def write_run(folder: Path) -> tuple[Path, LanguageModel]:
    """A config (configs/tinystories.yaml, paths redirected), a byte-level tokenizer and a random-weight
    checkpoint of that model; returns the config's path and the model."""
    config = yaml.safe_load((ROOT / "configs/tinystories.yaml").read_text())
    config["trainer"]["default_root_dir"] = str(folder / "run")
    config["data"].update(train_path=str(folder / "train.npy"), val_path=str(folder / "valid.npy"),
                          tokenizer_dir=str(folder / "tokenizer"))  # fmt: skip
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    Tokenizer({i: bytes([i]) for i in range(256)}, [], ["<|endoftext|>"]).save(folder / "tokenizer")
    torch.manual_seed(0)
    module = LanguageModel(**config["model"])
    weights = {name: tensor for name, tensor in module.model.state_dict().items()}
    (folder / "run/checkpoints").mkdir(parents=True)
    save_weights_checkpoint(weights, dict(module.hparams), folder / "run/checkpoints/last.ckpt")
    return folder / "config.yaml", module


def bench_export(folder: Path, config: Path, module: LanguageModel, repeats: int) -> None:
    command_times, command_cpu, step_times = [], [], []
    for repeat in range(repeats):
        out = folder / f"hf{repeat}"
        start, cpu_before = time.perf_counter(), _children_cpu()
        subprocess.run(
            [str(LMPROJECT), "export", "--config", str(config), "--ckpt_path", "last", "--out", str(out)],
            check=True,
            capture_output=True,
        )
        command_times.append(time.perf_counter() - start)
        command_cpu.append(_children_cpu() - cpu_before)
        start = time.perf_counter()
        tokenizer = Tokenizer.from_dir(folder / "tokenizer")
        export_folder(
            module.model.config, module.model.state_dict(), tokenizer, folder / f"step{repeat}", "float32"
        )
        step_times.append(time.perf_counter() - start)
    size = (folder / "hf0/model.safetensors").stat().st_size / 1e6
    print(f"export ({size:.0f} MB of float32 weights): `lmproject export` command best "
          f"{min(command_times):.2f} s wall (all: {', '.join(f'{t:.2f}' for t in command_times)}), "
          f"best {min(command_cpu):.2f} CPU-s; export step alone best {min(step_times):.2f} s")  # fmt: skip
    start = _children_cpu()
    subprocess.run([sys.executable, "-c", "import lightning"], check=True)
    print(f"for comparison, `import lightning` alone: {_children_cpu() - start:.2f} CPU-s")


def _children_cpu() -> float:
    """User + system CPU seconds of the finished child processes so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def bare_forward(model, tokens: np.ndarray, stride: int, batch_size: int) -> None:
    """model(x) over the windows score() uses, nothing else."""
    starts, _, length = window_plan(len(tokens), model.config.context_length, stride)
    with torch.inference_mode():
        for at in range(0, len(starts), batch_size):
            model(windows(tokens, starts[at : at + batch_size], length)[0])


def bench_evaluate(model, num_tokens: int, batch_size: int, repeats: int) -> None:
    config = model.config
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, num_tokens).astype(np.uint16)
    stride = config.context_length // 2
    scored = num_tokens - 1
    ours, bare = [], []
    bare_forward(model, tokens[: config.context_length * 2], stride, batch_size)  # warm-up
    for _ in range(repeats):
        start = time.perf_counter()
        score(model, tokens, stride, batch_size, progress=False)
        ours.append(scored / (time.perf_counter() - start))
        start = time.perf_counter()
        bare_forward(model, tokens, stride, batch_size)
        bare.append(scored / (time.perf_counter() - start))
    print(f"evaluate, {scored:,} tokens, stride {stride}, batch {batch_size}: score {max(ours):,.0f} tok/s, "
          f"bare forward {max(bare):,.0f} tok/s: {max(ours) / max(bare):.2f}x (best of {repeats}; "
          f"per repeat {', '.join(f'{o / b:.2f}' for o, b in zip(ours, bare, strict=True))})")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=4097, help="tokens in the evaluated file")
    parser.add_argument("--batch", type=int, default=8, help="windows per forward")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch threads {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as tmp:
        config, module = write_run(Path(tmp))
        bench_export(Path(tmp), config, module, args.repeats)
        bench_evaluate(module.model.eval(), args.tokens, args.batch, args.repeats)


if __name__ == "__main__":
    main()
