"""LightningCLI's `data:` section: the token files of lmproject.training.data as Lightning dataloaders, with
the training stream's position (seed, batches drawn) saved in checkpoints for an exact resume."""

from __future__ import annotations

import signal
from pathlib import Path

import lightning as L
from lightning.pytorch.accelerators import CUDAAccelerator
from torch.utils.data import DataLoader

from lmproject.errors import UserError
from lmproject.settings import check_settings
from lmproject.training.data import FixedWindows, RandomWindows, check_tokens, open_tokens


def ignore_ctrl_c(worker_id: int) -> None:
    """A DataLoader worker ignores SIGINT: a terminal's Ctrl-C reaches the whole process group, and a
    worker killed by it made the run crash ("DataLoader worker exited unexpectedly") instead of stopping
    at the next step with a checkpoint, which the main process does (lmproject.lit.callbacks.RunStop)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class TokenDataModule(L.LightningDataModule):
    """Training and validation token files for LightningCLI's `data:` section.

    vocab_size and context_length are linked from the model section (set once, in `model:`).
    """

    def __init__(
        self,
        train_path: str,
        val_path: str,
        batch_size: int,
        vocab_size: int,
        context_length: int,
        dtype: str | None = None,
        val_windows: int = 512,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        tokenizer_dir: str | None = None,
        test_path: str | None = None,
    ):
        """
        Args:
            train_path: training token file (.npy, or raw .bin with `dtype`).
            val_path: validation token file.
            batch_size: sequences per training step on each device (before gradient accumulation).
            vocab_size: linked from model.arch.vocab_size.
            context_length: linked from model.arch.context_length.
            dtype: uint16 or uint32; required for raw .bin files, checked against .npy files.
            val_windows: how many fixed validation windows to evaluate.
            val_batch_size: validation batch size (default: batch_size).
            num_workers: dataloader worker processes for training batches.
            seed: seed of the training-window stream.
            tokenizer_dir: the tokenizer that encoded the files (default: `tokenizer/` next to train_path);
                used by `lmproject predict`.
            test_path: token file for `lmproject test` (default: val_path).
        """
        super().__init__()
        settings = {"batch_size": batch_size, "val_windows": val_windows, "val_batch_size": val_batch_size}
        check_settings("data", {**settings, "num_workers": num_workers, "seed": seed, "dtype": dtype})
        self.train_path, self.val_path, self.dtype = Path(train_path), Path(val_path), dtype
        self.test_path = Path(test_path) if test_path else self.val_path
        self.batch_size = batch_size
        self.val_batch_size = batch_size if val_batch_size is None else val_batch_size
        self.vocab_size, self.context_length = vocab_size, context_length
        self.val_windows, self.num_workers, self.seed = val_windows, num_workers, seed
        self.tokenizer_dir = Path(tokenizer_dir) if tokenizer_dir else self.train_path.parent / "tokenizer"
        self.batches_drawn = 0
        self._checked: set[Path] = set()

    def check_files(self, stage: str) -> None:
        """Refuse a missing or unusable token file of `stage` (fit, validate, test) with one line naming it;
        the CLI calls this before the trainer writes anything, setup() for other callers. Each file is
        checked once."""
        paths = {
            "fit": [self.train_path, self.val_path],
            "validate": [self.val_path],
            "test": [self.test_path],
        }
        for path in paths.get(stage, []):
            if path not in self._checked:
                check_tokens(open_tokens(path, self.dtype), path, self.context_length, self.vocab_size)
                self._checked.add(path)

    def setup(self, stage: str) -> None:
        self.check_files(stage)

    def _loader_args(self) -> dict:
        on_gpu = self.trainer is not None and isinstance(self.trainer.accelerator, CUDAAccelerator)
        return {
            "num_workers": self.num_workers,
            "pin_memory": on_gpu,
            "persistent_workers": self.num_workers > 0,
            "worker_init_fn": ignore_ctrl_c if self.num_workers > 0 else None,
        }

    def train_dataloader(self) -> DataLoader:
        rank = self.trainer.global_rank if self.trainer is not None else 0
        stream = RandomWindows(
            self.train_path,
            self.dtype,
            self.batch_size,
            self.context_length,
            self.seed,
            rank,
            self.batches_drawn,
        )
        return DataLoader(stream, batch_size=None, **self._loader_args())

    def _fixed_loader(self, path: Path) -> DataLoader:
        ranks = self.trainer.world_size if self.trainer is not None else 1
        fixed = FixedWindows(path, self.dtype, self.context_length, self.val_windows, ranks)
        return DataLoader(fixed, batch_size=self.val_batch_size, shuffle=False, **self._loader_args())

    def val_dataloader(self) -> DataLoader:
        return self._fixed_loader(self.val_path)

    def test_dataloader(self) -> DataLoader:
        return self._fixed_loader(self.test_path)

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        """Count training batches as the loop consumes them (prefetched ones are not yet consumed)."""
        if self.trainer is not None and self.trainer.training:
            self.batches_drawn += 1
        return batch

    def state_dict(self) -> dict:
        return {"seed": self.seed, "batches_drawn": self.batches_drawn}

    def load_state_dict(self, state_dict: dict) -> None:
        if state_dict["seed"] != self.seed:
            raise UserError(
                f"data.seed={self.seed} differs from the checkpoint's {state_dict['seed']}: "
                "resuming would not continue the same run"
            )
        self.batches_drawn = state_dict["batches_drawn"]
