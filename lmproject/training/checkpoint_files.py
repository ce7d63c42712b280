"""A run's checkpoint files as every command reads them: finding what `--ckpt_path last` means, and refusing
unreadable, damaged, mismatched or non-finite checkpoints early (naming the newest intact one to resume from
instead). No Lightning here, so that commands that train nothing (export) check checkpoints without it."""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from lmproject.errors import UserError
from lmproject.nn import TransformerLM
from lmproject.nn.config import ModelConfig
from lmproject.training.checkpoint import DIGEST_KEY, first_non_finite
from lmproject.training.digest import digest_status

LAST = "last.ckpt"  # what `--ckpt_path last` means


def model_shapes(arch: ModelConfig) -> dict[str, torch.Size]:
    """The names and shapes of TransformerLM's state dict for `arch`, from a model on the meta device (no
    memory, no initialization). RoPE's tables are buffers outside the state dict, so the model is built
    without them: on the meta device their torch.arange alone imports torch._dynamo, about a second."""
    with torch.device("meta"):
        model = TransformerLM(replace(arch, position="none"))
    return {name: tensor.shape for name, tensor in model.state_dict().items()}


def _load(path: Path) -> Any:
    """A checkpoint file, memory-mapped: the tensors stay on disk until read."""
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def checkpoint_step(path: Path) -> int:
    """The global step a Lightning checkpoint was saved at (-1 if it cannot be read); reads only the
    small pickled part."""
    try:
        return int(_load(path)["global_step"])
    except Exception:  # unreadable, damaged or foreign: never the newest
        return -1


def is_damaged(path: Path, checkpoint: Mapping[str, Any]) -> bool:
    """Whether the file's bytes differ from its digest, or it lost the digest that the project wrote into
    it (checkpoint: the file's contents)."""
    status = digest_status(path)
    return status == "damaged" or (status == "no digest" and bool(checkpoint.get(DIGEST_KEY)))


def find_last(directory: Path) -> Path | None:
    """What `--ckpt_path last` resumes: the checkpoint of `directory` at the highest step, last.ckpt on a
    tie. That is last.ckpt, which the project keeps at the newest step, unless a kill interrupted its
    rewrite after the periodic checkpoint of a newer step was written."""
    candidates = list(directory.glob("*.ckpt")) if directory.is_dir() else []
    if not candidates:
        return None
    return max(candidates, key=lambda p: (checkpoint_step(p), p.name == LAST))


def newest_intact(directory: Path, other_than: Path) -> tuple[Path, int] | None:
    """The checkpoint of `directory` at the highest step whose bytes are intact, and that step, leaving
    out `other_than` (the damaged one)."""
    steps = [(checkpoint_step(p), p) for p in directory.glob("*.ckpt") if p.resolve() != other_than.resolve()]
    for step, path in sorted(steps, key=lambda sp: sp[0], reverse=True):
        if step >= 0 and not is_damaged(path, _load(path)):
            return path, step
    return None


def _refuse_damaged(path: Path, problem: str) -> None:
    """Raise a UserError saying what is wrong with `path` and which older checkpoint to use instead."""
    fallback = newest_intact(path.parent, path)
    if fallback is None:
        raise UserError(f"{path}: {problem}")
    good, step = fallback
    raise UserError(f"{path}: {problem}; the newest intact one is {good} (step {step}): --ckpt_path {good}")


def check_checkpoint(path: Path, config: ModelConfig, shapes: Mapping[str, torch.Size]) -> dict[str, Any]:
    """Refuse a checkpoint that cannot be read, or whose architecture differs from the configured model
    (`config`): first by its saved hyperparameters (`arch`), then by its tensors' names and shapes against
    `shapes` (the configured model's state_dict), so a checkpoint without hyperparameters is caught too.
    Returns the checkpoint, memory-mapped."""
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; mmap errors would say nothing useful
        _refuse_damaged(path, "not a readable checkpoint (truncated or not a torch checkpoint)")
    if digest_status(path) == "damaged":
        _refuse_damaged(path, "damaged checkpoint (its bytes differ from the SHA-256 digest saved with it)")
    try:
        checkpoint = _load(path)
    except Exception as err:  # torch raises several types for damaged or foreign files
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        _refuse_damaged(path, f"not a readable checkpoint ({reason})")
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise UserError(f"{path}: not a Lightning checkpoint (no state_dict)")
    if is_damaged(path, checkpoint):
        _refuse_damaged(
            path,
            "damaged checkpoint (the SHA-256 digest saved with it is gone or altered; a file re-saved on "
            f"purpose loads once its {DIGEST_KEY!r} entry is removed)",
        )
    saved, configured = (checkpoint.get("hyper_parameters") or {}).get("arch") or {}, asdict(config)
    differences = [
        f"{key}={value!r} in the checkpoint, {configured[key]!r} in the config"
        for key, value in saved.items()
        if key in configured and value != configured[key]
    ]
    differences += _tensor_differences(checkpoint["state_dict"], shapes)
    if differences:
        shown = "; ".join(differences[:3]) + (
            f" (and {len(differences) - 3} more)" if len(differences) > 3 else ""
        )
        raise UserError(f"{path}: checkpoint of a different architecture: {shown}")
    bad = first_non_finite(checkpoint["state_dict"])
    if bad is not None:
        raise UserError(
            f"{path}: {bad} holds NaN or infinite values (the run diverged): use an earlier checkpoint"
        )
    return checkpoint


def _tensor_differences(state_dict: Mapping[str, Any], shapes: Mapping[str, torch.Size]) -> list[str]:
    """Missing, unexpected and differently shaped tensors, in the model's order, as short phrases."""
    differences = [
        f"{name} {tuple(state_dict[name].shape)} in the checkpoint, {tuple(shape)} in the config"
        if name in state_dict
        else f"{name} missing from the checkpoint"
        for name, shape in shapes.items()
        if name not in state_dict or tuple(state_dict[name].shape) != tuple(shape)
    ]
    return differences + [f"{name} not in the configured model" for name in state_dict if name not in shapes]
