"""The progress bar of every command: Lightning's tqdm bars, on stderr (stdout holds only results), with the
training bar counting the run's optimizer steps."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm


class StepProgressBar(TQDMProgressBar):
    """TQDMProgressBar that writes to stderr and counts training in optimizer steps out of max_steps.

    Lightning's bar counts batches of the epoch, which an endless token stream never ends: a resumed run
    showed `50/?` with no total, no ETA, and a rate that counted the restored steps as if run just now.
    This one starts a resumed run at its restored step, so the total, the ETA and the rate (steps of this
    process only) stay right; the `v_num` field is left out of the bar."""

    def _on_stderr(self, make: Callable[[], Tqdm]) -> Tqdm:
        with contextlib.redirect_stdout(sys.stderr):  # Lightning's bars are made with file=sys.stdout
            return make()

    def init_sanity_tqdm(self) -> Tqdm:
        return self._on_stderr(super().init_sanity_tqdm)

    def init_train_tqdm(self) -> Tqdm:
        return self._on_stderr(super().init_train_tqdm)

    def init_validation_tqdm(self) -> Tqdm:
        return self._on_stderr(super().init_validation_tqdm)

    def init_test_tqdm(self) -> Tqdm:
        return self._on_stderr(super().init_test_tqdm)

    def init_predict_tqdm(self) -> Tqdm:
        return self._on_stderr(super().init_predict_tqdm)

    def on_train_epoch_start(self, trainer: L.Trainer, *_: Any) -> None:
        super().on_train_epoch_start(trainer)
        bar = self.train_progress_bar
        bar.total = trainer.max_steps if trainer.max_steps > 0 else None
        bar.initial = bar.n = trainer.global_step
        bar.set_description("Training")
        bar.refresh()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx):
        step = trainer.global_step
        bar = self.train_progress_bar
        if bar is None or step == bar.n or not self._should_update(step, bar.total):
            return
        bar.n = step
        bar.set_postfix(self.get_metrics(trainer, pl_module))  # also redraws

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics
