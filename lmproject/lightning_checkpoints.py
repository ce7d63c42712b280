"""Checkpoint files: atomic writes, finding `last`, refusing unreadable or mismatched checkpoints early."""

from __future__ import annotations

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


def check_checkpoint(path: Path, model_config: dict[str, Any], architecture: tuple[str, ...]) -> None:
    """Refuse a checkpoint that cannot be read, or whose architecture differs from the configured model."""
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # torch raises several types for truncated or foreign files
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
    if differences:
        raise UserError(f"{path}: checkpoint of a different architecture: {'; '.join(differences)}")
