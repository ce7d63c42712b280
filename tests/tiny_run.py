"""A tiny trained run for the interop and evaluate tests: a tokenizer trained on generated stories, the
token files it encoded, a config and a checkpoint after a few `lmproject fit` steps."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import torch
import yaml

from lmproject.lit.commands import main
from lmproject.nn import ModelConfig, TransformerLM
from lmproject.tokenizer import Tokenizer, train_bpe
from lmproject.tools.stories import generate_stories

EOT = "<|endoftext|>"
ARCH = {
    "vocab_size": 320, "context_length": 32, "d_model": 32, "num_layers": 2, "num_heads": 2, "d_ff": 64,
    "rope_theta": 500.0,
}  # fmt: skip
MODEL = {"arch": ARCH, "lr_max": 1e-2, "warmup_iters": 1}


def make_run(root: Path, steps: int = 4, **arch) -> Path:
    """Write the run under `root` (MODEL, with `arch`'s changes to the architecture) and train it `steps`
    optimizer steps; returns the config's path."""
    text = f"\n{EOT}\n".join(itertools.islice(generate_stories(seed=0), 60))
    (root / "stories.txt").write_text(text, encoding="utf-8")
    vocab, merges = train_bpe(root / "stories.txt", 300, [EOT], num_workers=1, progress=False)
    tokenizer = Tokenizer(vocab, merges, [EOT])
    tokenizer.save(root / "tokenizer")
    ids = np.array(tokenizer.encode(text), dtype=np.uint16)
    np.save(root / "train.npy", ids)
    np.save(root / "valid.npy", ids[: len(ids) // 5])
    config = {
        "trainer": {"accelerator": "cpu", "precision": "32-true", "default_root_dir": str(root / "run"),
                    "enable_progress_bar": False, "enable_model_summary": False, "max_steps": steps},
        "model": MODEL | {"arch": ARCH | arch},
        "data": {"train_path": str(root / "train.npy"), "val_path": str(root / "valid.npy"), "batch_size": 4,
                 "val_windows": 8, "tokenizer_dir": str(root / "tokenizer")},
    }  # fmt: skip
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    main(["fit", "--config", str(path)])
    return path


def load_ours(checkpoint: Path) -> TransformerLM:
    """The TransformerLM of a Lightning checkpoint, in eval mode."""
    saved = torch.load(checkpoint, weights_only=True)
    model = TransformerLM(ModelConfig(**saved["hyper_parameters"]["arch"]))
    model.load_state_dict({k.removeprefix("model."): v for k, v in saved["state_dict"].items()})
    return model.eval()
