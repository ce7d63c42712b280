"""Checkpoint files: atomic writes, finding `last`, refusing unreadable or mismatched checkpoints early."""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lmproject.atomic import atomic_write
from lmproject.errors import UserError


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file in the same directory, then renames it into place, so a
    crash or Ctrl-C during a save never leaves a truncated checkpoint under the final name."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, "wb") as file:
            torch.save(checkpoint, file)


def find_last(directory: Path) -> Path | None:
    """The newest `last*.ckpt` in a checkpoint directory (what `--ckpt_path last` resumes from)."""
    candidates = (
        sorted(directory.glob("last*.ckpt"), key=lambda p: p.stat().st_mtime) if directory.is_dir() else []
    )
    return candidates[-1] if candidates else None


def check_checkpoint(
    path: Path, model_config: dict[str, Any], architecture: tuple[str, ...], shapes: Mapping[str, torch.Size]
) -> dict[str, Any]:
    """Refuse a checkpoint that cannot be read, or whose architecture differs from the configured model:
    first by its saved hyperparameters, then by its tensors' names and shapes against `shapes` (the
    configured model's state_dict), so a checkpoint without hyperparameters is caught too. Returns the
    checkpoint, memory-mapped."""
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; mmap errors would say nothing useful
        raise UserError(f"{path}: not a readable checkpoint (truncated or not a torch checkpoint)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # torch raises several types for damaged or foreign files
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"{path}: not a readable checkpoint ({reason})") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise UserError(f"{path}: not a Lightning checkpoint (no state_dict)")
    saved = checkpoint.get("hyper_parameters", {})
    differences = [
        f"{key}={saved[key]!r} in the checkpoint, {model_config[key]!r} in the config"
        for key in architecture
        if key in saved and key in model_config and saved[key] != model_config[key]
    ]
    differences += _tensor_differences(checkpoint["state_dict"], shapes)
    if differences:
        shown = "; ".join(differences[:3]) + (
            f" (and {len(differences) - 3} more)" if len(differences) > 3 else ""
        )
        raise UserError(f"{path}: checkpoint of a different architecture: {shown}")
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
