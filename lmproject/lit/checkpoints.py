"""Lightning's checkpoint writer for the project: atomic writes with a digest (the checks on reading:
lmproject.training.checkpoint_files)."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.plugins.io import TorchCheckpointIO

from lmproject.atomic import naming_output
from lmproject.training.checkpoint import write_checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file in the same directory, then renames it into place, so a
    crash or Ctrl-C during a save never leaves a truncated checkpoint under the final name; the file carries
    a digest of its bytes (lmproject.training.digest) so later damage is caught on load. Every Lightning
    checkpoint of the project is written here. A failed write (a full disk) is one line naming the
    checkpoint, and the previous file of that name stays as it was."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        with naming_output(path):
            write_checkpoint(checkpoint, path)
