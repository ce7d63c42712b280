"""`python -m lmproject.tools.demo --out demo`: the whole pipeline, offline, on built-in generated stories.

Each stage runs the same command a user would type, and the demo prints it:

  1. stories    python -m lmproject.tools.stories       train and validation text (a stand-in for TinyStories)
  2. tokenizer  lmproject-bpe train               byte-level BPE on the training text
  3. tokens     lmproject-bpe encode              both texts -> .npy token ids
  4. fit        lmproject fit --config OUT/config.yaml  (configs/demo.yaml with the demo's paths)
  5. validate   lmproject validate ... --ckpt_path last
  6. predict    lmproject predict ... --ckpt_path last --prompt "Once upon a time" --output samples.jsonl
  7. plot       lmproject plot RUN --out learning_curves.png

`--tiny` runs the same stages at toy scale (a smaller corpus, vocab and model, a few dozen steps) for tests.
Everything goes under --out; a rerun replaces a previous demo's folder (marked by .lmproject-demo), and
refuses to touch a folder the demo did not make.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from lmproject.atomic import atomic_write
from lmproject.errors import TIME_LIMIT, ArgumentParser, UserError, run_cli

MARKER = ".lmproject-demo"
CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"
PROMPT = "Once upon a time"
# OpenMP threads that sleep instead of spinning while they wait: on a 2-core machine that is busy with
# anything else, spinning threads make a training step several times slower (bench/RESULTS.md, the demo).
STAGE_ENV = {"OMP_WAIT_POLICY": "PASSIVE", **os.environ}


@dataclass(frozen=True)
class Scale:
    """The sizes that differ between the real demo and `--tiny`."""

    train_mb: float
    valid_mb: float
    vocab_size: int
    max_new_tokens: int
    overrides: dict = field(default_factory=dict)  # merged on top of configs/demo.yaml, key by key


FULL = Scale(train_mb=4.0, valid_mb=0.2, vocab_size=1024, max_new_tokens=200)
TINY = Scale(
    train_mb=0.2,
    valid_mb=0.02,
    vocab_size=300,
    max_new_tokens=30,
    overrides={
        "train_tokens": 20 * 8 * 32,  # 20 steps
        "model": {"arch": {"context_length": 32, "d_model": 32, "num_layers": 1, "num_heads": 2, "d_ff": 96}},
        "data": {"batch_size": 8, "val_windows": 16},
        "trainer": {"val_check_interval": 10},
        "checkpoint": {"every_n_train_steps": 10},
    },
)


def _tool(name: str) -> str:
    """The console script installed next to this Python (the venv's), else the one on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise UserError(f"{name}: command not found (is lmproject installed? run `make install`)")
    return found


class Pipeline:
    """Runs the stages in order, shows each command, times it, and stops at the first failure."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def run(self, stage: str, argv: list[str], accept: tuple[int, ...] = (0,)) -> int:
        """Run one stage; an exit status outside `accept` stops the demo. Returns the status."""
        shown = " ".join(shlex.quote(a if i else Path(a).name) for i, a in enumerate(argv))
        print(f"\n==> [{stage}] {shown}", flush=True)
        start = time.perf_counter()
        result = subprocess.run(argv, env=STAGE_ENV)
        self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start
        if result.returncode not in accept:
            raise UserError(f"stage {stage} failed (exit status {result.returncode}): {shown}")
        return result.returncode


def prepare_out(out: Path) -> None:
    """Make `out` empty: create it, or clear a previous demo's folder; never clear anything else."""
    if out.exists():
        if not out.is_dir():
            raise UserError(f"--out {out}: exists and is not a folder")
        if any(out.iterdir()) and not (out / MARKER).exists():
            raise UserError(f"--out {out}: folder exists and was not made by the demo; choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / MARKER).write_text("made by `python -m lmproject.tools.demo`; a rerun deletes this folder\n")


def write_config(path: Path, scale: Scale, tokens: Path, tokenizer: Path, run_dir: Path) -> Path:
    """configs/demo.yaml with this demo's paths (and the --tiny sizes), so every command stays short."""
    import yaml

    from lmproject.accounting import merge_configs

    paths = {
        "model": {"arch": {"vocab_size": scale.vocab_size}},
        "data": {
            "train_path": str(tokens / "train.npy"),
            "val_path": str(tokens / "valid.npy"),
            "tokenizer_dir": str(tokenizer),
        },
        "trainer": {"default_root_dir": str(run_dir)},
    }
    config = merge_configs(merge_configs(yaml.safe_load(CONFIG.read_text()), paths), scale.overrides)
    header = (
        f"# Written by `python -m lmproject.tools.demo`: {CONFIG.name} with the demo's paths and sizes.\n"
    )
    with atomic_write(path) as file:
        file.write(header + yaml.safe_dump(config, sort_keys=False))
    return path


def run_demo(out: Path, scale: Scale) -> dict[str, float]:
    """Run all seven stages into `out`; returns the seconds each stage took."""
    if not CONFIG.is_file():
        raise UserError(f"{CONFIG}: demo config not found (run the demo from a checkout of lmproject)")
    prepare_out(out)
    texts, tokenizer, tokens, run_dir = out / "stories", out / "tokenizer", out / "tokens", out / "run"
    tokens.mkdir()
    pipe = Pipeline()
    py = [sys.executable, "-m", "lmproject.tools.stories"]
    for split, size, seed in (("train", scale.train_mb, 0), ("valid", scale.valid_mb, 1)):
        pipe.run(
            "stories",
            [*py, "--out", str(texts / f"{split}.txt"), "--size-mb", str(size), "--seed", str(seed)],
        )
    pipe.run(
        "tokenizer",
        [_tool("lmproject-bpe"), "train", str(texts / "train.txt"), "--vocab-size", str(scale.vocab_size),
         "--special-token", "<|endoftext|>", "--out", str(tokenizer)],
    )  # fmt: skip
    for split in ("train", "valid"):
        pipe.run(
            "tokens",
            [_tool("lmproject-bpe"), "encode", "--tokenizer", str(tokenizer), str(texts / f"{split}.txt"),
             str(tokens / f"{split}.npy")],
        )  # fmt: skip
    common = ["--config", str(write_config(out / "config.yaml", scale, tokens, tokenizer, run_dir))]
    lm = _tool("lmproject")
    if pipe.run("fit", [lm, "fit", *common], accept=(0, TIME_LIMIT)) == TIME_LIMIT:
        print("(the demo's time cap stopped training early on this machine: the stages go on with it)")
    pipe.run("validate", [lm, "validate", *common, "--ckpt_path", "last"])
    pipe.run(
        "predict",
        [lm, "predict", *common, "--ckpt_path", "last", "--prompt", PROMPT,
         "--max_new_tokens", str(scale.max_new_tokens), "--output", str(out / "samples.jsonl")],
    )  # fmt: skip
    record = json.loads((out / "samples.jsonl").read_text().splitlines()[0])
    sample = record["prompt"] + record["completion"]
    with atomic_write(out / "sample.txt") as file:
        file.write(sample + "\n")
    pipe.run(
        "plot",
        [lm, "plot", str(run_dir), "--out", str(out / "learning_curves.png"), "--title", "lmproject demo"],
    )
    with atomic_write(out / "timings.json") as file:
        file.write(json.dumps(pipe.seconds, indent=2) + "\n")
    _summary(out, pipe.seconds, sample)
    return pipe.seconds


def _summary(out: Path, seconds: dict[str, float], sample: str) -> None:
    rows = [
        ("stories", out / "stories", "train.txt and valid.txt (generated, a TinyStories stand-in)"),
        ("tokenizer", out / "tokenizer", "vocab.json and merges.txt (GPT-2 format)"),
        ("token ids", out / "tokens", "train.npy and valid.npy (uint16)"),
        ("config", out / "config.yaml", "configs/demo.yaml with these paths"),
        ("run", out / "run", "checkpoints/ (last.ckpt) and logs/version_N/metrics.csv"),
        ("curves", out / "learning_curves.png", "train/val loss by step and wall clock"),
        ("samples", out / "samples.jsonl", "the completion with its sampling settings and seed"),
        ("sample", out / "sample.txt", f"the prompt {PROMPT!r} and the model's continuation"),
        ("timings", out / "timings.json", "seconds per stage"),
    ]
    width = max(len(str(path)) for _, path, _ in rows)
    print("\n==> done. Artifacts:")
    for name, path, what in rows:
        print(f"  {name:<10} {str(path):<{width}}  {what}")
    print("\nSeconds per stage: " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()))
    print(f"total {sum(seconds.values()):.1f} s")
    print(f"\nSample ({out / 'sample.txt'}):\n{sample.strip()}")


def main(argv: list[str] | None = None) -> int:
    """`python -m lmproject.tools.demo [--out DIR] [--tiny]`."""
    p = ArgumentParser(
        prog="python -m lmproject.tools.demo",
        description="Run the whole pipeline offline on generated stories: corpus, BPE, tokens, fit, "
        "validate, predict, plot.",
    )
    p.add_argument("--out", type=Path, default=Path("demo"), help="folder for every artifact (default: demo)")
    p.add_argument("--tiny", action="store_true", help="toy scale: the same stages in well under a minute")
    args = p.parse_args(argv)

    def demo() -> int:
        run_demo(args.out, TINY if args.tiny else FULL)
        return 0

    return run_cli(demo, "lmproject.tools.demo")


if __name__ == "__main__":
    raise SystemExit(main())
